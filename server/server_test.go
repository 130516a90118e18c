package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/idptest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type env struct {
	idp     *idptest.Issuer
	signing *exchange.SigningKey
	cfg     *config.Config
	cur     *Current
	client  vaktv1.IntrospectionServiceClient
	conn    *grpc.ClientConn
	http    *httptest.Server
	metrics *Metrics
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{idp: idptest.NewIssuer(t, "RS256")}
	yaml := `issuer: http://127.0.0.1:8080
cluster: dev-gcp
identityProviders:
  - name: idporten
    issuer: ` + e.idp.URL + `
    wellKnownUrl: ` + e.idp.WellKnownURL() + `
    audience: [my-api]
applications:
  - name: app-b
    namespace: team-b
`
	cfg, err := config.Load([]byte(yaml), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e.cfg = cfg
	if e.signing, err = exchange.GenerateSigningKey("ES256"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	signer, err := exchange.NewSigner(e.signing)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := NewRuntime(ctx, cfg, Options{Logger: quiet, Signer: signer, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{})})
	if err != nil {
		t.Fatal(err)
	}
	e.cur = &Current{}
	e.cur.Store(rt)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	services := AuthorityServices(e.cur, nil, quiet)
	gs, hs := services.NewGRPCServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	e.conn, err = grpc.NewClient(lis.Addr().String(), testDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close() })
	e.client = vaktv1.NewIntrospectionServiceClient(e.conn)
	e.http = httptest.NewServer(services.Handler())
	t.Cleanup(e.http.Close)
	return e
}

// ownToken signs claims with vakt's signing key, as vakt will mint them.
func (e *env) ownToken(t testing.TB, claims map[string]any) string {
	k := &idptest.Key{ID: e.signing.ID, Alg: e.signing.Alg, Private: e.signing.Private}
	return idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "at+jwt"}, claims)
}

func TestIntrospectGRPC(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	valid := e.idp.Claims(now, "my-api")
	valid["amr"] = []string{"BankID"}
	own := map[string]any{"iss": "http://127.0.0.1:8080", "sub": "user-1", "aud": "dev-gcp:team-b:app-b", "exp": now.Add(time.Minute).Unix(), "client_id": "dev-gcp:team-a:app-1"}
	tests := []struct {
		name, provider, token string
		active                bool
		errMsg                string
		code                  codes.Code
	}{
		{name: "valid", provider: "idporten", token: e.idp.Token(valid), active: true},
		{name: "expired", provider: "idporten", token: e.idp.Token(with(valid, "exp", now.Add(-time.Hour).Unix())), errMsg: "token is expired"},
		{name: "wrong audience", provider: "idporten", token: e.idp.Token(with(valid, "aud", "other")), errMsg: "token audience is invalid"},
		{name: "garbage", provider: "idporten", token: "not a token", errMsg: "token is malformed: expected three dot-separated segments"},
		{name: "unknown provider", provider: "azure", token: e.idp.Token(valid), errMsg: `identity provider "azure" is not configured`},
		{name: "tokenx", provider: "tokenx", token: e.ownToken(t, own), active: true},
		{name: "vakt alias", provider: "vakt", token: e.ownToken(t, own), active: true},
		{name: "tokenx for an unregistered audience", provider: "tokenx", token: e.ownToken(t, with(own, "aud", "dev-gcp:team-x:nobody")), errMsg: "token audience is invalid"},
		{name: "idporten token as tokenx", provider: "tokenx", token: e.idp.Token(valid), errMsg: `token algorithm is not allowed: "RS256"`},
		{name: "tokenx token as idporten", provider: "idporten", token: e.ownToken(t, own), errMsg: "token issuer is not trusted"},
		{name: "no token", provider: "idporten", code: codes.InvalidArgument},
		{name: "no provider", token: "x", code: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := e.client.Introspect(context.Background(), &vaktv1.IntrospectRequest{IdentityProvider: tt.provider, Token: tt.token})
			if tt.code != codes.OK {
				if status.Code(err) != tt.code {
					t.Fatalf("got %v, want %v", err, tt.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Active != tt.active || res.Error != tt.errMsg {
				t.Fatalf("active %v error %q, want %v %q", res.Active, res.Error, tt.active, tt.errMsg)
			}
			if tt.active && res.Claims.Fields["sub"].GetStringValue() != "user-1" {
				t.Fatalf("claims %v", res.Claims)
			}
			if !tt.active && res.Claims != nil {
				t.Fatal("claims on an inactive answer")
			}
		})
	}

	// The claims keep their JSON types.
	res, err := e.client.Introspect(context.Background(), &vaktv1.IntrospectRequest{IdentityProvider: "idporten", Token: e.idp.Token(valid)})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Claims.Fields["exp"].GetNumberValue(); got != float64(valid["exp"].(int64)) {
		t.Fatalf("exp %v", got)
	}
	if got := res.Claims.Fields["amr"].GetListValue().GetValues()[0].GetStringValue(); got != "BankID" {
		t.Fatalf("amr %v", got)
	}

	hc, err := healthpb.NewHealthClient(e.conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hc, err)
	}
}

func with(m map[string]any, k string, v any) map[string]any {
	out := map[string]any{}
	for kk, vv := range m {
		out[kk] = vv
	}
	out[k] = v
	return out
}

func TestIntrospectHTTP(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	claims := e.idp.Claims(now, "my-api")
	// A claim that a float64 would round, and one named like the answer's field.
	payload := strings.Replace(idptest.JSON(t, claims), `"sub"`, `"big":12345678901234567891,"active":"no","sub"`, 1)
	k := e.idp.Key()
	token := idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID}, payload)
	expired := e.idp.Token(with(claims, "exp", now.Add(-time.Hour).Unix()))

	post := func(ct, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, e.http.URL+"/api/v1/introspect", strings.NewReader(body))
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := testHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	jsonBody := func(p, tok string) string {
		return idptest.JSON(t, map[string]string{"identity_provider": p, "token": tok})
	}
	form := func(p, tok string) string { return url.Values{"identity_provider": {p}, "token": {tok}}.Encode() }

	tests := []struct {
		name, ct, body string
		status         int
		want           string // exact body, or a substring when prefixed with ~
	}{
		{"json valid", "application/json", jsonBody("idporten", token), 200, `~"big":12345678901234567891`},
		{"json valid, charset", "application/json; charset=utf-8", jsonBody("idporten", token), 200, `~"active":true`},
		{"form valid", "application/x-www-form-urlencoded", form("idporten", token), 200, `~"sub":"user-1"`},
		{"expired", "application/json", jsonBody("idporten", expired), 200, `{"active":false,"error":"token is expired"}`},
		{"unknown provider", "application/x-www-form-urlencoded", form("nope", token), 200, `{"active":false,"error":"identity provider \"nope\" is not configured"}`},
		// A request that cannot be introspected is answered with active
		// (false), as every introspection is, and its 4xx status.
		{"missing token", "application/json", `{"identity_provider":"idporten"}`, 400, `{"active":false,"error":"token is required"}`},
		{"token not a string", "application/json", `{"identity_provider":"idporten","token":5}`, 400, `{"active":false,"error":"token must be a string"}`},
		{"not JSON", "application/json", `{"identity_provider":`, 400, `{"active":false,"error":"request body is not a JSON object"}`},
		{"two objects", "application/json", jsonBody("idporten", token) + "{}", 400, `~"active":false`},
		{"JSON array", "application/json", `[]`, 400, `~"active":false`},
		{"bad form", "application/x-www-form-urlencoded", "token=%zz", 400, `{"active":false,"error":"request body is not valid form encoding"}`},
		{"token twice", "application/x-www-form-urlencoded", form("idporten", token) + "&token=x", 400, `~given more than once`},
		{"text/plain", "text/plain", jsonBody("idporten", token), 415, `~Content-Type`},
		{"no content type", "", jsonBody("idporten", token), 415, `~Content-Type`},
		{"bad content type", "application/json; =", jsonBody("idporten", token), 415, `~Content-Type`},
		{"too large", "application/json", `{"identity_provider":"idporten","token":"` + strings.Repeat("a", 65<<10) + `"}`, 413, `~64 KiB`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, body := post(tt.ct, tt.body)
			if st != tt.status {
				t.Fatalf("status %d, want %d (%s)", st, tt.status, body)
			}
			if sub, ok := strings.CutPrefix(tt.want, "~"); ok {
				if !strings.Contains(body, sub) {
					t.Fatalf("body %s lacks %s", body, sub)
				}
			} else if body != tt.want {
				t.Fatalf("body %s, want %s", body, tt.want)
			}
		})
	}

	// Active answers carry every claim verbatim, and active is vakt's own.
	_, body := post("application/json", jsonBody("idporten", token))
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if got["active"] != true || got["iss"] != e.idp.URL || got["aud"] != "my-api" || got["jti"] != claims["jti"] {
		t.Fatalf("answer %s", body)
	}
	// The cached claims were not changed by the answer: a second call agrees.
	_, again := post("application/json", jsonBody("idporten", token))
	if again != body {
		t.Fatalf("second answer differs:\n%s\n%s", body, again)
	}

	resp, err := testHTTP.Get(e.http.URL + "/api/v1/introspect")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	resp, err = testHTTP.Get(e.http.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
}

func TestServeStopsGracefully(t *testing.T) {
	e := newEnv(t)
	ls, err := Listen("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, AuthorityServices(e.cur, e.metrics, quiet), ls) }()
	url := "http://" + ls.HTTP.Addr().String() + "/healthz"
	// The listener is open before Serve runs: the request waits in its
	// accept queue until Serve answers it.
	resp, err := testHTTP.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(shutdownGrace + 5*time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := testHTTP.Get(url); err == nil {
		t.Fatal("still serving after shutdown")
	}
}

func TestStartsWithAProviderDown(t *testing.T) {
	up := idptest.NewIssuer(t, "ES256")
	down := idptest.NewIssuer(t, "ES256")
	down.SetDown(true)
	yaml := `issuer: http://127.0.0.1:8080
cluster: dev-gcp
identityProviders:
  - name: up
    issuer: ` + up.URL + `
    jwksUri: ` + up.JWKSURI() + `
  - name: down
    issuer: ` + down.URL + `
    wellKnownUrl: ` + down.WellKnownURL() + `
  - name: nowhere
    issuer: https://nowhere.example/
    jwksUri: http://127.0.0.1:1/jwks
`
	rt := testRuntime(t, yaml) // vakt must start with providers down
	ctx := context.Background()
	now := time.Now()
	for _, tt := range []struct {
		provider, token, want string
	}{
		// An outage is said in fixed words: the cause (URLs, addresses) is
		// for the log only.
		{"down", down.Token(down.Claims(now, "x")), "identity provider is unavailable"},
		{"nowhere", down.Token(with(down.Claims(now, "x"), "iss", "https://nowhere.example/")), "identity provider is unavailable"},
		{"up", up.Token(up.Claims(now, "x")), ""},
	} {
		in := &introspector{validator: func() *authz.Validator { return rt.Validator }, log: quiet}
		res, bad := in.introspect(ctx, tt.provider, tt.token)
		if bad != "" {
			t.Fatal(bad)
		}
		if tt.want == "" {
			if !res.Active {
				t.Fatalf("%s: %s", tt.provider, res.Error)
			}
			continue
		}
		if res.Active || res.Error != tt.want || res.Reason != authz.ReasonKeysUnavailable {
			t.Fatalf("%s: active %v, error %q (%v), want %q", tt.provider, res.Active, res.Error, res.Reason, tt.want)
		}
	}
}

// testRuntime builds the runtime of a configuration as vakt serve does,
// signing with a new ES256 key; its key sets stop fetching when the test
// ends.
func testRuntime(t testing.TB, yaml string) *Runtime {
	t.Helper()
	cfg, err := config.Load([]byte(yaml), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, err := exchange.GenerateSigningKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := exchange.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rt, err := NewRuntime(ctx, cfg, Options{Logger: quiet, Signer: signer, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{})})
	if err != nil {
		t.Fatal(err)
	}
	return rt
}
