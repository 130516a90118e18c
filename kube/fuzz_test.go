package kube

import (
	"strings"
	"testing"
)

// FuzzPublishedKeys: what replicas read of the keys vakt published (an
// Application's status can be written by whoever has its status RBAC)
// never panics, and what is accepted is a key set of public keys within
// the count vakt publishes, its kids in order.
func FuzzPublishedKeys(f *testing.F) {
	rsa := `{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","e":"AQAB","n":"` + strings.Repeat("x", 342) + `"}`
	for _, s := range []string{
		`{"keys":{"keys":[]}}`, `{"keys":{"keys":[` + rsa + `]},"retiredKeys":[{"kid":"k1","until":"2026-01-01T00:00:00Z"}]}`,
		`{"keys":null}`, `{}`, `[]`, `{"keys":{"keys":[{"kty":"oct","k":"AAAA"}]}}`, `{"keys":{"keys":[{"kty":"EC","d":"x"}]}}`,
		`{"keys":{"keys":[1,2,3,4,5,6,7,8]}}`, `{"keys":"x","rotation":5}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		set, kids, until, err := parsePublishedKeys(b)
		if err != nil {
			return
		}
		if set == nil || len(kids) > 2+maxRetiredKeys || set.Len() > len(kids) || len(until) > len(b) {
			t.Fatalf("accepted %q: %d keys, kids %q", b, set.Len(), kids)
		}
	})
}
