package server

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/idptest"
)

// survivalYAML is the configuration of survivalEnv: two external
// providers, and applications app-b (vakt's tokens from app-1) and api
// (either provider's tokens for apiAudience). AUTH0 and OTHER are the
// issuers' URLs.
const survivalYAML = `issuer: http://127.0.0.1:8080
cluster: dev-gcp
signing:
  keysFile: keys.json
identityProviders:
  - name: auth0
    issuer: AUTH0
    jwksUri: AUTH0/jwks
    audience: [https://api.example.com, https://api2.example.com]
  - name: other
    issuer: OTHER
    jwksUri: OTHER/jwks
applications:
  - name: app-1
    namespace: team-a
  - name: app-3
    namespace: team-c
  - name: app-b
    namespace: team-b
    forwardClaims:
      - {claim: pid, header: x-vakt-pid}
    accessPolicy:
      inbound:
        rules:
          - application: app-1
            namespace: team-a
  - name: api
    namespace: team-b
    authentication:
      - {identityProvider: auth0, audience: https://api.example.com}
      - {identityProvider: other, audience: https://api.example.com}
`

const app3Entry = "  - name: app-3\n    namespace: team-c\n"

// survivalEnv is vakt serve's runtime as it reloads: a Loader with
// KeySets reading a configuration file and a signing keys file, and a
// Reloader swapping the runtimes; Check in-process, Introspect over gRPC
// and over HTTP.
type survivalEnv struct {
	t            *testing.T
	ctx          context.Context
	dir          string
	auth0, other *idptest.Issuer
	signing      []*exchange.SigningKey
	yaml         string // the configuration in force
	cur          *Current
	rl           *Reloader
	check        *authorizationService
	introspect   vaktv1.IntrospectionServiceClient
	http         http.Handler
}

func newSurvivalEnv(t *testing.T) *survivalEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &survivalEnv{t: t, ctx: ctx, dir: t.TempDir(), auth0: idptest.NewIssuer(t, "RS256"), other: idptest.NewIssuer(t, "ES256")}
	key, err := exchange.GenerateSigningKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	e.signing = []*exchange.SigningKey{key}
	e.writeKeys()
	e.write(strings.NewReplacer("AUTH0", e.auth0.URL, "OTHER", e.other.URL).Replace(survivalYAML))
	cfgFile := filepath.Join(e.dir, "vakt.yaml")
	loader := &Loader{Config: func() (*config.Config, error) { return config.LoadFile(cfgFile) },
		Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{}), Logger: quiet,
		KeySets: NewKeySets(ctx, quiet, nil)} // as cmd/vakt makes it
	e.cur = &Current{}
	e.rl = &Reloader{Current: e.cur, Build: loader.Build, Logger: quiet}
	if err := e.rl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	e.check = newAuthorizationService(e.cur, quiet, nil, nil)
	services := AuthorityServices(e.cur, nil, quiet)
	e.http = services.Handler()
	gs, _ := services.NewGRPCServer()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), testDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.introspect = vaktv1.NewIntrospectionServiceClient(conn)
	return e
}

func (e *survivalEnv) write(yaml string) {
	e.t.Helper()
	e.yaml = yaml
	if err := os.WriteFile(filepath.Join(e.dir, "vakt.yaml"), []byte(yaml), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

func (e *survivalEnv) writeKeys() {
	e.t.Helper()
	if err := exchange.WriteKeysFile(filepath.Join(e.dir, "keys.json"), e.signing); err != nil {
		e.t.Fatal(err)
	}
}

// reload puts yaml in force as a file change does: the Reloader builds a
// new runtime with the Loader, and swaps it in.
func (e *survivalEnv) reload(yaml string) {
	e.t.Helper()
	before := e.cur.Load()
	e.write(yaml)
	if err := e.rl.Reload(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	if e.cur.Load() == before {
		e.t.Fatal("the reload kept the runtime")
	}
}

// edit is the configuration in force with old replaced by new.
func (e *survivalEnv) edit(old, new string) string {
	e.t.Helper()
	if !strings.Contains(e.yaml, old) {
		e.t.Fatalf("the configuration has no %q", old)
	}
	return strings.Replace(e.yaml, old, new, 1)
}

// own is a token vakt issued to app-1 for aud, signed with the first key.
func (e *survivalEnv) own(aud string) string {
	k := e.signing[0]
	now := time.Now()
	return idptest.Sign(e.t, &idptest.Key{ID: k.ID, Alg: k.Alg, Private: k.Private}, k.Alg,
		map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "at+jwt"},
		map[string]any{"iss": "http://127.0.0.1:8080", "sub": "user-1", "aud": aud, "client_id": app1,
			"idp": "https://idporten.example/", "pid": "12345678901", "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()})
}

func (e *survivalEnv) external(iss *idptest.Issuer) string {
	return iss.Token(iss.Claims(time.Now(), "https://api.example.com"))
}

// stats are the verified-token cache's counts, as the runtime in force
// reports them.
func (e *survivalEnv) stats() authz.CacheStats {
	st, ok := e.cur.Load().Validator.CacheStats()
	if !ok {
		e.t.Fatal("no cache")
	}
	return st
}

// lookups runs f and returns the cache's hits and misses meanwhile.
func (e *survivalEnv) lookups(f func()) (hits, misses uint64) {
	e.t.Helper()
	before := e.stats()
	f()
	after := e.stats()
	return after.Hits - before.Hits, after.Misses - before.Misses
}

// checkAt Checks a bearer token at an application; the answer is the
// pre-marshalled allow (nil when refused) and the response.
func (e *survivalEnv) checkAt(app, tok string) (*preMarshalled, *authv3.CheckResponse) {
	e.t.Helper()
	res, err := e.check.checkWire(context.Background(), reqFor(app, tok))
	if err != nil {
		e.t.Fatalf("Check at %s: %v", app, err)
	}
	if pm, ok := res.(*preMarshalled); ok {
		return pm, pm.message()
	}
	return nil, res.(*authv3.CheckResponse)
}

// allowed Checks tok at app, which must allow it.
func (e *survivalEnv) allowed(app, tok string) *preMarshalled {
	e.t.Helper()
	pm, res := e.checkAt(app, tok)
	if res.GetStatus().GetCode() != int32(codes.OK) {
		e.t.Fatalf("Check at %s refused: %s", app, res.GetDeniedResponse().GetBody())
	}
	return pm
}

// refused Checks tok at app, which must refuse it for r.
func (e *survivalEnv) refused(app, tok string, r authz.Reason) {
	e.t.Helper()
	_, res := e.checkAt(app, tok)
	if res.GetStatus().GetCode() == int32(codes.OK) || !strings.Contains(res.GetDeniedResponse().GetBody(), r.Description()) {
		e.t.Fatalf("Check at %s: %v %s, want refused: %s", app, res.GetStatus().GetCode(), res.GetDeniedResponse().GetBody(), r.Description())
	}
}

// introspected asks both faces about tok, and says whether it is active
// and, when not, why (the faces must agree).
func (e *survivalEnv) introspected(provider, tok string) (bool, string) {
	e.t.Helper()
	g, err := e.introspect.Introspect(context.Background(), &vaktv1.IntrospectRequest{IdentityProvider: provider, Token: tok})
	if err != nil {
		e.t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"identity_provider": provider, "token": tok})
	req := httptest.NewRequest(http.MethodPost, "/api/v1/introspect", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	e.http.ServeHTTP(rec, req)
	var h struct {
		Active bool   `json:"active"`
		Error  string `json:"error"`
		Sub    string `json:"sub"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &h); err != nil || rec.Code != http.StatusOK {
		e.t.Fatalf("HTTP introspection: %d %s", rec.Code, rec.Body)
	}
	if h.Active != g.GetActive() || h.Error != g.GetError() {
		e.t.Fatalf("gRPC says active %v (%s), HTTP %v (%s)", g.GetActive(), g.GetError(), h.Active, h.Error)
	}
	if h.Active && (h.Sub == "" || g.GetClaims().GetFields()["sub"].GetStringValue() != h.Sub) {
		e.t.Fatalf("active without the claims: %s", rec.Body)
	}
	return h.Active, h.Error
}

// A reload whose policy changed keeps the verified-token cache: every token
// verified before is a hit after (no signature checked again), Check and
// Introspect answer as before, and Check's answer for an application that
// did not change is the very one derived before (no allocation), while an
// application that changed gets a new one. vakt's own provider survives,
// though every reload reads its keys file anew.
func TestReloadKeepsVerifiedTokens(t *testing.T) {
	e := newSurvivalEnv(t)
	own, auth0, other := e.own(appB), e.external(e.auth0), e.external(e.other)
	answer := e.allowed(appB, own)
	e.allowed(appAPI, auth0)
	e.allowed(appAPI, other)
	if active, why := e.introspected("tokenx", own); !active {
		t.Fatal(why)
	}
	for _, tt := range []struct {
		name     string
		yaml     func() string
		appBSame bool // app-b's answer is the one before
		header   string
	}{
		{"an application added", func() string { return e.yaml + "  - name: app-x\n    namespace: team-x\n" }, true, "x-vakt-pid"},
		{"an application removed", func() string { return e.edit(app3Entry, "") }, true, "x-vakt-pid"},
		{"another application changed", func() string {
			return e.edit("  - name: api\n    namespace: team-b\n", "  - name: api\n    namespace: team-b\n    stripAuthorization: true\n")
		}, true, "x-vakt-pid"},
		{"app-b changed", func() string { return e.edit("header: x-vakt-pid", "header: x-vakt-person") }, false, "x-vakt-person"},
		{"nothing changed", func() string { return e.yaml }, true, "x-vakt-person"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e.t = t
			e.reload(tt.yaml())
			var next *preMarshalled
			hits, misses := e.lookups(func() {
				next = e.allowed(appB, own)
				e.allowed(appAPI, auth0)
				e.allowed(appAPI, other)
				if active, why := e.introspected("tokenx", own); !active { // two lookups: gRPC, HTTP
					t.Fatal(why)
				}
				if active, why := e.introspected("auth0", auth0); !active {
					t.Fatal(why)
				}
			})
			if hits != 7 || misses != 0 {
				t.Fatalf("%d hits, %d misses after the reload: want every token from the cache", hits, misses)
			}
			if (next == answer) != tt.appBSame {
				t.Fatalf("app-b's answer the one before: %v, want %v", next == answer, tt.appBSame)
			}
			if _, ok := headerMap(next.message().GetOkResponse().GetHeaders())[tt.header]; !ok {
				t.Fatalf("app-b's answer does not set %s", tt.header)
			}
			answer = next
			if tt.appBSame {
				req := reqFor(appB, own)
				if n := testing.AllocsPerRun(20, func() { _, _ = e.check.checkWire(context.Background(), req) }); n != 0 {
					t.Fatalf("%.1f allocations per cached Check after the reload", n)
				}
			}
		})
	}
	// The cache's own bounds changed: a new cache, every token verified
	// anew, once.
	e.t = t
	e.reload(e.yaml + "validation:\n  cacheMemory: 32Mi\n")
	if st := e.stats(); st.Entries != 0 || st.Hits != 0 {
		t.Fatalf("a new cache holds %+v", st)
	}
	if hits, misses := e.lookups(func() { e.allowed(appB, own); e.allowed(appB, own) }); hits != 1 || misses != 1 {
		t.Fatalf("%d hits, %d misses in the new cache", hits, misses)
	}
}

// A provider whose configuration changed has its tokens dropped from the
// cache at the reload: each is verified anew by the provider configured
// now, refused when that refuses it, and not served from the cache even
// to a request still reading the runtime before. The other providers'
// tokens stay hits.
func TestReloadDropsChangedProvider(t *testing.T) {
	for _, tt := range []struct {
		name     string
		provider string // whose configuration changes
		change   func(e *survivalEnv)
		refused  authz.Reason // ReasonNone: still accepted, verified anew
	}{
		{"an audience tightened", "auth0", func(e *survivalEnv) {
			e.reload(e.edit("audience: [https://api.example.com, https://api2.example.com]", "audience: [https://api2.example.com]"))
		}, authz.ReasonTokenAudience},
		{"an algorithm list", "other", func(e *survivalEnv) {
			e.reload(e.edit("    jwksUri: "+e.other.URL+"/jwks\n", "    jwksUri: "+e.other.URL+"/jwks\n    algorithms: [ES256]\n"))
		}, authz.ReasonNone},
		{"a provider removed", "other", func(e *survivalEnv) {
			y := e.edit("  - name: other\n    issuer: "+e.other.URL+"\n    jwksUri: "+e.other.URL+"/jwks\n", "")
			e.yaml = y
			e.reload(e.edit("      - {identityProvider: other, audience: https://api.example.com}\n", ""))
		}, authz.ReasonTokenIssuer},
		{"vakt's signing keys: one more", "tokenx", func(e *survivalEnv) {
			next, err := exchange.GenerateSigningKey("ES256")
			if err != nil {
				e.t.Fatal(err)
			}
			e.signing = append(e.signing, next) // the first still signs
			e.writeKeys()
			e.reload(e.yaml)
		}, authz.ReasonNone},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newSurvivalEnv(t)
			tokens := map[string]struct{ app, tok string }{
				"tokenx": {appB, e.own(appB)},
				"auth0":  {appAPI, e.external(e.auth0)},
				"other":  {appAPI, e.external(e.other)},
			}
			for _, x := range tokens {
				e.allowed(x.app, x.tok)
			}
			changed := tokens[tt.provider]
			if active, why := e.introspected(tt.provider, changed.tok); !active {
				t.Fatal(why)
			}
			old := e.cur.Load()
			entries := e.stats().Entries
			tt.change(e)
			if n := e.stats().Entries; n != entries-1 {
				t.Fatalf("%d entries after the reload, %d before: want the changed provider's dropped", n, entries)
			}

			// The runtime before, still read by a request that began then,
			// verifies the token anew (by its own configuration) and keeps
			// nothing of it.
			hits, misses := e.lookups(func() {
				if _, err := old.Validator.Validate(context.Background(), tt.provider, changed.tok); err != nil {
					t.Fatalf("the runtime before: %v", err)
				}
			})
			if hits != 0 || misses != 1 || e.stats().Entries != entries-1 {
				t.Fatalf("the runtime before: %d hits, %d misses, %d entries: its provider's token came from the cache, or went into it", hits, misses, e.stats().Entries)
			}

			// The runtime in force: verified anew, and refused or kept.
			hits, misses = e.lookups(func() {
				if tt.refused != authz.ReasonNone {
					e.refused(changed.app, changed.tok, tt.refused)
					e.refused(changed.app, changed.tok, tt.refused)
				} else {
					e.allowed(changed.app, changed.tok)
					e.allowed(changed.app, changed.tok)
				}
			})
			if want := uint64(2); tt.refused == authz.ReasonNone {
				want = 1
				if hits != 1 || misses != 1 {
					t.Fatalf("%d hits, %d misses: want verified anew once, then from the cache", hits, misses)
				}
			} else if misses != want || hits != 0 {
				t.Fatalf("%d hits, %d misses: a refused token was served from the cache", hits, misses)
			}
			active, why := e.introspected(tt.provider, changed.tok)
			if active != (tt.refused == authz.ReasonNone) {
				t.Fatalf("introspected: active %v (%s)", active, why)
			}

			// The other providers' tokens were not verified again.
			hits, misses = e.lookups(func() {
				for name, x := range tokens {
					if name != tt.provider {
						e.allowed(x.app, x.tok)
					}
				}
			})
			if hits != 2 || misses != 0 {
				t.Fatalf("the other providers' tokens: %d hits, %d misses", hits, misses)
			}
		})
	}
}

// A token vakt issued for an application that a reload removed is refused
// by Introspect at once, though it is in the cache: the cache keeps what
// vakt's provider verified, and each runtime asks its own applications.
// A token for an application still there is a hit, and the runtime before
// still accepts the other one, from the cache.
func TestReloadRemovedApplicationRefusesOwnToken(t *testing.T) {
	e := newSurvivalEnv(t)
	for3, forB := e.own("dev-gcp:team-c:app-3"), e.own(appB)
	for _, tok := range []string{for3, forB} {
		if active, why := e.introspected("vakt", tok); !active {
			t.Fatal(why)
		}
	}
	old := e.cur.Load()
	e.reload(e.edit(app3Entry, ""))

	hits, misses := e.lookups(func() {
		active, why := e.introspected("vakt", for3)
		if active || !strings.Contains(why, "audience") {
			t.Fatalf("app-3's token after app-3 was removed: active %v (%s)", active, why)
		}
		if active, why := e.introspected("tokenx", forB); !active {
			t.Fatalf("app-b's token: %s", why)
		}
	})
	if hits != 4 || misses != 0 {
		t.Fatalf("%d hits, %d misses: want both tokens from the cache, by both faces", hits, misses)
	}
	// The exchange's subject token is refused the same way.
	if _, _, err := e.cur.Load().Validator.ValidateByIssuer(context.Background(), for3); err == nil {
		t.Fatal("ValidateByIssuer accepted app-3's token")
	}
	if _, err := old.Validator.Validate(context.Background(), "vakt", for3); err != nil {
		t.Fatalf("the runtime before, whose policy has app-3: %v", err)
	}
}
