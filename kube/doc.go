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
// The elected replica's two controllers, the status writer and the key
// provisioner, are client-go's machinery over the Source's informers: each
// a rate-limited work queue (k8s.io/client-go/util/workqueue) of resource
// keys, fed by each Served committed, informer events and key problems,
// drained by its own workers, retried with the queue's exponential
// backoff and requeued for when a key is due; nothing polls. The election
// is client-go's leaderelection. Not controller-runtime: every replica
// runs the informers to serve the policy and only status writes and keys
// are the leader's, where controller-runtime's manager would add a cache
// of its own beside the informers and gate all it runs on its election.
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
