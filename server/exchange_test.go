package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/idptest"
)

const (
	app1 = "dev-gcp:team-a:app-1"
	app2 = "dev-gcp:team-a:app-2" // registered, no keys
	app3 = "dev-gcp:team-c:app-3" // has keys, no rule allows it
	appB = "dev-gcp:team-b:app-b"
)

// xenv is vakt serving on loopback, as a token exchange authority.
type xenv struct {
	issuer    string // vakt's, = its HTTP base URL
	admin     string // the admin listener's base URL
	idp       *idptest.Issuer
	keys      map[string]*idptest.Key // client keys by application id
	cur       *Current
	grpc      vaktv1.TokenExchangeServiceClient
	introspec vaktv1.IntrospectionServiceClient
	metrics   *Metrics
	jti       atomic.Int64
	logs      *lockedBuffer // the decision log, as JSON lines
	// reload puts the configuration, with extra YAML appended, in force.
	reload func(t testing.TB, extra string)
}

func newExchangeEnv(t testing.TB, replay exchange.ReplayStore) *xenv {
	t.Helper()
	return newExchangeEnvAt(t, replay, "")
}

// newExchangeEnvAt is newExchangeEnv with vakt's issuer at a path of its
// HTTP base URL ("/tenant"), as RFC 8414 §3 allows.
func newExchangeEnvAt(t testing.TB, replay exchange.ReplayStore, path string) *xenv {
	t.Helper()
	return newExchangeEnvTraced(t, replay, path, nil)
}

// newExchangeEnvTraced is newExchangeEnvAt with tracing (nil for none).
func newExchangeEnvTraced(t testing.TB, replay exchange.ReplayStore, path string, tracing *Tracing) *xenv {
	t.Helper()
	e := &xenv{idp: idptest.NewIssuer(t, "RS256"), keys: map[string]*idptest.Key{}, metrics: NewMetrics()}
	ls, err := Listen("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.issuer = "http://" + ls.HTTP.Addr().String() + path
	e.admin = "http://" + ls.Admin.Addr().String()
	e.keys[app1] = idptest.NewKey(t, "client-key-1", "RS256")
	e.keys[app3] = idptest.NewKey(t, "client-key-1", "ES256")
	yaml := exchangeYAML(t, e)
	cfg, err := config.Load([]byte(yaml), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := exchange.GenerateSigningKey("ES256")
	signer, _ := exchange.NewSigner(key)
	if replay == nil {
		replay = exchange.NewMemoryReplay(exchange.MemoryReplayConfig{})
	}
	ctx, cancel := context.WithCancel(context.Background())
	rt, err := NewRuntime(ctx, cfg, Options{Logger: quiet, Signer: signer, Replay: replay})
	if err != nil {
		t.Fatal(err)
	}
	e.cur = &Current{}
	e.cur.Store(rt)
	e.reload = func(t testing.TB, extra string) {
		cfg, err := config.Load([]byte(yaml+extra), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		rt, err := NewRuntime(ctx, cfg, Options{Logger: quiet, Signer: signer, Replay: replay})
		if err != nil {
			t.Fatal(err)
		}
		e.cur.Store(rt)
	}
	e.logs = &lockedBuffer{}
	log := slog.New(slog.NewJSONHandler(e.logs, nil))
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, AuthorityServices(e.cur, e.metrics, log).WithTracing(tracing), ls) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpc.NewClient(ls.GRPC.Addr().String(), testDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.grpc = vaktv1.NewTokenExchangeServiceClient(conn)
	e.introspec = vaktv1.NewIntrospectionServiceClient(conn)
	return e
}

// assertion builds a client assertion as NAIS tells applications to.
func (e *xenv) assertion(t testing.TB, client string, edit func(h, c map[string]any)) string {
	k := e.keys[client]
	if k == nil {
		k = e.keys[app1] // a client without keys signs with someone's
	}
	now := time.Now()
	h := map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "JWT"}
	c := map[string]any{
		"iss": client, "sub": client, "aud": e.issuer + "/token",
		"jti": fmt.Sprintf("jti-%d-%d", now.UnixNano(), e.jti.Add(1)),
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(30 * time.Second).Unix(),
	}
	if edit != nil {
		edit(h, c)
	}
	return idptest.Sign(t, k, k.Alg, h, c)
}

func (e *xenv) request(t testing.TB, edit func(r *exchange.Request)) exchange.Request {
	r := exchange.Request{
		GrantType:           exchange.GrantTypeTokenExchange,
		ClientAssertionType: exchange.ClientAssertionTypeJWT,
		ClientAssertion:     e.assertion(t, app1, nil),
		SubjectTokenType:    exchange.TokenTypeJWT,
		SubjectToken:        e.idp.Token(e.idp.Claims(time.Now(), "")),
		Audience:            []string{appB},
	}
	if edit != nil {
		edit(&r)
	}
	return r
}

// outcome is what a transport answered: a token, or an OAuth error.
type outcome struct {
	token, code, description string
	expiresIn                int64
}

func (e *xenv) viaGRPC(t *testing.T, r exchange.Request) outcome {
	req := &vaktv1.ExchangeRequest{
		GrantType: r.GrantType, ClientAssertionType: r.ClientAssertionType, ClientAssertion: r.ClientAssertion,
		SubjectTokenType: r.SubjectTokenType, SubjectToken: r.SubjectToken,
	}
	if len(r.Audience) > 0 {
		req.Audience, req.AdditionalAudience = r.Audience[0], r.Audience[1:]
	}
	res, err := e.grpc.Exchange(context.Background(), req)
	if err != nil {
		st := status.Convert(err)
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				return outcome{code: info.Reason, description: st.Message()}
			}
		}
		t.Fatalf("gRPC error without ErrorInfo: %v", err)
	}
	if res.TokenType != "Bearer" || res.IssuedTokenType != exchange.TokenTypeAccessToken {
		t.Fatalf("response %v", res)
	}
	return outcome{token: res.AccessToken, expiresIn: res.ExpiresIn}
}

func (e *xenv) viaHTTP(t *testing.T, r exchange.Request) outcome {
	form := url.Values{}
	for k, v := range map[string]string{
		"grant_type": r.GrantType, "client_assertion_type": r.ClientAssertionType, "client_assertion": r.ClientAssertion,
		"subject_token_type": r.SubjectTokenType, "subject_token": r.SubjectToken,
	} {
		if v != "" {
			form.Set(k, v)
		}
	}
	form["audience"] = r.Audience
	resp, err := testHTTP.PostForm(e.issuer+"/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("Cache-Control %q", resp.Header.Get("Cache-Control"))
	}
	if resp.StatusCode != http.StatusOK {
		code, _ := body["error"].(string)
		if want := oauthCodes[code].http; resp.StatusCode != want {
			t.Fatalf("status %d for %s, want %d", resp.StatusCode, code, want)
		}
		desc, _ := body["error_description"].(string)
		return outcome{code: code, description: desc}
	}
	if resp.Header.Get("Pragma") != "no-cache" {
		t.Fatalf("Pragma %q", resp.Header.Get("Pragma"))
	}
	if body["token_type"] != "Bearer" || body["issued_token_type"] != exchange.TokenTypeAccessToken {
		t.Fatalf("response %v", body)
	}
	tok, _ := body["access_token"].(string)
	exp, _ := body["expires_in"].(float64)
	return outcome{token: tok, expiresIn: int64(exp)}
}

func TestExchange(t *testing.T) {
	e := newExchangeEnv(t, nil)
	now := time.Now()
	replayed := e.assertion(t, app1, nil)
	own := func(aud string) string { return e.ownToken(t, aud, "https://idporten.example/") }
	hs256 := idptest.Segment(t, `{"alg":"HS256","kid":"client-key-1"}`) + "." + idptest.Segment(t, map[string]any{"iss": app1, "sub": app1, "exp": now.Add(time.Minute).Unix()}) + ".c2ln"
	tests := []struct {
		name string
		edit func(r *exchange.Request)
		code string
		desc string // prefix
	}{
		{name: "valid"},
		{name: "assertion aud is the issuer", edit: func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { c["aud"] = e.issuer })
		}},
		{name: "assertion aud an array of one", edit: func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { c["aud"] = []string{e.issuer + "/token"} })
		}},
		{name: "vakt's own token issued to the caller", edit: func(r *exchange.Request) { r.SubjectToken = own(app1) }},
		{"no grant_type", func(r *exchange.Request) { r.GrantType = "" }, "invalid_request", "grant_type is required"},
		{"other grant_type", func(r *exchange.Request) { r.GrantType = "client_credentials" }, "unsupported_grant_type", "grant_type must be"},
		{"other client_assertion_type", func(r *exchange.Request) { r.ClientAssertionType = "urn:x" }, "invalid_client", "client_assertion_type must be"},
		{"no client_assertion", func(r *exchange.Request) { r.ClientAssertion = "" }, "invalid_client", "client_assertion is required"},
		{"other subject_token_type", func(r *exchange.Request) { r.SubjectTokenType = "urn:ietf:params:oauth:token-type:id_token" }, "invalid_request", "subject_token_type must be"},
		{"subject_token_type access_token", func(r *exchange.Request) { r.SubjectTokenType = exchange.TokenTypeAccessToken }, "", ""},
		{"no subject_token", func(r *exchange.Request) { r.SubjectToken = "" }, "invalid_request", "subject_token is required"},
		{"no audience", func(r *exchange.Request) { r.Audience = nil }, "invalid_request", "audience is required"},
		{"assertion garbage", func(r *exchange.Request) { r.ClientAssertion = "garbage" }, "invalid_client", "client assertion is invalid: token is malformed"},
		{"unknown client", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, "dev-gcp:team-x:nobody", nil)
		}, "invalid_client", "client authentication failed"},
		{"client without keys", func(r *exchange.Request) { r.ClientAssertion = e.assertion(t, app2, nil) }, "invalid_client", "client authentication failed"},
		{"signed with another client's key", func(r *exchange.Request) {
			k := e.keys[app3]
			a := e.assertion(t, app1, nil)
			r.ClientAssertion = idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID}, strings.Split(a, ".")[1])
		}, "invalid_client", "client assertion is invalid"},
		{"HS256", func(r *exchange.Request) { r.ClientAssertion = hs256 }, "invalid_client", "client authentication failed"},
		{"sub is not iss", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { c["sub"] = app3 })
		}, "invalid_client", "client assertion is invalid: sub must equal iss"},
		{"aud elsewhere", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { c["aud"] = "https://tokenx.example/token" })
		}, "invalid_client", "client assertion is invalid: token audience is invalid"},
		{"aud with another value", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { c["aud"] = []string{e.issuer + "/token", "https://x"} })
		}, "invalid_client", "client assertion is invalid: aud must be the token endpoint alone"},
		{"exp too far", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { c["exp"] = now.Add(10 * time.Minute).Unix() })
		}, "invalid_client", "client assertion is invalid: exp must be at most 120 seconds"},
		{"no exp", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { delete(c, "exp") })
		}, "invalid_client", "client assertion is invalid: token claim is invalid"},
		{"expired", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) {
				c["iat"], c["nbf"], c["exp"] = now.Add(-time.Minute).Unix(), now.Add(-time.Minute).Unix(), now.Add(-30*time.Second).Unix()
			})
		}, "invalid_client", "client assertion is invalid: token is expired"},
		{"iat in the future", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { c["iat"] = now.Add(time.Minute).Unix() })
		}, "invalid_client", "client assertion is invalid: token is not valid yet"},
		{"no iat", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { delete(c, "iat") })
		}, "invalid_client", "client assertion is invalid: iat is required"},
		{"no jti", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { delete(c, "jti") })
		}, "invalid_client", "client assertion is invalid: jti is required"},
		{"subject token expired", func(r *exchange.Request) {
			r.SubjectToken = e.idp.Token(map[string]any{"iss": e.idp.URL, "sub": "u", "exp": now.Add(-time.Hour).Unix()})
		}, "invalid_request", "invalid subject_token: token is expired"},
		{"subject token of an unknown issuer", func(r *exchange.Request) {
			r.SubjectToken = e.idp.Token(map[string]any{"iss": "https://evil.example", "sub": "u", "exp": now.Add(time.Hour).Unix()})
		}, "invalid_request", "invalid subject_token: token issuer is not trusted"},
		{"vakt's own token issued to another application", func(r *exchange.Request) { r.SubjectToken = own(appB) }, "invalid_request", "invalid subject_token: token audience is invalid"},
		{"unknown target", func(r *exchange.Request) { r.Audience = []string{"dev-gcp:team-b:nobody"} }, "invalid_target", "token exchange audience is invalid"},
		{"target does not allow the client", func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app3, nil)
		}, "invalid_target", "token exchange audience is invalid"},
		{"target is the client itself", func(r *exchange.Request) { r.Audience = []string{app1} }, "invalid_target", "token exchange audience is invalid"},
	}
	transports := map[string]func(*testing.T, exchange.Request) outcome{"grpc": e.viaGRPC, "http": e.viaHTTP}
	for _, tt := range tests {
		for tn, do := range transports {
			t.Run(tt.name+"/"+tn, func(t *testing.T) {
				got := do(t, e.request(t, tt.edit))
				if tt.code == "" {
					if got.code != "" {
						t.Fatalf("refused: %s: %s", got.code, got.description)
					}
					idp := e.idp.URL // the subject token's issuer
					if tt.name == "vakt's own token issued to the caller" {
						idp = "https://idporten.example/" // the subject token's own idp
					}
					e.checkIssued(t, got, app1, appB, idp)
					return
				}
				if got.code != tt.code || !strings.HasPrefix(got.description, tt.desc) {
					t.Fatalf("got %s %q, want %s %q…", got.code, got.description, tt.code, tt.desc)
				}
			})
		}
	}

	// Replay: an assertion is accepted once, over either transport.
	first := e.viaHTTP(t, e.request(t, func(r *exchange.Request) { r.ClientAssertion = replayed }))
	again := e.viaGRPC(t, e.request(t, func(r *exchange.Request) { r.ClientAssertion = replayed }))
	if first.code != "" || again.code != "invalid_client" || again.description != "client assertion is invalid: jti has been used before" {
		t.Fatalf("replay: first %+v, again %+v", first, again)
	}
}

// checkIssued verifies an issued token: Introspect as tokenx accepts it and
// its claims are the subject's plus vakt's.
func (e *xenv) checkIssued(t *testing.T, got outcome, client, target, idp string) map[string]any {
	t.Helper()
	// The lifetime (15m), or what is left of the subject token's.
	if got.expiresIn <= 0 || got.expiresIn > 900 {
		t.Fatalf("expires_in %d", got.expiresIn)
	}
	res, err := e.introspec.Introspect(context.Background(), &vaktv1.IntrospectRequest{IdentityProvider: "tokenx", Token: got.token})
	if err != nil || !res.Active {
		t.Fatalf("issued token does not introspect: %v %v", err, res.GetError())
	}
	c := res.Claims.AsMap()
	if c["iss"] != e.issuer || c["aud"] != target || c["client_id"] != client || c["sub"] != "user-1" || c["jti"] == "" {
		t.Fatalf("claims %v", c)
	}
	if c["idp"] != idp {
		t.Fatalf("idp %v, want %s", c["idp"], idp)
	}
	if exp, iat := c["exp"].(float64), c["iat"].(float64); exp-iat != float64(got.expiresIn) || c["nbf"] != c["iat"] {
		t.Fatalf("times %v", c)
	}
	hdr, _ := idptestHeader(got.token)
	if hdr["typ"] != "at+jwt" || hdr["kid"] != e.cur.Load().Signer.Keys()[0].ID {
		t.Fatalf("header %v", hdr)
	}
	return c
}

func idptestHeader(tok string) (map[string]any, error) {
	seg, _, _ := strings.Cut(tok, ".")
	b, err := b64url(seg)
	if err != nil {
		return nil, err
	}
	var h map[string]any
	return h, json.Unmarshal(b, &h)
}

// ownToken is a token vakt issued to aud, as an earlier exchange would have,
// carrying the identity provider of the original login as idp.
func (e *xenv) ownToken(t testing.TB, aud, idp string) string {
	k := e.cur.Load().Signer.Keys()[0]
	ik := &idptest.Key{ID: k.ID, Alg: k.Alg, Private: k.Private}
	return idptest.Sign(t, ik, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "at+jwt"}, map[string]any{
		"iss": e.issuer, "sub": "user-1", "aud": aud, "client_id": "dev-gcp:team-x:first-hop", "idp": idp,
		"exp": time.Now().Add(time.Minute).Unix(),
	})
}

// idp names the original identity provider: the subject token's issuer on
// the first hop, and unchanged along a chain of exchanges (not vakt's own
// issuer, which is the iss of every token after the first).
func TestExchangeChainKeepsIdp(t *testing.T) {
	e := newExchangeEnv(t, nil)
	first := e.viaGRPC(t, e.request(t, nil))
	if first.code != "" {
		t.Fatal(first.description)
	}
	e.checkIssued(t, first, app1, appB, e.idp.URL)

	const original = "https://login.original.example/"
	second := e.viaGRPC(t, e.request(t, func(r *exchange.Request) { r.SubjectToken = e.ownToken(t, app1, original) }))
	if second.code != "" {
		t.Fatal(second.description)
	}
	c := e.checkIssued(t, second, app1, appB, original)
	if c["client_id"] != app1 {
		t.Fatalf("client_id %v: the caller of this hop, not of the first", c["client_id"])
	}
}

func TestExchangeReplayStoreDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens here now
	rr := exchange.NewRedisReplay(exchange.RedisOptions{Address: addr}, nil)
	defer rr.Close()
	e := newExchangeEnv(t, rr)
	for tn, do := range map[string]func(*testing.T, exchange.Request) outcome{"grpc": e.viaGRPC, "http": e.viaHTTP} {
		got := do(t, e.request(t, nil))
		if got.code != "temporarily_unavailable" {
			t.Fatalf("%s: %+v", tn, got)
		}
	}
}

func TestMetadataAndJWKS(t *testing.T) {
	e := newExchangeEnv(t, nil)
	get := func(path string) map[string]any {
		resp, err := testHTTP.Get(e.issuer + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		if resp.StatusCode != 200 || json.Unmarshal(b, &m) != nil {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
		return m
	}
	// vakt is no OpenID Provider: it serves RFC 8414 metadata only.
	if resp, err := testHTTP.Get(e.issuer + "/.well-known/openid-configuration"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("openid-configuration: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	for _, p := range []string{"/.well-known/oauth-authorization-server"} {
		m := get(p)
		if m["issuer"] != e.issuer || m["token_endpoint"] != e.issuer+"/token" || m["jwks_uri"] != e.issuer+"/jwks" {
			t.Fatalf("%s: %v", p, m)
		}
		if fmt.Sprint(m["token_endpoint_auth_methods_supported"]) != "[private_key_jwt]" ||
			fmt.Sprint(m["grant_types_supported"]) != "["+exchange.GrantTypeTokenExchange+"]" ||
			fmt.Sprint(m["token_endpoint_auth_signing_alg_values_supported"]) != "[RS256 PS256 ES256 EdDSA]" {
			t.Fatalf("%s: %v", p, m)
		}
	}
	jwks := get("/jwks")
	keys := jwks["keys"].([]any)
	if len(keys) != 1 {
		t.Fatalf("jwks %v", jwks)
	}
	for _, k := range keys {
		for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
			if _, ok := k.(map[string]any)[private]; ok {
				t.Fatalf("jwks publishes private member %q", private)
			}
		}
	}
}

// go-oidc, a verifier no one here wrote, verifies an issued token with the
// key set vakt's RFC 8414 metadata names.
func TestIssuedTokenVerifiesWithGoOIDC(t *testing.T) {
	e := newExchangeEnv(t, nil)
	got := e.viaHTTP(t, e.request(t, nil))
	if got.code != "" {
		t.Fatal(got.description)
	}
	ctx := context.Background()
	resp, err := testHTTP.Get(e.issuer + "/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	err = json.NewDecoder(resp.Body).Decode(&meta)
	resp.Body.Close()
	if err != nil || meta.Issuer != e.issuer {
		t.Fatalf("metadata %+v %v", meta, err)
	}
	keys := oidc.NewRemoteKeySet(ctx, meta.JWKSURI)
	algs := []string{"ES256"} // the signing key newExchangeEnv makes
	tok, err := oidc.NewVerifier(meta.Issuer, keys, &oidc.Config{ClientID: appB, SupportedSigningAlgs: algs}).Verify(ctx, got.token)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Subject != "user-1" || tok.Issuer != e.issuer {
		t.Fatalf("token %+v", tok)
	}
	if _, err := oidc.NewVerifier(meta.Issuer, keys, &oidc.Config{ClientID: app1, SupportedSigningAlgs: algs}).Verify(ctx, got.token); err == nil {
		t.Fatal("verified for the wrong audience")
	}
}

func TestTokenEndpointRequestErrors(t *testing.T) {
	e := newExchangeEnv(t, nil)
	post := func(ct, body, query string) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, e.issuer+"/token"+query, strings.NewReader(body))
		req.Header.Set("Content-Type", ct)
		resp, err := testHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	for _, tt := range []struct {
		name, ct, body, query, desc string
	}{
		{"JSON body", "application/json", `{"grant_type":"x"}`, "", "Content-Type must be"},
		{"parameter twice", "application/x-www-form-urlencoded", "grant_type=a&grant_type=b", "", "grant_type is given more than once"},
		{"bad encoding", "application/x-www-form-urlencoded", "grant_type=%zz", "", "request body is not valid form encoding"},
		{"parameters in the URL", "application/x-www-form-urlencoded", "grant_type=a", "?subject_token=x", "parameters belong in the body"},
		{"too large", "application/x-www-form-urlencoded", "subject_token=" + strings.Repeat("a", 70<<10), "", "request body is larger than 64 KiB"},
	} {
		st, m := post(tt.ct, tt.body, tt.query)
		if st != 400 || m["error"] != "invalid_request" || !strings.HasPrefix(fmt.Sprint(m["error_description"]), tt.desc) {
			t.Errorf("%s: %d %v", tt.name, st, m)
		}
	}
}

func b64url(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

// Refusals are counted by OAuth code and by a reason that tells apart what
// the client is told alike.
func TestExchangeMetrics(t *testing.T) {
	e := newExchangeEnv(t, nil)
	e.viaGRPC(t, e.request(t, nil))
	e.viaHTTP(t, e.request(t, nil))
	e.viaHTTP(t, e.request(t, func(r *exchange.Request) { r.Audience = []string{"dev-gcp:team-b:nobody"} }))
	e.viaGRPC(t, e.request(t, func(r *exchange.Request) { r.ClientAssertion = e.assertion(t, app3, nil) }))
	e.viaGRPC(t, e.request(t, func(r *exchange.Request) { r.ClientAssertion = "x" }))
	resp, err := testHTTP.Get(e.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`vakt_token_exchanges_total{reason="",result="ok"} 2`,
		`vakt_token_exchanges_total{reason="target_unknown",result="invalid_target"} 1`,
		`vakt_token_exchanges_total{reason="target_denied",result="invalid_target"} 1`,
		`vakt_token_exchanges_total{reason="assertion_invalid",result="invalid_client"} 1`,
		`vakt_token_exchange_duration_seconds_count 5`,
		`vakt_introspection_duration_seconds_count 0`,
		`vakt_requests_refused_overload_total{service="exchange"} 0`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// A client whose keys are published at a URL (jwksUri): vakt fetches them
// and verifies its assertions with them, and with nothing else.
func TestExchangeClientKeysFromURL(t *testing.T) {
	e := newExchangeEnv(t, nil)
	published := idptest.NewIssuer(t, "ES256") // serves the client's JWKS
	yaml := exchangeYAML(t, e) + `  - name: app-4
    namespace: team-a
    jwksUri: ` + published.JWKSURI() + `
`
	yaml = strings.Replace(yaml, "          - application: app-1\n            namespace: team-a\n",
		"          - application: app-1\n            namespace: team-a\n          - application: app-4\n            namespace: team-a\n", 1)
	cfg, err := config.Load([]byte(yaml), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rt, err := NewRuntime(ctx, cfg, Options{Logger: quiet, Signer: e.cur.Load().Signer, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{})})
	if err != nil {
		t.Fatal(err)
	}
	e.cur.Store(rt)
	const app4 = "dev-gcp:team-a:app-4"
	e.keys[app4] = published.Key()
	got := e.viaHTTP(t, e.request(t, func(r *exchange.Request) { r.ClientAssertion = e.assertion(t, app4, nil) }))
	if got.code != "" {
		t.Fatalf("client with jwksUri: %s %s", got.code, got.description)
	}
	e.checkIssued(t, got, app4, appB, e.idp.URL)
	// Another key, not published: refused.
	e.keys[app4] = idptest.NewKey(t, published.Key().ID, "ES256")
	if got := e.viaHTTP(t, e.request(t, func(r *exchange.Request) { r.ClientAssertion = e.assertion(t, app4, nil) })); got.code != "invalid_client" {
		t.Fatalf("unpublished key: %+v", got)
	}
}

// A client that posts to the token endpoint under another URL (a cluster's
// Service URL) names that URL as its assertion's aud: accepted when the
// configuration lists it in tokenEndpointAliases, refused otherwise.
func TestTokenEndpointAliases(t *testing.T) {
	e := newExchangeEnv(t, nil)
	const alias = "http://vakt.vakt.svc.cluster.local:8080/token"
	withAud := func(aud string) exchange.Request {
		return e.request(t, func(r *exchange.Request) {
			r.ClientAssertion = e.assertion(t, app1, func(h, c map[string]any) { c["aud"] = aud })
		})
	}
	if got := e.viaHTTP(t, withAud(alias)); got.code != "invalid_client" {
		t.Fatalf("an alias not configured: %+v", got)
	}
	e.reload(t, "tokenEndpointAliases: ["+alias+"]\n")
	if got := e.viaHTTP(t, withAud(alias)); got.code != "" {
		t.Fatalf("a configured alias: %+v", got)
	}
	if got := e.viaHTTP(t, withAud("http://elsewhere.example/token")); got.code != "invalid_client" {
		t.Fatalf("another URL: %+v", got)
	}
}
