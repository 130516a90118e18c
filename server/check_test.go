package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/waittest"
)

// checkYAML is the Check tests' shared configuration (testdata/check.yaml)
// with app-b's host, and api, which takes auth0's tokens.
var checkYAML = testdata("check.yaml") + `    hosts: [app-b.example.com]
  - name: api
    namespace: team-b
    stripAuthorization: true
    authentication:
      - {identityProvider: auth0, audience: https://api.example.com}
`

// testdata is a file of testdata/, read when the test binary starts.
func testdata(name string) string {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		panic(err)
	}
	return string(b)
}

type cenv struct {
	t       *testing.T
	auth0   *idptest.Issuer
	signer  *exchange.Signer
	cur     *Current
	client  authv3.AuthorizationClient
	yaml    string
	metrics *Metrics
	logs    *lockedBuffer // the decision log, as JSON lines
	keySets *KeySets      // nil: each runtime fetches its own
}

// lockedBuffer is a log sink handlers may write to at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the JSON lines logged with msg, and forgets every line.
func (l *lockedBuffer) lines(t *testing.T, msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	l.b.Reset()
	return out
}

func newCheckEnv(t *testing.T) *cenv { return newCheckEnvTraced(t, nil) }

// newCheckEnvTraced is newCheckEnv with tracing (nil for none): of Check,
// and of key set fetches.
func newCheckEnvTraced(t *testing.T, tracing *Tracing) *cenv {
	e := &cenv{t: t, auth0: idptest.NewIssuer(t, "RS256")}
	if tracing != nil {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		e.keySets = NewKeySets(ctx, quiet, nil)
		e.keySets.TraceWith(tracing)
	}
	e.yaml = strings.ReplaceAll(checkYAML, "AUTH0", e.auth0.URL)
	key, _ := exchange.GenerateSigningKey("ES256")
	e.signer, _ = exchange.NewSigner(key)
	e.cur = &Current{}
	e.load(e.yaml)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.metrics = NewMetrics()
	e.logs = &lockedBuffer{}
	log := slog.New(slog.NewJSONHandler(e.logs, nil))
	gs, _ := AuthorityServices(e.cur, e.metrics, log).WithTracing(tracing).NewGRPCServer()
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), testDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.client = authv3.NewAuthorizationClient(conn)
	return e
}

// load puts a configuration in force, as a reload does.
func (e *cenv) load(yaml string) {
	cfg, err := config.Load([]byte(yaml), e.t.TempDir())
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	rt, err := NewRuntime(ctx, cfg, Options{Logger: quiet, Signer: e.signer, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{}), KeySets: e.keySets})
	if err != nil {
		e.t.Fatal(err)
	}
	e.cur.Store(rt)
}

// own is a token vakt issued: client → aud, with scope.
func (e *cenv) own(client, aud, scope string, extra ...any) string {
	k := e.signer.Keys()[0]
	claims := map[string]any{
		"iss": "http://127.0.0.1:8080", "sub": "user-1", "aud": aud, "client_id": client, "scope": scope,
		"idp": "https://idporten.example/", "pid": "12345678901", "exp": time.Now().Add(time.Minute).Unix(),
	}
	for i := 0; i < len(extra); i += 2 {
		claims[extra[i].(string)] = extra[i+1]
	}
	return idptest.Sign(e.t, &idptest.Key{ID: k.ID, Alg: k.Alg, Private: k.Private}, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "at+jwt"}, claims)
}

type creq struct {
	app, method, path, host, principal string
	headers                            map[string]string
}

func (e *cenv) check(r creq) *authv3.CheckResponse {
	e.t.Helper()
	if r.method == "" {
		r.method = "GET"
	}
	ext := map[string]string{}
	if r.app != "" {
		ext[ContextExtensionApp] = r.app
	}
	headers := map[string]string{":method": r.method, ":path": r.path}
	for k, v := range r.headers {
		headers[k] = v
	}
	res, err := e.client.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		ContextExtensions: ext,
		Destination:       &authv3.AttributeContext_Peer{Principal: r.principal},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: r.method, Path: r.path, Host: r.host, Headers: headers,
		}},
	}})
	if err != nil {
		e.t.Fatalf("Check: %v", err)
	}
	return res
}

func headerMap(hs []*corev3.HeaderValueOption) map[string]string {
	m := map[string]string{}
	for _, h := range hs {
		m[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return m
}

func TestCheck(t *testing.T) {
	e := newCheckEnv(t)
	now := time.Now()
	read := e.own(app1, appB, "read:users")
	bearer := func(tok string) map[string]string { return map[string]string{"authorization": "Bearer " + tok} }
	grpcReq := func(tok string) map[string]string {
		h := map[string]string{"content-type": "application/grpc"}
		if tok != "" {
			h["authorization"] = "Bearer " + tok
		}
		return h
	}
	auth0 := func(aud string) string {
		return e.auth0.Token(map[string]any{"iss": e.auth0.URL, "sub": "auth0|42", "aud": aud, "azp": "xYz123", "exp": now.Add(time.Hour).Unix(), "permissions": []string{"read:users"}})
	}
	tests := []struct {
		name   string
		req    creq
		status int    // 0: allowed
		want   string // a substring of WWW-Authenticate, or of the body
		grpc   string // grpc-status on a denial of a gRPC request
	}{
		{name: "allowed", req: creq{app: appB, path: "/read", headers: bearer(read)}},
		{name: "lower-case bearer", req: creq{app: appB, path: "/read", headers: map[string]string{"authorization": "bearer " + read}}},
		{name: "query string ignored", req: creq{app: appB, path: "/read?id=1&x=/create", headers: bearer(read)}},
		{name: "two Authorization values", req: creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + read + ",Bearer " + read}}, status: 400, want: `error="invalid_request"`},
		{name: "Basic credentials", req: creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Basic dXNlcjpwYXNz"}}, status: 401, want: `Bearer realm="dev-gcp:team-b:app-b"`},
		{name: "no token", req: creq{app: appB, path: "/read"}, status: 401, want: `Bearer realm="dev-gcp:team-b:app-b"`},
		{name: "expired token", req: creq{app: appB, path: "/read", headers: bearer(e.own(app1, appB, "read:users", "exp", now.Add(-time.Minute).Unix()))}, status: 401, want: `error="invalid_token", error_description="token is expired"`},
		{name: "garbage token", req: creq{app: appB, path: "/read", headers: bearer("abc")}, status: 401, want: `error="invalid_token"`},
		{name: "token for another application", req: creq{app: appB, path: "/read", headers: bearer(e.own(app1, "dev-gcp:team-x:other", "read:users"))}, status: 401, want: `error_description="token audience is invalid"`},
		{name: "caller not allowed", req: creq{app: appB, path: "/read", headers: bearer(e.own("dev-gcp:team-c:app-3", appB, "read:users"))}, status: 403, want: `"error":"access_denied"`},
		{name: "own token without client_id", req: creq{app: appB, path: "/read", headers: bearer(e.own("", appB, "read:users"))}, status: 403, want: `"error":"access_denied"`},
		{name: "missing scope", req: creq{app: appB, method: "POST", path: "/create", headers: bearer(read)}, status: 403, want: `error="insufficient_scope", scope="create:users"`},
		{name: "scope present", req: creq{app: appB, method: "POST", path: "/create", headers: bearer(e.own(app1, appB, "read:users create:users"))}},
		{name: "scope from scp array", req: creq{app: appB, method: "POST", path: "/create", headers: bearer(e.own(app1, appB, "", "scp", []string{"create:users"}))}},
		{name: "prefix route", req: creq{app: appB, method: "DELETE", path: "/delete/42", headers: bearer(e.own(app1, appB, "delete:users"))}},
		{name: "wrong method", req: creq{app: appB, method: "DELETE", path: "/read", headers: bearer(read)}, status: 403, want: `no route`},
		{name: "no route", req: creq{app: appB, path: "/admin", headers: bearer(read)}, status: 403, want: `no route`},
		{name: "public route, no token", req: creq{app: appB, path: "/public/logo.png"}},
		{name: "public route, garbage token", req: creq{app: appB, path: "/public/logo.png", headers: bearer("garbage")}},
		{name: "encoded slash", req: creq{app: appB, path: "/read/..%2Fdelete", headers: bearer(read)}, status: 400, want: `error="invalid_request"`},
		{name: "encoded backslash", req: creq{app: appB, path: "/read%5C..%5Cdelete", headers: bearer(read)}, status: 400, want: `invalid_request`},
		{name: "bad percent-encoding", req: creq{app: appB, path: "/read%zz", headers: bearer(read)}, status: 400, want: `invalid_request`},
		{name: "dot segments cannot borrow a rule", req: creq{app: appB, method: "DELETE", path: "/public/../delete/1"}, status: 401},
		{name: "gRPC allowed", req: creq{app: appB, method: "POST", path: "/pkg.Service/Method", headers: grpcReq(e.own(app1, appB, "svc:call"))}},
		{name: "gRPC without scope", req: creq{app: appB, method: "POST", path: "/pkg.Service/Method", headers: grpcReq(read)}, status: 403, grpc: "7"},
		{name: "gRPC without token", req: creq{app: appB, method: "POST", path: "/pkg.Service/Method", headers: grpcReq("")}, status: 401, grpc: "16"},
		{name: "gRPC bad path", req: creq{app: appB, method: "POST", path: "/pkg.Service%2FMethod", headers: grpcReq(read)}, status: 400, grpc: "3"},
		{name: "external provider token", req: creq{app: "dev-gcp:team-b:api", path: "/anything", headers: bearer(auth0("https://api.example.com"))}},
		{name: "external token, wrong audience", req: creq{app: "dev-gcp:team-b:api", path: "/x", headers: bearer(auth0("https://other.example.com"))}, status: 401, want: `token audience is invalid`},
		{name: "external token where not accepted", req: creq{app: appB, path: "/read", headers: bearer(auth0("https://api.example.com"))}, status: 401, want: `token issuer is not trusted`},
		{name: "own token on the external app", req: creq{app: "dev-gcp:team-b:api", path: "/x", headers: bearer(e.own(app1, "dev-gcp:team-b:api", ""))}, status: 403, want: `access_denied`},
		{name: "by SPIFFE principal", req: creq{principal: "spiffe://cluster.local/ns/team-b/sa/app-b", path: "/read", headers: bearer(read)}},
		{name: "by host", req: creq{host: "app-b.example.com:443", path: "/read", headers: bearer(read)}},
		{name: "by host, upper case", req: creq{host: "APP-B.example.com", path: "/read", headers: bearer(read)}},
		{name: "unknown application", req: creq{app: "dev-gcp:team-b:nobody", path: "/read", headers: bearer(read)}, status: 403, want: `no application`},
		{name: "no application at all", req: creq{host: "elsewhere.example.com", path: "/read", headers: bearer(read)}, status: 403, want: `no application`},
		{name: "bad principal falls back to host", req: creq{principal: "spiffe://x/ns/team-b", host: "app-b.example.com", path: "/read", headers: bearer(read)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := e.check(tt.req)
			if tt.status == 0 {
				if res.GetStatus().GetCode() != int32(codes.OK) || res.GetOkResponse() == nil {
					t.Fatalf("denied: %v", res.GetDeniedResponse())
				}
				return
			}
			d := res.GetDeniedResponse()
			if d == nil || int(d.GetStatus().GetCode()) != tt.status {
				t.Fatalf("got %v, want status %d", res, tt.status)
			}
			wantCode := map[int]codes.Code{400: codes.InvalidArgument, 401: codes.Unauthenticated, 403: codes.PermissionDenied}[tt.status]
			if res.GetStatus().GetCode() != int32(wantCode) {
				t.Fatalf("Check status %v", res.GetStatus())
			}
			h := headerMap(d.GetHeaders())
			if !strings.Contains(h["www-authenticate"], tt.want) && !strings.Contains(d.GetBody(), tt.want) {
				t.Fatalf("neither WWW-Authenticate %q nor body %q has %q", h["www-authenticate"], d.GetBody(), tt.want)
			}
			if tt.status == 401 && !strings.HasPrefix(h["www-authenticate"], "Bearer realm=") {
				t.Fatalf("401 without WWW-Authenticate: %v", h)
			}
			if h["grpc-status"] != tt.grpc {
				t.Fatalf("grpc-status %q, want %q", h["grpc-status"], tt.grpc)
			}
			if h["content-type"] != "application/json" || !strings.Contains(d.GetBody(), `"error_description"`) {
				t.Fatalf("body %q", d.GetBody())
			}
		})
	}
}

func TestCheckAllowedHeaders(t *testing.T) {
	e := newCheckEnv(t)
	spoofed := map[string]string{
		"authorization":  "Bearer " + e.own(app1, appB, "read:users"),
		"x-vakt-subject": "admin", "x-vakt-client-id": "dev-gcp:team-b:app-b", "x-vakt-pid": "0", "x-vakt-role": "root",
	}
	res := e.check(creq{app: appB, path: "/read", headers: spoofed})
	ok := res.GetOkResponse()
	if ok == nil {
		t.Fatalf("denied: %v", res)
	}
	set := headerMap(ok.GetHeaders())
	want := map[string]string{
		authz.HeaderSubject: "user-1", authz.HeaderClientID: app1, authz.HeaderIdentityProvider: "https://idporten.example/",
		authz.HeaderScope: "read:users", "x-vakt-pid": "12345678901",
	}
	for k, v := range want {
		if set[k] != v {
			t.Errorf("%s = %q, want %q", k, set[k], v)
		}
	}
	for _, h := range ok.GetHeaders() {
		if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("%s appends", h.GetHeader().GetKey())
		}
	}
	// The client's x-vakt-role is removed; headers vakt sets are never also
	// listed for removal (Envoy removes after setting).
	remove := ok.GetHeadersToRemove()
	if !slices.Contains(remove, "x-vakt-role") || len(remove) != 1 {
		t.Fatalf("headers to remove %v", remove)
	}
	meta := res.GetDynamicMetadata().GetFields()["vakt"].GetStructValue().GetFields()
	if meta["sub"].GetStringValue() != "user-1" || meta["client_id"].GetStringValue() != app1 {
		t.Fatalf("dynamic metadata %v", res.GetDynamicMetadata())
	}

	// Public routes remove spoofed identity headers too, and set none.
	res = e.check(creq{app: appB, path: "/public/x", headers: map[string]string{"x-vakt-subject": "admin"}})
	if ok := res.GetOkResponse(); ok == nil || len(ok.GetHeaders()) != 0 || !slices.Equal(ok.GetHeadersToRemove(), []string{"x-vakt-subject"}) {
		t.Fatalf("public route: %v", res)
	}

	// stripAuthorization.
	k := e.auth0.Key()
	tok := idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID}, map[string]any{"iss": e.auth0.URL, "sub": "s", "aud": "https://api.example.com", "exp": time.Now().Add(time.Hour).Unix()})
	res = e.check(creq{app: "dev-gcp:team-b:api", path: "/x", headers: map[string]string{"authorization": "Bearer " + tok}})
	if ok := res.GetOkResponse(); ok == nil || !slices.Contains(ok.GetHeadersToRemove(), "authorization") {
		t.Fatalf("stripAuthorization: %v", res)
	}
}

func TestCheckWithoutHTTPAttributes(t *testing.T) {
	e := newCheckEnv(t)
	for _, req := range []*authv3.CheckRequest{{}, {Attributes: &authv3.AttributeContext{}}, {Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}} {
		res, err := e.client.Check(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if res.GetDeniedResponse() == nil || res.GetStatus().GetCode() == int32(codes.OK) {
			t.Fatalf("%v: %v", req, res)
		}
	}
}

// A rule removed by a reload stops a token minted before it at once.
func TestCheckRuleRemovedByReload(t *testing.T) {
	e := newCheckEnv(t)
	tok := e.own(app1, appB, "read:users")
	if res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + tok}}); res.GetOkResponse() == nil {
		t.Fatalf("before: %v", res)
	}
	e.load(strings.Replace(e.yaml, "          - application: app-1\n            namespace: team-a\n", "", 1))
	res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + tok}})
	if d := res.GetDeniedResponse(); d == nil || d.GetStatus().GetCode() != 403 || !strings.Contains(d.GetBody(), "access_denied") {
		t.Fatalf("after the rule was removed: %v", res)
	}
}

// Every Check is counted by result and reason, and timed; every series
// exists from the start.
func TestCheckMetrics(t *testing.T) {
	e := newCheckEnv(t)
	scrape := func() string {
		srv := httptest.NewServer(e.metrics.Handler())
		defer srv.Close()
		resp, err := testHTTP.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	before := scrape()
	for _, want := range []string{
		`vakt_check_decisions_total{reason="none",result="allow"} 0`,
		`vakt_check_decisions_total{reason="caller_denied",result="deny"} 0`,
		`vakt_check_decisions_total{reason="keys_unavailable",result="error"} 0`,
		`vakt_check_decisions_total{reason="overloaded",result="error"} 0`,
		`vakt_check_duration_seconds_count 0`,
	} {
		if !strings.Contains(before, want) {
			t.Errorf("before any Check, metrics lack %s", want)
		}
	}
	auth := func(tok string) map[string]string { return map[string]string{"authorization": "Bearer " + tok} }
	again := e.own(app1, appB, "read:users")
	e.check(creq{app: appB, path: "/read", headers: auth(again)})
	e.check(creq{app: appB, path: "/read", headers: auth(again)})
	e.check(creq{app: appB, path: "/read"})
	e.check(creq{app: appB, path: "/read", headers: auth(e.own(app3, appB, "read:users"))})
	e.check(creq{app: appB, method: "POST", path: "/create", headers: auth(e.own(app1, appB, "read:users"))})
	e.check(creq{app: "dev-gcp:team-x:nobody", path: "/read"})
	after := scrape()
	for _, want := range []string{
		`vakt_check_decisions_total{reason="none",result="allow"} 2`,
		`vakt_check_decisions_total{reason="token_missing",result="deny"} 1`,
		`vakt_check_decisions_total{reason="caller_denied",result="deny"} 1`,
		`vakt_check_decisions_total{reason="scope_insufficient",result="deny"} 1`,
		`vakt_check_decisions_total{reason="application_unknown",result="deny"} 1`,
		`vakt_check_duration_seconds_count 6`,
		`vakt_check_duration_seconds_bucket{le="+Inf"} 6`,
		`vakt_check_duration_seconds_bucket{le="1e-06"}`,
		// The same token twice: one miss, then a hit; two more tokens miss.
		`vakt_token_cache_lookups_total{result="hit"} 1`,
		`vakt_token_cache_lookups_total{result="miss"} 3`,
		`vakt_token_cache_entries 3`,
		`vakt_token_cache_evictions_total 0`,
	} {
		if !strings.Contains(after, want) {
			t.Errorf("after six Checks, metrics lack %s", want)
		}
	}

	// Which vakt, and which configuration: a reload shows its own hash.
	first := e.cur.Load().Config.Hash
	e.load(e.yaml + "# changed\n")
	second := e.cur.Load().Config.Hash
	if first == second || len(first) != 16 {
		t.Fatalf("hashes %q and %q", first, second)
	}
	info := scrape()
	for _, want := range []string{
		`vakt_build_info{goversion="` + runtime.Version() + `",revision="unknown",version="(devel)"} 1`,
		`vakt_config_info{hash="` + second + `"} 1`,
		`vakt_config_load_timestamp_seconds `,
	} {
		if !strings.Contains(info, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(info, first) {
		t.Errorf("metrics still name the configuration replaced")
	}
}

func TestCheckBucket(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want int
	}{
		{0, 0}, {-time.Second, 0}, {time.Microsecond, 0},
		{time.Microsecond + 1, 1}, {4 * time.Microsecond, 1},
		{4*time.Microsecond + 1, 2}, {16 * time.Microsecond, 2},
		{17 * time.Microsecond, 3}, {time.Millisecond, 5}, {1024 * time.Microsecond, 5},
		{1025 * time.Microsecond, 6}, {1048576 * time.Microsecond, 10},
		{1048577 * time.Microsecond, checkBuckets}, {time.Hour, checkBuckets},
	} {
		if got := checkBucket(tt.d); got != tt.want {
			t.Errorf("checkBucket(%v) = %d, want %d", tt.d, got, tt.want)
		}
		// The bucket's bound holds d, and the one before does not.
		if b := checkBucket(tt.d); b < checkBuckets {
			bound := time.Microsecond << (2 * b)
			if tt.d > bound || (b > 0 && tt.d <= bound>>2) {
				t.Errorf("%v in bucket %d (le %v)", tt.d, b, bound)
			}
		}
	}
}

// One log line per Check refused (by default) or per Check (log.decisions:
// all), naming the rule or route that decided, and never the token or the
// subject.
func TestCheckDecisionLog(t *testing.T) {
	e := newCheckEnv(t)
	auth := func(tok string) map[string]string { return map[string]string{"authorization": "Bearer " + tok} }
	allowTok := e.own(app1, appB, "read:users", "jti", "jti-allow")
	e.check(creq{app: appB, path: "/read", headers: auth(allowTok)})
	if got := e.logs.lines(t, "check"); len(got) != 0 {
		t.Fatalf("an allow is not logged by default: %v", got)
	}
	e.check(creq{app: appB, method: "POST", path: "/create?secret=1", headers: map[string]string{
		"authorization": "Bearer " + e.own(app1, appB, "read:users", "jti", "jti-scope"),
		"x-request-id":  "req-1", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	}})
	e.check(creq{app: appB, path: "/read", headers: auth(e.own(app3, appB, "read:users"))})
	e.check(creq{app: appB, path: "/nowhere", headers: auth(allowTok)})
	got := e.logs.lines(t, "check")
	want := []map[string]any{
		{"decision": "deny", "reason": "scope_insufficient", "application": appB, "method": "POST", "path": "/create",
			"rule": "routes[1] POST /create needs create:users", "caller": app1, "jti": "jti-scope",
			"request_id": "req-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"decision": "deny", "reason": "caller_denied", "application": appB, "path": "/read", "caller": app3,
			"rule": "routes[0] GET /read needs read:users; accessPolicy.inbound.rules: no rule names " + app3},
		{"decision": "deny", "reason": "route_not_found", "path": "/nowhere", "rule": "no route matches"},
	}
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		for k, v := range w {
			if got[i][k] != v {
				t.Errorf("line %d: %s = %v, want %v", i, k, got[i][k], v)
			}
		}
		if got[i]["level"] != "INFO" {
			t.Errorf("line %d: level %v", i, got[i]["level"])
		}
	}
	if sub := got[0]["sub_hash"]; sub == nil || sub == "user-1" {
		t.Errorf("sub_hash %v", sub)
	}
	for _, line := range got {
		for k, v := range line {
			if s, ok := v.(string); ok && (strings.Contains(s, allowTok[:20]) || strings.Contains(s, "user-1") || strings.Contains(s, "12345678901") || strings.Contains(s, "secret")) {
				t.Errorf("%s carries a token, the subject, a pid or the query: %q", k, s)
			}
		}
	}

	// log.decisions: all logs allows too, with the rule that allowed them;
	// none logs nothing.
	e.load(e.yaml + "log:\n  decisions: all\n")
	e.check(creq{app: appB, path: "/read", headers: auth(allowTok)})
	if got := e.logs.lines(t, "check"); len(got) != 1 || got[0]["decision"] != "allow" || got[0]["rule"] != "routes[0] GET /read needs read:users; accessPolicy.inbound.rules: "+app1 {
		t.Fatalf("log.decisions all: %v", got)
	}
	e.load(e.yaml + "log:\n  decisions: none\n")
	e.check(creq{app: appB, path: "/read"})
	if got := e.logs.lines(t, "check"); len(got) != 0 {
		t.Fatalf("log.decisions none: %v", got)
	}
}

func TestTraceID(t *testing.T) {
	for in, want := range map[string]string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":       "4bf92f3577b34da6a3ce929d0e0e4736",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later": "4bf92f3577b34da6a3ce929d0e0e4736",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more":  "",
		"zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":       "",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":       "",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bX-01":       "",
		strings.Repeat("-", 1<<20):                                      "",
		"":                                                              "", "garbage": "",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01": "",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01": "",
		"00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01": "",
	} {
		if got := traceID(in); got != want {
			t.Errorf("traceID(%q) = %q, want %q", in, got, want)
		}
	}
}

// A header repeated a thousand times in header_map is joined in linear
// time and memory.
func TestHeaderJoinLinear(t *testing.T) {
	value := strings.Repeat("v", 1024)
	raw := make([]*corev3.HeaderValue, 1000)
	for i := range raw {
		raw[i] = &corev3.HeaderValue{Key: "traceparent", Value: value}
	}
	h := envoyHeaders{&authv3.AttributeContext_HttpRequest{Headers: map[string]string{"traceparent": "first"}, HeaderMap: &corev3.HeaderMap{Headers: raw}}}
	if got := h.get("traceparent"); len(got) != len("first")+1000*(1+len(value)) || !strings.HasPrefix(got, "first,vvv") {
		t.Fatalf("joined %d bytes", len(got))
	}
	limit := 40.0 // a thousand values joined: linear would be 1000 or more
	if raceEnabled {
		limit = 80
	}
	if n := testing.AllocsPerRun(10, func() { _ = h.get("traceparent") }); n > limit {
		t.Errorf("%v allocations to join 1000 values: not linear", n)
	}
	one := envoyHeaders{&authv3.AttributeContext_HttpRequest{HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "a", Value: "1"}, {Key: "b", Value: "2"}, {Key: "a", RawValue: []byte("3")}}}}}
	if got := one.get("a"); got != "1,3" {
		t.Errorf("get(a) = %q", got)
	}
}

// Each identity provider's key set reports its fetches, its last success
// and its size.
func TestKeySetMetrics(t *testing.T) {
	good, down := idptest.NewIssuer(t, "RS256"), idptest.NewIssuer(t, "RS256")
	down.SetDown(true)
	yaml := "issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nidentityProviders:\n" +
		"  - {name: good, issuer: " + good.URL + ", wellKnownUrl: " + good.WellKnownURL() + ", audience: [api]}\n" +
		"  - {name: down, issuer: " + down.URL + ", wellKnownUrl: " + down.WellKnownURL() + ", audience: [api]}\n"
	cur := &Current{}
	cur.Store(testRuntime(t, yaml))
	m := NewMetrics()
	m.watchConfig(cur)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	want := []string{
		`vakt_jwks_fetches_total{provider="good",result="ok"} 1`,
		`vakt_jwks_fetches_total{provider="good",result="error"} 0`,
		`vakt_jwks_fetches_total{provider="down",result="ok"} 0`,
		`vakt_jwks_fetches_total{provider="down",result="error"} `, // 1 or more: it retries
		`vakt_jwks_keys{provider="good"} 1`,
		`vakt_jwks_keys{provider="down"} 0`,
		`vakt_jwks_last_success_timestamp_seconds{provider="down"} 0`,
	}
	// The fetches, over the network, are counted as they end.
	waittest.UntilNil(t, 10*time.Second, "the key set fetches' metrics", func() error {
		resp, err := testHTTP.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var missing []string
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				missing = append(missing, w)
			}
		}
		for _, zero := range []string{
			`vakt_jwks_last_success_timestamp_seconds{provider="good"} 0`,
			`vakt_jwks_fetches_total{provider="down",result="error"} 0`,
		} {
			if strings.Contains(string(b), zero) {
				missing = append(missing, "not "+zero)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("metrics lack %v:\n%s", missing, b)
		}
		return nil
	})
}

// Every claim of a client assertion id is counted by its result, a store
// that is down included.
func TestReplayMetrics(t *testing.T) {
	m := NewMetrics()
	ctx := context.Background()
	exp := time.Now().Add(time.Minute)
	mem := m.CountReplay(exchange.NewMemoryReplay(exchange.MemoryReplayConfig{MaxPerClient: 1}))
	if fresh, err := mem.Claim(ctx, app1, "a", exp); !fresh || err != nil {
		t.Fatalf("first claim: %v %v", fresh, err)
	}
	if fresh, err := mem.Claim(ctx, app1, "a", exp); fresh || err != nil {
		t.Fatalf("replayed: %v %v", fresh, err)
	}
	if _, err := mem.Claim(ctx, app1, "b", exp); !errors.Is(err, exchange.ErrReplayQuota) {
		t.Fatalf("past the quota: %v", err)
	}
	// A Redis that is not there: nothing listens on the port.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	rr := exchange.NewRedisReplay(exchange.RedisOptions{Address: addr}, nil)
	defer rr.Close()
	if _, err := m.CountReplay(rr).Claim(ctx, app1, "c", exp); err == nil {
		t.Fatal("a claim in a Redis that is down succeeded")
	}
	for r, want := range map[string]float64{"ok": 1, "replayed": 1, "quota": 1, "error": 1} {
		if n := testutil.ToFloat64(m.replayClaims.WithLabelValues(r)); n != want {
			t.Errorf("%s: %v claims, want %v", r, n, want)
		}
	}
}
