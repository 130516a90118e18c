package config

import (
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/vakt-dev/vakt/authz"
)

// refHostMatch is a granted host matching a host, label by label.
func refHostMatch(pattern, host string) bool {
	pl, hl := strings.Split(pattern, "."), strings.Split(host, ".")
	if pl[0] != "*" {
		return pattern == host
	}
	suffix := pl[1:]
	return len(hl) > len(suffix) && slices.Equal(hl[len(hl)-len(suffix):], suffix)
}

// refPrefixMatch is a granted prefix matching a URI, said another way: the
// prefix is one of the URI's cuts at a boundary (the URI whole, up to a
// separator or with it, up to a query).
func refPrefixMatch(canon string, u *url.URL) bool {
	p := strings.ReplaceAll(u.Path, `\`, "/")
	if u.Opaque != "" {
		p = strings.ReplaceAll(u.Opaque, `\`, "/")
	}
	if p = "/" + p + "/"; strings.Contains(p, "/./") || strings.Contains(p, "/../") {
		return false
	}
	_, rest, _ := strings.Cut(canon, ":")
	opaque := !strings.HasPrefix(rest, "/")
	r := authz.CanonicalResource(u)
	if r == canon {
		return true
	}
	for i := 1; i < len(r); i++ {
		switch c := r[i]; {
		case c == '/' || (opaque && c == ':'):
			if r[:i] == canon || r[:i+1] == canon {
				return true
			}
		case c == '?':
			if r[:i] == canon {
				return true
			}
		}
	}
	return false
}

// The grant matching a tenant's host or URI is fed by tenants: it never
// panics, and agrees with the reference forms above.
func FuzzGrantMatch(f *testing.F) {
	for _, s := range [][4]string{
		{"*.team-b.example.com", "a.team-b.example.com", "https://api.example.com/team-b/", "https://API.example.com:443/team-b/x"},
		{"*.example.com", "example.com", "https://api.example.com/b", "https://api.example.com/bee"},
		{"app.example.com", "app.example.com", "https://api.example.com/b", "https://api.example.com/b?x=1"},
		{"*.b.c", "a..b.c", "urn:team-b:", "urn:team-b:api"},
		{"*.b.c", ".b.c", "urn:b", "urn:b:c"},
		{"a.b", "A.b", "https://k.example/jwks", "https://k.example/jwks/../x"},
		{"x", "x", "https://a.example/p", `https://a.example/p/..\q`},
		{"x", "x", "https://a.example/p", "https://a.example/p/%2e%2e/q"},
		{"x", "x", "https://a.example", "https://u@a.example/"},
		{"x", "x", "urn:", "URN:x"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, pattern, host, prefixText, uri string) {
		g := compileGrants([]Grant{{Namespaces: []string{"ns"}, Hosts: []string{pattern}, Resources: []string{prefixText}, JWKSURIs: []string{prefixText}}})[0]
		validPattern := checkHostPattern(pattern) == nil
		got := g.grantsHost(host)
		if want := validPattern && hostname.MatchString(host) && refHostMatch(pattern, host); got != want {
			t.Fatalf("host %q, pattern %q: %v, want %v", host, pattern, got, want)
		}
		if got && !strings.HasSuffix(host, strings.TrimPrefix(pattern, "*")) {
			t.Fatalf("host %q matched %q", host, pattern)
		}

		u, err := url.Parse(uri)
		if err != nil || !u.IsAbs() || u.Fragment != "" {
			return
		}
		p, perr := parsePrefix(prefixText, false)
		got = matchesAny(g.resources, u)
		want := perr == nil && refPrefixMatch(p.canon, u)
		if got != want {
			t.Fatalf("URI %q, prefix %q (%q): %v, want %v", uri, prefixText, p.canon, got, want)
		}
		if got && (!strings.HasPrefix(authz.CanonicalResource(u), p.canon) || dotSegments(u)) {
			t.Fatalf("URI %q matched %q", uri, p.canon)
		}
		if g.grantsJWKSURI(u) && (u.Scheme != "https" || u.User != nil || !got) {
			t.Fatalf("jwksUri %q allowed by %q", uri, prefixText)
		}
		if g.grantsResource(u) && !got && !(validPattern && g.grantsHost(asciiLower(u.Hostname()))) {
			t.Fatalf("resource %q granted by neither %q nor %q", uri, prefixText, pattern)
		}
	})
}
