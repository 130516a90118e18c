// Package kube is vakt's Kubernetes-native mode: the control plane that
// turns the teams' Application resources (vakt.dev/v1alpha1), and NAIS's
// Jwkers, into applications of the policy every replica serves, writes
// their status, and makes, publishes and rotates their client keys.
//
// Every replica runs a Source: informers over the resources, whose caches
// the reload path merges into each configuration it builds (Source.Merge,
// called by server.Loader through server.ResourceSource). One replica,
// elected with a Lease, writes the resources' status (RunStatusWriter) and
// makes their client keys into Secrets, publishing the public halves where
// every replica reads them back.
//
// server knows this package only through server.ResourceSource; cmd/vakt
// wires the two.
package kube

// truncate shortens s to n bytes, marking the cut: what a team wrote may
// be quoted in a log line or a status, never at any length.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
