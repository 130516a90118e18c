package authz

import (
	"net/url"
	"testing"
)

// Hosts compare in ASCII case only: a Kelvin sign (U+212A), which
// strings.ToLower makes a k, names no application.
func TestApplicationByHostASCIIOnly(t *testing.T) {
	p, err := NewPolicy([]ApplicationPolicy{{ID: "c:ns:kube", Hosts: []string{"kube.internal"}}})
	if err != nil {
		t.Fatal(err)
	}
	for h, want := range map[string]bool{"kube.internal": true, "KUBE.Internal": true, "\u212Aube.Internal": false, "\u212Aube.internal": false} {
		if _, ok := p.ApplicationByHost(h); ok != want {
			t.Errorf("%q: found %v, want %v", h, ok, want)
		}
		u := &url.URL{Scheme: "https", Host: h, Path: "/"}
		if _, ok := p.ApplicationByResource(u); ok != want {
			t.Errorf("resource %q: found %v, want %v", u, ok, want)
		}
	}
}
