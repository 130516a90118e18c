package exchange

import (
	"testing"
)

// A resource beside an audience tells a client nothing of which resource
// URIs exist: one naming an application other than the audience's gets
// the answer one naming none gets (both are targets it may not call).
func TestResourceExistenceNoOracle(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	answer := func(resource string) string {
		req := f.request(t, func(t *testing.T, r *Request) {
			r.Audience, r.Resource = []string{"dev-gcp:nobody:nothing"}, []string{resource}
		})
		e := refused(t, f, req)
		return e.Reason().String() + ": " + e.Description()
	}
	exists, none := answer("https://app-1.example.com/"), answer("https://nowhere.example/")
	t.Logf("registered host: %s; unregistered: %s", exists, none)
	if exists != none {
		t.Errorf("a client tells a registered resource from none: %q vs %q", exists, none)
	}
}
