package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/deploy/examples"
	"github.com/vakt-dev/vakt/internal/tlstest"
)

func TestExamplesLoad(t *testing.T) {
	c, err := config.LoadFile("../deploy/examples/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.IdentityProviders[0].Leeway.Std(); got != 30*time.Second {
		t.Fatalf("leeway %v", got)
	}
	b := c.Applications[0]
	if b.ID() != "prod-gcp:team-b:app-b" || b.Keys == nil || b.Keys.Len() != 0 {
		t.Fatalf("app-b: %s, keys %v", b.ID(), b.Keys)
	}
	var ids []string
	for _, r := range b.AccessPolicy.Inbound.Rules {
		ids = append(ids, r.ID())
	}
	want := "prod-gcp:team-b:app-1 prod-gcp:team-a:app-2 dev-gcp:team-b:app-3"
	if strings.Join(ids, " ") != want {
		t.Fatalf("rules resolve to %v, want %s", ids, want)
	}

	d, err := config.Load(examples.Development, ".")
	if err != nil {
		t.Fatal(err)
	}
	if d.Listen.GRPC != "127.0.0.1:9000" || d.Listen.Admin != config.DefaultAdminAddress || len(d.Applications) != 4 {
		t.Fatalf("development default: %+v", d)
	}
}

const base = `issuer: http://127.0.0.1:8080
cluster: dev-gcp
`

func TestLoadRejects(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // each must appear in the error
	}{
		{"unknown top-level field", base + "issuers: []\n", []string{"line 3", "issuers"}},
		{"unknown nested field", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n    audiences: [x]\n", []string{"line 7", "audiences"}},
		{"duplicate key", base + "cluster: prod\n", []string{"line 3", "cluster"}},
		{"bad duration", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n    leeway: 30\n", []string{"line 7", "duration"}},
		{"bad token lifetime", base + "signing:\n  tokenLifetime: 15\n", []string{"line 4", `signing.tokenLifetime: "15" is not a duration`}},
		{"leeway out of range", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n    leeway: 11m\n", []string{"line 7", "identityProviders[0].leeway: must be between 0s and 10m"}},
		{"zero token lifetime", base + "signing:\n  tokenLifetime: 0s\n", []string{"line 4", "signing.tokenLifetime: must be between 1m and 24h"}},
		{"key overlap too short", base + "kubernetes:\n  enabled: true\n  keyOverlap: 30s\n", []string{"kubernetes.keyOverlap: must be between 1m and 2160h (90 days)"}},
		{"lease namespace not a name", base + "kubernetes:\n  enabled: true\n  leaseNamespace: Vakt_NS\n", []string{"kubernetes.leaseNamespace", "is not a namespace name"}},
		{"client endpoint with a path", base + "kubernetes:\n  enabled: true\n  clientEndpoint: http://vakt.vakt.svc:8080/token\n", []string{"line 5", "kubernetes.clientEndpoint", "has a path or a query"}},
		{"client endpoint not a URL", base + "kubernetes:\n  enabled: true\n  clientEndpoint: vakt.vakt.svc:8080\n", []string{"line 5", "kubernetes.clientEndpoint", "is not an absolute http(s) URL"}},
		{"bad issuer", "issuer: 127.0.0.1:8080\ncluster: dev-gcp\n", []string{"line 1", "issuer", "not an absolute http(s) URL"}},
		{"missing cluster", "issuer: http://127.0.0.1:8080\n", []string{"cluster: is required"}},
		{"bad listen", base + "listen:\n  grpc: 9000\n", []string{"line 4", "listen.grpc"}},
		{"sample of allows out of range", base + "log:\n  decisions: all\n  sampleAllows: 0\n", []string{"line 5", "log.sampleAllows: must be above 0"}},
		{"sample of allows over 1", base + "log:\n  decisions: all\n  sampleAllows: 1.5\n", []string{"line 5", "log.sampleAllows"}},
		{"bad token endpoint alias", base + "tokenEndpointAliases: [vakt:8080/token]\n", []string{"line 3", "tokenEndpointAliases[0]"}},
		{"bad admin listen", base + "listen:\n  admin: localhost\n", []string{"line 4", `listen.admin: "localhost" is not host:port`}},
		{"admin on the http listener", base + "listen:\n  http: 0.0.0.0:8080\n  admin: 0.0.0.0:8080\n", []string{"line 5", `listen.admin: "0.0.0.0:8080" is also listen.http`}},
		{"admin on every host, http on one", base + "listen:\n  http: 127.0.0.1:8080\n  admin: :8080\n", []string{"line 5", `listen.admin: ":8080" is also listen.http ("127.0.0.1:8080")`}},
		{"provider without keys", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n", []string{"line 4", "identityProviders[0]: needs wellKnownUrl or jwksUri"}},
		{"issuer not https", "issuer: http://vakt.example.com\ncluster: dev-gcp\n", []string{"line 1", "issuer", "not https"}},
		{"issuer with a query", "issuer: https://vakt.example.com/?tenant=a\ncluster: dev-gcp\n", []string{"line 1", "issuer", "has a query"}},
		{"issuer with a fragment", "issuer: https://vakt.example.com/#a\ncluster: dev-gcp\n", []string{"line 1", "issuer"}},
		{"resource not absolute", base + "applications:\n  - name: b\n    namespace: t\n    resources: [/api]\n", []string{"line 6", "applications[0].resources[0]", "not an absolute URI"}},
		{"resource twice", base + "applications:\n  - name: b\n    namespace: t\n    resources: [urn:x]\n  - name: c\n    namespace: t\n    resources: [urn:x]\n", []string{"applications[1].resources[0]", "already belongs to dev-gcp:t:b"}},
		{"bad trust domain", base + "trustDomain: Evil/Domain\n", []string{"line 3", "trustDomain", "not a SPIFFE trust domain"}},
		{"bad typ", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n    typ: \"at jwt\"\n", []string{"line 7", "identityProviders[0].typ"}},
		{"bad log.decisions", base + "log:\n  decisions: allow\n", []string{"line 4", "log.decisions", `"allow" is not deny, all or none`}},
		{"bad pathParameters", base + "applications:\n  - name: b\n    namespace: t\n    pathParameters: keep\n", []string{"line 6", "applications[0].pathParameters", `"keep" is not reject or strip`}},
		// Neither the entry nor the provider names an audience: a token the
		// provider issued for any API would be accepted.
		{"authentication without any audience", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\napplications:\n  - name: b\n    namespace: t\n    authentication:\n      - {identityProvider: a}\n",
			[]string{"line 11", "applications[0].authentication[0].audience: is required", "audience: any"}},
		{"provider with both", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n    wellKnownUrl: https://a.example/.well-known/openid-configuration\n", []string{"has both"}},
		{"bad jwksUri", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: file:///etc/passwd\n", []string{"line 6", "identityProviders[0].jwksUri"}},
		{"duplicate provider", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n  - name: a\n    issuer: https://b.example/\n    jwksUri: https://b.example/jwks\n", []string{"line 7", "identityProviders[1].name", "already"}},
		{"duplicate issuer", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n  - name: b\n    issuer: https://a.example/\n    jwksUri: https://b.example/jwks\n", []string{"identityProviders[1].issuer"}},
		{"reserved provider name", base + "identityProviders:\n  - name: tokenx\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n", []string{"reserved"}},
		{"HMAC algorithm", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n    algorithms: [HS256]\n", []string{"line 7", "algorithms[0]", "HS256"}},
		{"none algorithm", base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n    algorithms: [none]\n", []string{"not supported"}},
		{"duplicate application", base + "applications:\n  - name: a\n    namespace: n\n  - name: a\n    namespace: n\n    cluster: dev-gcp\n", []string{"line 6", "applications[1]", "dev-gcp:n:a", "already used"}},
		{"application without namespace", base + "applications:\n  - name: a\n", []string{"applications[0].namespace: is required"}},
		{"bad application name", base + "applications:\n  - name: App_1\n    namespace: n\n", []string{"line 4", "applications[0].name", "not a valid name"}},
		{"rule without application", base + "applications:\n  - name: a\n    namespace: n\n    accessPolicy:\n      inbound:\n        rules:\n          - namespace: m\n", []string{"line 9", "rules[0].application: is required"}},
		{"rule with cluster only", base + "applications:\n  - name: a\n    namespace: n\n    accessPolicy:\n      inbound:\n        rules:\n          - application: b\n            cluster: prod\n", []string{"rules[0].namespace: is required when cluster"}},
		{"private key in jwks", base + "applications:\n  - name: a\n    namespace: n\n    jwks: " + privateJWKS + "\n", []string{"line 6", "applications[0].jwks", "private key"}},
		{"two key sources", base + "applications:\n  - name: a\n    namespace: n\n    jwks: {\"keys\": []}\n    jwksUri: https://a.example/jwks\n", []string{"at most one"}},
		{"missing jwksFile", base + "applications:\n  - name: a\n    namespace: n\n    jwksFile: nope.json\n", []string{"line 6", "jwksFile"}},
		{"not YAML", "issuer: [\n", []string{"line"}},
		{"several errors at once", "issuer: x\ncluster: Dev\n", []string{"line 1", "line 2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load([]byte(tt.yaml), t.TempDir())
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

const privateJWKS = `{"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cLyG9V3L4HE5_VmFdqXDO0"}]}`

func TestJWKSFileRelativeToConfig(t *testing.T) {
	dir := t.TempDir()
	pub := `{"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}`
	if err := os.WriteFile(filepath.Join(dir, "app.jwks"), []byte(pub), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := base + "applications:\n  - name: a\n    namespace: n\n    jwksFile: app.jwks\n"
	if err := os.WriteFile(filepath.Join(dir, "vakt.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.LoadFile(filepath.Join(dir, "vakt.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Applications[0].Keys.Lookup("k"); !ok {
		t.Fatal("key k not loaded")
	}
}

func TestCheckFieldsRejected(t *testing.T) {
	const app = base + "identityProviders:\n  - name: auth0\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\napplications:\n  - name: a\n    namespace: n\n"
	tests := []struct{ name, yaml, want string }{
		{"route without path", app + "    routes:\n      - {scopes: [x]}\n", "routes[0]: give exactly one of path and pathPrefix"},
		{"route with both", app + "    routes:\n      - {path: /a, pathPrefix: /b}\n", "give exactly one"},
		{"relative path", app + "    routes:\n      - {path: read}\n", "must start with /"},
		{"path with dot segment", app + "    routes:\n      - {pathPrefix: /a/../b}\n", "not a normalized path"},
		{"path with query", app + "    routes:\n      - {path: /a?b}\n", "not a normalized path"},
		{"lower-case method", app + "    routes:\n      - {path: /a, methods: [get]}\n", "methods[0]"},
		{"public with scopes", app + "    routes:\n      - {path: /a, public: true, scopes: [x]}\n", "cannot require scopes"},
		{"scope with a space", app + "    routes:\n      - {path: /a, scopes: [\"a b\"]}\n", "scopes[0]"},
		{"unknown provider", app + "    authentication:\n      - {identityProvider: okta}\n", "authentication[0].identityProvider"},
		{"tokenx as provider", app + "    authentication:\n      - {identityProvider: tokenx}\n", "vakt's own tokens need no entry"},
		{"forwarded header without prefix", app + "    forwardClaims:\n      - {claim: pid, header: x-pid}\n", "starting with x-vakt-"},
		{"forwarded header vakt sets", app + "    forwardClaims:\n      - {claim: pid, header: x-vakt-subject}\n", "already set"},
		{"bad host", app + "    hosts: [\"App.example.com:443\"]\n", "hosts[0]"},
		{"host twice", app + "    hosts: [a.example]\n  - name: b\n    namespace: n\n    hosts: [a.example]\n", "already belongs to dev-gcp:n:a"},
		{"host twice in one", app + "    hosts: [a.example, a.example]\n", `applications[0].hosts[1]: "a.example" is also applications[0].hosts[0]: list a host once`},
		{"resource twice in one", app + "    resources: [\"https://a.example\", \"HTTPS://A.example:443/\"]\n", `applications[0].resources[1]: "HTTPS://A.example:443/" is also applications[0].resources[0] ("https://a.example"): list a resource once`},
		{"host of another's resource", app + "    resources: [\"https://a.example/x\"]\n  - name: b\n    namespace: n\n    hosts: [a.example]\n", `applications[1].hosts[0]: "a.example" is the host of a resource URI of dev-gcp:n:a`},
		{"resource on another's host", app + "    hosts: [a.example]\n  - name: b\n    namespace: n\n    resources: [\"https://a.example/x\"]\n", `applications[1].resources[0]: "https://a.example/x" is on the host of dev-gcp:n:a`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load([]byte(tt.yaml), t.TempDir())
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "line ") {
				t.Fatalf("error %v, want %q with a line", err, tt.want)
			}
		})
	}
}

// An application's resource URIs may be on its own hosts.
func TestOwnHostAndResource(t *testing.T) {
	if _, err := config.Load([]byte(base+"applications:\n  - name: a\n    namespace: n\n    hosts: [a.example]\n    resources: [\"https://a.example/x\", \"https://a.example/y\"]\n"), t.TempDir()); err != nil {
		t.Fatal(err)
	}
}

func TestUnusableApplicationKeyIsAnError(t *testing.T) {
	_, err := config.Load([]byte(base+"applications:\n  - name: a\n    namespace: n\n    jwks: {\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\", \"kid\": \"h\"}]}\n"), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "applications[0].jwks") || !strings.Contains(err.Error(), "keys[0]") {
		t.Fatalf("got %v", err)
	}
}

// TestErrorsAreDeterministic loads files with several errors many times:
// each must give one text, its errors in the order of the file, whichever
// phase found them (listen.http is written before listen.grpc here, and the
// key file is read before the rules are validated).
func TestErrorsAreDeterministic(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // the start of each error line, in order
	}{
		{"several fields", base + `listen:
  http: nohost
  grpc: 9000
identityProviders:
  - name: a
    issuer: https://a.example/
    jwksUri: https://a.example/jwks
  - name: a
    issuer: https://b.example/
    jwksUri: https://b.example/jwks
applications:
  - name: app
    namespace: n
    jwksFile: missing.jwks
    accessPolicy:
      inbound:
        rules:
          - cluster: prod
`, []string{
			`line 4: listen.http: "nohost" is not host:port`,
			`line 5: listen.grpc: "9000" is not host:port`,
			`line 10: identityProviders[1].name: "a" is already the name of identityProviders[0]`,
			`line 16: applications[0].jwksFile: `,
			`line 20: applications[0].accessPolicy.inbound.rules[0].application: is required`,
			`line 20: applications[0].accessPolicy.inbound.rules[0].namespace: is required when cluster is given`,
		}},
		{"missing field first", "issuer: x\n", []string{
			"cluster: is required",
			`line 1: issuer: "x" is not an absolute http(s) URL`,
		}},
		// The decoder reports one unknown field, picked from a map.
		{"unknown fields", base + "foo: 1\nbar: 2\nbaz: 3\nlisten: {qux: 4, quux: 5}\n", []string{
			`line 3: unknown field "foo"`,
		}},
		{"unknown field of an application", base + "applications:\n  - name: a\n    namespace: t\n    routez: []\n", []string{`line 6: unknown field "routez"`}},
		{"unknown nested fields", base + "listen: {grpc: 127.0.0.1:1, qux: 4, quux: 5}\nfoo: 1\n", []string{
			`line 3: unknown field "qux"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load([]byte(tt.yaml), t.TempDir())
			if err == nil {
				t.Fatal("loaded")
			}
			first := err.Error()
			lines := strings.Split(first, "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%s", len(lines), len(tt.want), first)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("error %d is %q, want %q", i, lines[i], w)
				}
			}
			for range 50 {
				if _, err := config.Load([]byte(tt.yaml), t.TempDir()); err == nil || err.Error() != first {
					t.Fatalf("got\n%v\nafter\n%s", err, first)
				}
			}
		})
	}
}

// An authentication entry may do without an audience when its provider has
// one; "audience: any" is accepted, and warned of at every load.
func TestAuthenticationAudience(t *testing.T) {
	prov := func(aud string) string {
		return base + "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n" + aud +
			"applications:\n  - name: b\n    namespace: t\n    authentication:\n      - {identityProvider: a%s}\n"
	}
	for _, tt := range []struct {
		name, yaml string
		warn       bool
	}{
		{"the provider's audience", strings.Replace(prov("    audience: [api]\n"), "%s", "", 1), false},
		{"the entry's audience", strings.Replace(prov(""), "%s", ", audience: https://api.example.com", 1), false},
		{"any", strings.Replace(prov(""), "%s", ", audience: any", 1), true},
	} {
		c, err := config.Load([]byte(tt.yaml), t.TempDir())
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := len(c.Warnings) > 0; got != tt.warn || (tt.warn && !strings.Contains(c.Warnings[0], "any audience")) {
			t.Fatalf("%s: warnings %q", tt.name, c.Warnings)
		}
	}
}

// log.sampleAllows is read as a share, 1 when left out, and warned of
// where it does nothing.
// listen.admin: off opens no admin listener.
func TestAdminOff(t *testing.T) {
	c, err := config.Load([]byte(base+"listen:\n  admin: off\n"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.AdminAddress() != "" {
		t.Fatalf("admin address %q", c.Listen.AdminAddress())
	}
	if c, _ := config.Load([]byte(base), t.TempDir()); c.Listen.AdminAddress() != config.DefaultAdminAddress {
		t.Fatalf("default admin address %q", c.Listen.AdminAddress())
	}
}

func TestSampleAllows(t *testing.T) {
	for _, tt := range []struct {
		yaml  string
		share float64
		warn  bool
	}{
		{"", 1, false},
		{"log:\n  decisions: all\n  sampleAllows: 0.25\n", 0.25, false},
		{"log:\n  sampleAllows: 0.25\n", 0.25, true},
	} {
		c, err := config.Load([]byte(base+tt.yaml), t.TempDir())
		if err != nil {
			t.Fatalf("%q: %v", tt.yaml, err)
		}
		if got := c.Log.AllowShare(); got != tt.share {
			t.Errorf("%q: share %v, want %v", tt.yaml, got, tt.share)
		}
		if got := len(c.Warnings) > 0; got != tt.warn || (tt.warn && !strings.Contains(c.Warnings[0], "sampleAllows has no effect")) {
			t.Errorf("%q: warnings %q", tt.yaml, c.Warnings)
		}
	}
}

// listen.tls and replay.redis read their files at load: a bad or missing
// one is an error naming the field, and never a start without TLS.
func TestTLSAndRedisSecrets(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test CA")
	leaf := ca.Server(t, 2)
	cert := tlstest.Write(t, dir, "tls.crt", leaf.CertPEM)
	key := tlstest.Write(t, dir, "tls.key", leaf.KeyPEM)
	caFile := tlstest.Write(t, dir, "ca.crt", ca.PEM)
	tlstest.Write(t, dir, "password", []byte("s3cret\n"))
	tlstest.Write(t, dir, "garbage", []byte("not pem"))
	t.Setenv("VAKT_TEST_REDIS_PASSWORD", "from-env")
	for _, tt := range []struct {
		name, yaml string
		want       string // an error's text, "" for none
		check      func(*config.Config) bool
	}{
		{"tls", "listen:\n  tls: {certFile: tls.crt, keyFile: " + key + ", clientCAFile: ca.crt, requireClientCert: true}\n", "",
			func(c *config.Config) bool {
				return c.Listen.TLS.Certificate() != nil && c.Listen.TLS.ClientCAs() != nil && c.Listen.TLS.CertFile == cert
			}},
		{"tls without a key", "listen:\n  tls: {certFile: tls.crt}\n", "listen.tls: needs certFile and keyFile", nil},
		{"tls key missing", "listen:\n  tls: {certFile: tls.crt, keyFile: nope.key}\n", "nope.key: no such file", nil},
		{"tls key mismatch", "listen:\n  tls: {certFile: tls.crt, keyFile: ca.crt}\n", "listen.tls:", nil},
		{"client CA not PEM", "listen:\n  tls: {certFile: tls.crt, keyFile: tls.key, clientCAFile: garbage}\n", "listen.tls.clientCAFile:", nil},
		{"client cert required without CAs", "listen:\n  tls: {certFile: tls.crt, keyFile: tls.key, requireClientCert: true}\n", "needs clientCAFile", nil},
		{"redis password file", "replay:\n  redis: {address: 127.0.0.1:6379, passwordFile: password}\n", "",
			func(c *config.Config) bool { return c.Replay.Redis.Secret() == "s3cret" && len(c.Warnings) == 0 }},
		{"redis password env", "replay:\n  redis: {address: 127.0.0.1:6379, passwordEnv: VAKT_TEST_REDIS_PASSWORD}\n", "",
			func(c *config.Config) bool { return c.Replay.Redis.Secret() == "from-env" }},
		{"redis password inline", "replay:\n  redis: {address: 127.0.0.1:6379, password: inline}\n", "",
			func(c *config.Config) bool {
				return c.Replay.Redis.Secret() == "inline" && len(c.Warnings) == 1 && strings.Contains(c.Warnings[0], "passwordFile")
			}},
		{"redis password env unset", "replay:\n  redis: {address: 127.0.0.1:6379, passwordEnv: VAKT_TEST_UNSET}\n", "VAKT_TEST_UNSET is empty or not set", nil},
		{"redis two passwords", "replay:\n  redis: {address: 127.0.0.1:6379, password: a, passwordFile: password}\n", "at most one of password, passwordFile and passwordEnv", nil},
		{"redis tls", "replay:\n  redis: {address: 127.0.0.1:6379, tls: {caFile: ca.crt, certFile: tls.crt, keyFile: tls.key}}\n", "",
			func(c *config.Config) bool {
				cfg := c.Replay.Redis.TLS.Config()
				return cfg.RootCAs != nil && len(cfg.Certificates) == 1
			}},
		{"redis tls cert without key", "replay:\n  redis: {address: 127.0.0.1:6379, tls: {certFile: tls.crt}}\n", "certFile and keyFile together", nil},
	} {
		c, err := config.Load([]byte(base+tt.yaml), dir)
		switch {
		case tt.want != "":
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: error %v, want %q", tt.name, err, tt.want)
			}
		case err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case !tt.check(c):
			t.Errorf("%s: loaded wrong: %+v %v", tt.name, c.Listen, c.Warnings)
		}
	}
	// Every file named is one a reload follows.
	c, err := config.Load([]byte(base+"listen:\n  tls: {certFile: tls.crt, keyFile: tls.key, clientCAFile: ca.crt}\nreplay:\n  redis: {address: 127.0.0.1:6379, passwordFile: password}\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(c.Files(), " ")
	for _, f := range []string{cert, key, caFile, filepath.Join(dir, "password")} {
		if !strings.Contains(got, f) {
			t.Errorf("Files() %q lacks %s", got, f)
		}
	}
}

// kubernetes.clientEndpoint moves the URLs vakt writes into Secrets to
// where pods reach it, keeps the issuer's path, and makes its token
// endpoint an audience client assertions may name.
func TestClientEndpoints(t *testing.T) {
	for _, tc := range []struct {
		issuer, endpoint      string
		token, jwks, metadata string
		audiences             []string
	}{
		{"https://vakt.example", "", "https://vakt.example/token", "https://vakt.example/jwks", "https://vakt.example/.well-known/oauth-authorization-server", nil},
		{"https://vakt.example/tenant/", "", "https://vakt.example/tenant/token", "https://vakt.example/tenant/jwks", "https://vakt.example/.well-known/oauth-authorization-server/tenant", nil},
		{"https://vakt.example/tenant", "http://vakt.vakt.svc.cluster.local:8080/", "http://vakt.vakt.svc.cluster.local:8080/tenant/token",
			"http://vakt.vakt.svc.cluster.local:8080/tenant/jwks", "http://vakt.vakt.svc.cluster.local:8080/.well-known/oauth-authorization-server/tenant",
			[]string{"http://vakt.vakt.svc.cluster.local:8080/tenant/token"}},
	} {
		yaml := "issuer: " + tc.issuer + "\ncluster: dev-gcp\nkubernetes:\n  enabled: true\n"
		if tc.endpoint != "" {
			yaml += "  clientEndpoint: " + tc.endpoint + "\n"
		}
		c, err := config.Load([]byte(yaml), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		ep := c.ClientEndpoints()
		if ep.Token != tc.token || ep.JWKS != tc.jwks || ep.Metadata != tc.metadata {
			t.Errorf("%s at %q: %+v", tc.issuer, tc.endpoint, ep)
		}
		if got := c.TokenEndpointAudiences(); strings.Join(got, " ") != strings.Join(tc.audiences, " ") {
			t.Errorf("%s at %q: audiences %q, want %q", tc.issuer, tc.endpoint, got, tc.audiences)
		}
	}
}
