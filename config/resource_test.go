package config_test

import (
	"strings"
	"testing"

	"github.com/vakt-dev/vakt/config"
)

// An Application resource's spec is read by the same code as a file's
// entry: the same checks, the same words, its own paths and lines.
func TestResourceApplication(t *testing.T) {
	c, err := config.Load([]byte(base+`identityProviders:
  - name: auth0
    issuer: https://auth0.example/
    jwksUri: https://auth0.example/jwks
applications:
  - name: app-1
    namespace: team-a
    hosts: [app-1.example.com]
kubernetes:
  enabled: true
  grants:
    - namespaces: [team-b]
      hosts: [app-1.example.com]
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, rs, err := c.ResourceApplication("app-b", "team-b", []byte(`accessPolicy:
  inbound:
    rules:
      - application: app-1
        namespace: team-a
routes:
  - {methods: [GET], path: /read, scopes: [read]}
authentication:
  - {identityProvider: auth0, audience: https://api.example.com}
secretName: app-b-tokenx
`))
	if err != nil {
		t.Fatal(err)
	}
	if a.ID() != "dev-gcp:team-b:app-b" || rs.SecretName != "app-b-tokenx" || len(a.Routes) != 1 ||
		a.AccessPolicy.Inbound.Rules[0].Cluster != "dev-gcp" || a.AccessPolicy.Inbound.Rules[0].Namespace != "team-a" {
		t.Fatalf("%+v %+v", a, rs)
	}
	// JSON, as the API server serves it.
	if _, _, err := c.ResourceApplication("app-c", "team-c", []byte(`{"routes":[{"pathPrefix":"/","public":true}]}`)); err != nil {
		t.Fatalf("JSON: %v", err)
	}
	for _, tc := range []struct {
		name, ns, spec string
		want           []string
	}{
		{"Bad_Name", "team-b", "{}", []string{`metadata.name: "Bad_Name" is not a valid name`}},
		{"app-1", "team-a", "{}", []string{"spec: application id dev-gcp:team-a:app-1 is already used by dev-gcp:team-a:app-1"}},
		{"app-b", "team-b", "hosts: [app-1.example.com]\n", []string{`line 1: spec.hosts[0]: "app-1.example.com" already belongs to dev-gcp:team-a:app-1 (in vakt's configuration file)`}},
		{"app-c", "team-c", "hosts: [app-1.example.com]\n", []string{`line 1: spec.hosts[0]: "app-1.example.com" is not granted to namespace team-c: ask the cluster administrator for a kubernetes.grants entry`}},
		{"app-b", "team-b", "hosts:\n  - app-1.example.com\n  - app-1.example.com\n", []string{`line 3: spec.hosts[1]: "app-1.example.com" is also spec.hosts[0]: list a host once`}},
		{"app-b", "team-b", "routes:\n  - {path: /a, public: true, scopes: [x]}\n", []string{"line 2: spec.routes[0]: a public route needs no token"}},
		{"app-b", "team-b", "authentication:\n  - {identityProvider: nope}\n", []string{`line 2: spec.authentication[0].identityProvider: "nope" is not a configured identity provider`}},
		{"app-b", "team-b", "cluster: prod-gcp\n", []string{`line 1: spec.cluster: "prod-gcp" is not this cluster (dev-gcp)`}},
		{"app-b", "team-b", "jwksFile: keys.json\n", []string{"line 1: spec.jwksFile: a resource has no file beside it"}},
		{"app-b", "team-b", "jwksUri: https://k.example/jwks\nsecretName: s\n", []string{"spec.secretName: vakt makes the key"}},
		{"app-b", "team-b", "secretName: Not_A_Name\n", []string{"line 1: spec.secretName:"}},
		{"app-b", "team-b", "routez: []\n", []string{"spec: line 1: unknown field \"routez\""}},
		{"app-b", "team-b", "accessPolicy: {}\nroutez: []\n", []string{"spec: line 2: unknown field \"routez\""}},
		{"app-b", "team-b", "routes:\n  - {path: /a, scope: [x]}\n", []string{"spec: line 2: unknown field \"scope\""}},
		{"app-b", "team-b", "name: app-x\n", []string{"unknown field \"name\""}},
	} {
		_, _, err := c.ResourceApplication(tc.name, tc.ns, []byte(tc.spec))
		if err == nil {
			t.Errorf("%s/%s %q: accepted", tc.ns, tc.name, tc.spec)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s/%s %q: %v, want %q", tc.ns, tc.name, tc.spec, err, w)
			}
		}
	}
}
