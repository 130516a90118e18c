package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/server"
)

// The real-proxy tests: vakt in-process with its HTTP authorization face on
// a loopback port, an upstream that records what reaches it, and nginx or
// Caddy as a process, run on the committed example configuration with only
// its addresses substituted, so that the example is what is tested.

const (
	proxyApp      = "dev-gcp:team-b:app-b"
	proxyCaller   = "dev-gcp:team-a:app-1"
	proxyStranger = "dev-gcp:team-c:app-3" // registered; no rule of app-b names it
	proxyIssuer   = "http://127.0.0.1:8080"

	// The addresses the examples are written with.
	exampleVakt     = "127.0.0.1:9191"
	exampleUpstream = "127.0.0.1:8081"

	// caddyVersion is the Caddy .ci/run builds.
	caddyVersion = "v2.11.9"
)

// proxiesYAML is server/check_test.go's checkYAML as far as app-b goes
// (routes, inbound rule, forwardClaims pid -> x-vakt-pid), and app-b also
// accepts an identity provider whose keys never arrive: its tokens are an
// outage (503), never a refusal.
const proxiesYAML = `issuer: http://127.0.0.1:8080
cluster: dev-gcp
identityProviders:
  - name: auth0
    issuer: AUTH0
    jwksUri: AUTH0/jwks
applications:
  - name: app-1
    namespace: team-a
  - name: app-3
    namespace: team-c
  - name: app-b
    namespace: team-b
    hosts: [app-b.example.com]
    forwardClaims:
      - {claim: pid, header: x-vakt-pid}
    authentication:
      - {identityProvider: auth0, audience: https://app-b.example.com}
    routes:
      - {methods: [GET], path: /read, scopes: ["read:users"]}
      - {methods: [POST], path: /create, scopes: ["create:users"]}
      - {pathPrefix: /public/, public: true}
    accessPolicy:
      inbound:
        rules:
          - application: app-1
            namespace: team-a
`

// vaktServer is vakt serving, as `vakt serve` does, with listen.authz.
type vaktServer struct {
	t      *testing.T
	authz  string // host:port of the authz listener
	signer *exchange.Signer
	auth0  *idptest.Issuer
	stop   func() // ends Serve: vakt is down
}

func startVakt(t *testing.T) *vaktServer {
	t.Helper()
	v := &vaktServer{t: t, auth0: idptest.NewIssuer(t, "RS256")}
	v.auth0.SetDown(true)
	cfg, err := config.Load([]byte(strings.ReplaceAll(proxiesYAML, "AUTH0", v.auth0.URL)), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, err := exchange.GenerateSigningKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	if v.signer, err = exchange.NewSigner(key); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := server.NewRuntime(ctx, cfg, server.Options{Logger: log, Signer: v.signer, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{})})
	if err != nil {
		t.Fatal(err)
	}
	cur := &server.Current{}
	cur.Store(rt)
	ls, err := server.Listen("127.0.0.1:0", "127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.ListenAuthz("127.0.0.1:0"); err != nil {
		ls.Close()
		t.Fatal(err)
	}
	v.authz = ls.Authz.Addr().String()
	serveCtx, stopServe := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- server.Serve(serveCtx, server.AuthorityServices(cur, nil, log), ls) }()
	var once sync.Once
	v.stop = func() {
		once.Do(func() {
			stopServe()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(v.stop)
	return v
}

// token is a token vakt issued to client for app-b, with scope.
func (v *vaktServer) token(client, scope string) string {
	v.t.Helper()
	tok, err := v.signer.Sign("at+jwt", map[string]any{
		"iss": proxyIssuer, "sub": "user-1", "aud": proxyApp, "client_id": client, "scope": scope,
		"idp": "https://idporten.example/", "pid": "12345678901", "exp": time.Now().Add(10 * time.Minute).Unix(),
	})
	if err != nil {
		v.t.Fatal(err)
	}
	return tok
}

// auth0Token is a token of the provider that is down.
func (v *vaktServer) auth0Token() string {
	return v.auth0.Token(map[string]any{"iss": v.auth0.URL, "sub": "u", "aud": "https://app-b.example.com", "exp": time.Now().Add(10 * time.Minute).Unix()})
}

// answer is what vakt itself answers the request through its face, asked
// as nginx asks (X-Original-*) or as Caddy and Traefik ask (X-Forwarded-*).
func (v *vaktServer) answer(nginxStyle bool, method, target, authorization string) (*http.Response, []byte) {
	v.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+v.authz+server.AuthzPathPrefix+"/"+proxyApp, nil)
	if nginxStyle {
		req.Header.Set("X-Original-Method", method)
		req.Header.Set("X-Original-URI", target)
	} else {
		req.Header.Set("X-Forwarded-Method", method)
		req.Header.Set("X-Forwarded-Uri", target)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		v.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// upstream is app-b: it records every request, found again by the
// X-Test-Case header each test request carries, and echoes its headers.
type upstream struct {
	addr string
	mu   sync.Mutex
	got  map[string]*received
}

type received struct {
	Method string      `json:"method"`
	URI    string      `json:"uri"`
	Header http.Header `json:"headers"`
}

func startUpstream(t *testing.T) *upstream {
	u := &upstream{got: map[string]*received{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &received{Method: r.Method, URI: r.RequestURI, Header: r.Header.Clone()}
		u.mu.Lock()
		u.got[r.Header.Get("X-Test-Case")] = rec
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rec)
	}))
	t.Cleanup(srv.Close)
	u.addr = srv.Listener.Addr().String()
	return u
}

func (u *upstream) received(testCase string) *received {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.got[testCase]
}

// freePort is a loopback port nothing listens on (for a process to bind).
func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// substitute returns text with each old string replaced, failing when one
// is missing: an example that changed shape must not be tested half
// substituted.
func substitute(t *testing.T, text string, oldNew ...string) string {
	t.Helper()
	for i := 0; i < len(oldNew); i += 2 {
		if !strings.Contains(text, oldNew[i]) {
			t.Fatalf("the example no longer contains %q", oldNew[i])
		}
		text = strings.ReplaceAll(text, oldNew[i], oldNew[i+1])
	}
	return text
}

// missing skips the test, or in CI (CI set: .ci/run installs both proxies)
// fails it.
func missing(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg + "; .ci/run installs it")
	}
	t.Skip(msg + "; skipping the real-proxy test")
}

// runProxy starts a proxy process and waits until addr accepts
// connections. It is stopped (SIGTERM, then SIGKILL) when the test ends.
func runProxy(t *testing.T, addr string, env []string, bin string, args ...string) {
	t.Helper()
	var out lockedBuffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(bin), out.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("%s exited (%v):\n%s", bin, err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not accept connections on %s:\n%s", bin, addr, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// rawRequest sends a request exactly as written, header names as given
// (x_vakt_subject stays x_vakt_subject) and the target undecoded and
// uncleaned, and reads the answer.
func rawRequest(t *testing.T, addr, method, target string, headers [][2]string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: app-b.localhost\r\nConnection: close\r\n", method, target)
	if method == http.MethodPost {
		b.WriteString("Content-Length: 0\r\n")
	}
	for _, h := range headers {
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// proxyUnderTest is a running proxy and what differs between proxies.
type proxyUnderTest struct {
	name string
	addr string
	// nginxStyle: it asks vakt with X-Original-* (and so gets 403 with
	// X-Vakt-Status for vakt's 400).
	nginxStyle bool
	// exactBody: the client gets vakt's refusal body as vakt wrote it
	// (nginx rebuilds it from the challenge).
	exactBody bool
	// stripsByPrefix: a client's x-vakt-* header vakt never sets is removed
	// too (nginx can remove named headers only).
	stripsByPrefix bool
}

// spoofsIdentity reports whether a header name could reach an application
// as one of vakt's: x-vakt-* in any case, '_' or '.' for '-' (CGI, WSGI and
// PHP fold both into '_').
func spoofsIdentity(name string) bool {
	return strings.HasPrefix(strings.NewReplacer("_", "-", ".", "-").Replace(strings.ToLower(name)), authz.IdentityHeaderPrefix)
}

// forged are identity headers a client sends of its own: every one vakt
// sets (in two spellings, one twice), the forwardClaims header, and the
// underscore and dot forms CGI, WSGI and PHP read alike.
var forged = [][2]string{
	{"X-Vakt-Subject", "admin"},
	{"X-Vakt-Subject", "root"},
	{"x-vakt-client-id", proxyCaller},
	{"X-Vakt-Identity-Provider", "https://evil.example/"},
	{"X-VAKT-SCOPE", "admin:all"},
	{"X-Vakt-Pid", "00000000000"},
	{"x_vakt_subject", "admin"},
	{"X_Vakt_Scope", "admin:all"},
	{"x-vakt_client-id", proxyCaller},
	{"x.vakt.subject", "admin"},
}

// testThroughProxy runs the shared cases through p, vakt v in front of
// upstream u; last, it stops vakt.
func testThroughProxy(t *testing.T, p proxyUnderTest, v *vaktServer, u *upstream) {
	read := "Bearer " + v.token(proxyCaller, "read:users")
	caseNo := 0
	do := func(t *testing.T, method, target string, headers ...[2]string) (*http.Response, []byte, *received) {
		t.Helper()
		caseNo++
		id := fmt.Sprintf("%s-%d", p.name, caseNo)
		resp, body := rawRequest(t, p.addr, method, target, append([][2]string{{"X-Test-Case", id}}, headers...))
		// The upstream has answered by the time the proxy does.
		return resp, body, u.received(id)
	}
	auth := func(value string) [2]string { return [2]string{"Authorization", value} }

	// refused checks a refusal: the status vakt answered (through the
	// proxy's convention), never the upstream, vakt's challenge and its
	// error in the body.
	refused := func(t *testing.T, resp *http.Response, body []byte, got *received, method, target, authorization string) {
		t.Helper()
		if got != nil {
			t.Fatalf("the upstream was reached: %s %s", got.Method, got.URI)
		}
		vresp, vbody := v.answer(p.nginxStyle, method, target, authorization)
		if resp.StatusCode != vresp.StatusCode {
			t.Fatalf("status %d, vakt answered %d (body %s)", resp.StatusCode, vresp.StatusCode, body)
		}
		if g, w := resp.Header.Values("WWW-Authenticate"), vresp.Header.Values("WWW-Authenticate"); !slices.Equal(g, w) {
			t.Errorf("WWW-Authenticate %q, vakt's %q", g, w)
		}
		if g, w := resp.Header.Get("X-Vakt-Status"), vresp.Header.Get("X-Vakt-Status"); g != w {
			t.Errorf("X-Vakt-Status %q, vakt's %q", g, w)
		}
		if g := resp.Header.Get("Cache-Control"); g != "no-store" {
			t.Errorf("Cache-Control %q", g)
		}
		if p.exactBody {
			if !bytes.Equal(bytes.TrimSpace(body), bytes.TrimSpace(vbody)) {
				t.Errorf("body %s, vakt's %s", body, vbody)
			}
			return
		}
		var gotBody, vaktBody map[string]string
		if err := json.Unmarshal(body, &gotBody); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		if err := json.Unmarshal(vbody, &vaktBody); err != nil {
			t.Fatal(err)
		}
		// nginx rebuilds the body from vakt's challenge: vakt's error and
		// error_description, or its scope, as they are; with no error code
		// in the challenge, the status's generic word.
		if strings.Contains(vresp.Header.Get("WWW-Authenticate"), "error=") {
			for k, g := range gotBody {
				if vaktBody[k] != g {
					t.Errorf("body %s, vakt's %s", body, vbody)
				}
			}
		} else if g, w := gotBody["error"], map[int]string{401: "unauthorized", 403: "forbidden"}[resp.StatusCode]; g != w || len(gotBody) != 1 {
			t.Errorf("body %s, want {\"error\":%q}", body, w)
		}
		if gotBody["error"] == "" {
			t.Errorf("body %s has no error", body)
		}
	}

	t.Run("allowed: the identity headers reach the upstream, a client's never", func(t *testing.T) {
		resp, body, got := do(t, "GET", "/read?id=1", append([][2]string{auth(read)}, forged...)...)
		if resp.StatusCode != http.StatusOK || got == nil {
			t.Fatalf("%d, upstream reached: %v (%s)", resp.StatusCode, got != nil, body)
		}
		if got.Method != "GET" || got.URI != "/read?id=1" {
			t.Errorf("the upstream got %s %s", got.Method, got.URI)
		}
		want := map[string]string{
			authz.HeaderSubject:          "user-1",
			authz.HeaderClientID:         proxyCaller,
			authz.HeaderIdentityProvider: "https://idporten.example/",
			authz.HeaderScope:            "read:users",
			"x-vakt-pid":                 "12345678901",
		}
		for name, values := range got.Header {
			if !spoofsIdentity(name) {
				continue
			}
			w, ok := want[strings.ToLower(name)]
			if !ok || !slices.Equal(values, []string{w}) {
				t.Errorf("the upstream got %s: %q", name, values)
			}
		}
		for name, w := range want {
			if g := got.Header.Values(name); !slices.Equal(g, []string{w}) {
				t.Errorf("the upstream got %s: %q, want %q", name, g, w)
			}
		}
		// The policy of every example: Authorization is forwarded.
		if g := got.Header.Get("Authorization"); g != read {
			t.Errorf("Authorization %q did not reach the upstream", g)
		}
		// The echo is what the upstream got.
		var echo received
		if err := json.Unmarshal(body, &echo); err != nil || echo.Header.Get(authz.HeaderSubject) != "user-1" {
			t.Errorf("echo %s (%v)", body, err)
		}
	})

	t.Run("a public route without a token passes, with no identity header", func(t *testing.T) {
		resp, body, got := do(t, "GET", "/public/%7Elogo.png?v=1", forged...)
		if resp.StatusCode != http.StatusOK || got == nil {
			t.Fatalf("%d, upstream reached: %v (%s)", resp.StatusCode, got != nil, body)
		}
		// The request URI as the client sent it, which is what vakt read.
		if got.URI != "/public/%7Elogo.png?v=1" {
			t.Errorf("the upstream got %s", got.URI)
		}
		for name, values := range got.Header {
			if spoofsIdentity(name) {
				t.Errorf("the upstream got %s: %q", name, values)
			}
		}
	})

	if p.stripsByPrefix {
		t.Run("an x-vakt-* header vakt never sets is removed too", func(t *testing.T) {
			_, _, got := do(t, "GET", "/read", auth(read), [2]string{"X-Vakt-Role", "admin"}, [2]string{"x_vakt_role", "admin"})
			if got == nil {
				t.Fatal("the upstream was not reached")
			}
			for name, values := range got.Header {
				if spoofsIdentity(name) && !authz.IsIdentityHeader(strings.ToLower(name)) && !strings.EqualFold(name, "x-vakt-pid") {
					t.Errorf("the upstream got %s: %q", name, values)
				}
			}
		})
	}

	t.Run("no token: 401 with vakt's challenge", func(t *testing.T) {
		resp, body, got := do(t, "GET", "/read", forged...)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%d (%s)", resp.StatusCode, body)
		}
		if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), `Bearer realm="`+proxyApp+`"`) {
			t.Errorf("WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
		}
		refused(t, resp, body, got, "GET", "/read", "")
	})

	t.Run("a malformed token: 401 invalid_token", func(t *testing.T) {
		resp, body, got := do(t, "GET", "/read", auth("Bearer a.b.c"))
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Fatalf("%d %q (%s)", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
		}
		refused(t, resp, body, got, "GET", "/read", "Bearer a.b.c")
	})

	t.Run("a scope missing: 403 insufficient_scope", func(t *testing.T) {
		resp, body, got := do(t, "POST", "/create", auth(read))
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
			t.Fatalf("%d %q (%s)", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
		}
		refused(t, resp, body, got, "POST", "/create", read)
	})

	t.Run("a caller no rule names: 403", func(t *testing.T) {
		stranger := "Bearer " + v.token(proxyStranger, "read:users")
		resp, body, got := do(t, "GET", "/read", auth(stranger))
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%d (%s)", resp.StatusCode, body)
		}
		refused(t, resp, body, got, "GET", "/read", stranger)
	})

	// The proxy's account of the request is the only one vakt gets: a
	// client's would choose the request vakt decides on, or (vakt refusing
	// two accounts) have it refused.
	t.Run("a client's X-Original-* and X-Forwarded-* do not choose the request vakt decides on", func(t *testing.T) {
		resp, body, got := do(t, "GET", "/read",
			[2]string{"X-Original-Method", "GET"}, [2]string{"X-Original-URI", "/public/x"},
			[2]string{"X-Original-URL", "http://app-b.localhost/public/x"},
			[2]string{"X-Forwarded-Method", "GET"}, [2]string{"X-Forwarded-Uri", "/public/x"})
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%d (%s)", resp.StatusCode, body)
		}
		refused(t, resp, body, got, "GET", "/read", "")
	})

	// Out of the public prefix by a path the proxy, vakt and the upstream
	// could read differently: refused as malformed (400; nginx: 403 with
	// X-Vakt-Status: 400).
	for _, target := range []string{"/public/..;/read", "/public%2F..%2Fread", "/public/%252e%252e/read"} {
		t.Run("a path read two ways is refused: "+target, func(t *testing.T) {
			resp, body, got := do(t, "GET", target)
			want, wantStatus := http.StatusBadRequest, ""
			if p.nginxStyle {
				want, wantStatus = http.StatusForbidden, "400"
			}
			if resp.StatusCode != want || resp.Header.Get("X-Vakt-Status") != wantStatus || got != nil {
				t.Fatalf("%d, X-Vakt-Status %q, upstream reached %v (%s)", resp.StatusCode, resp.Header.Get("X-Vakt-Status"), got != nil, body)
			}
			refused(t, resp, body, got, "GET", target, "")
		})
	}
	// Encoded dot segments are decoded and resolved by vakt (and nginx):
	// the request is for /read, and needs a token.
	t.Run("encoded dot segments are resolved: /public/%2e%2e/read is /read", func(t *testing.T) {
		resp, body, got := do(t, "GET", "/public/%2e%2e/read")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%d (%s)", resp.StatusCode, body)
		}
		refused(t, resp, body, got, "GET", "/public/%2e%2e/read", "")
	})

	t.Run("an outage (vakt answers 503): 503, never the upstream", func(t *testing.T) {
		resp, body, got := do(t, "GET", "/read", auth("Bearer "+v.auth0Token()))
		if resp.StatusCode != http.StatusServiceUnavailable || got != nil {
			t.Fatalf("%d, upstream reached: %v (%s)", resp.StatusCode, got != nil, body)
		}
	})

	t.Run("vakt down: 5xx, never the upstream", func(t *testing.T) {
		v.stop()
		for _, target := range []string{"/read", "/public/logo.png"} {
			resp, body, got := do(t, "GET", target, auth(read))
			if resp.StatusCode < 500 || got != nil {
				t.Errorf("%s: %d, upstream reached: %v (%s)", target, resp.StatusCode, got != nil, body)
			}
		}
	})
}

// nginxBinary finds nginx: on PATH, or where Debian puts it.
func nginxBinary() (string, bool) {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, true
	}
	for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

func TestNginx(t *testing.T) {
	t.Parallel()
	bin, ok := nginxBinary()
	if !ok {
		missing(t, "nginx is not installed (Debian: apt-get install nginx-light)")
	}
	example, err := os.ReadFile("nginx/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	v := startVakt(t)
	u := startUpstream(t)
	port := freePort(t)
	conf := substitute(t, string(example),
		exampleVakt, v.authz,
		exampleUpstream, u.addr,
		"listen 127.0.0.1:8000;", "listen 127.0.0.1:"+port+";")
	dir := t.TempDir()
	// Workers of an nginx started as root run as nobody: let them in.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + port
	runProxy(t, addr, nil, bin, "-p", dir+"/", "-e", "stderr", "-c", filepath.Join(dir, "nginx.conf"))
	testThroughProxy(t, proxyUnderTest{name: "nginx", addr: addr, nginxStyle: true}, v, u)
}

// caddyBinary finds Caddy: $VAKT_CADDY, the cache .ci/run builds it into,
// or PATH.
func caddyBinary(t *testing.T) (string, bool) {
	if p := os.Getenv("VAKT_CADDY"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("VAKT_CADDY: %v", err)
		}
		return p, true
	}
	if cache, err := os.UserCacheDir(); err == nil {
		p := filepath.Join(cache, "vakt-ci", "caddy-"+caddyVersion, "caddy")
		if _, err := os.Stat(p); err == nil {
			return p, true
		}
	}
	if p, err := exec.LookPath("caddy"); err == nil {
		return p, true
	}
	return "", false
}

func TestCaddy(t *testing.T) {
	t.Parallel()
	bin, ok := caddyBinary(t)
	if !ok {
		missing(t, "caddy is not installed (go install github.com/caddyserver/caddy/v2/cmd/caddy@"+caddyVersion+
			" with GOBIN=${XDG_CACHE_HOME:-$HOME/.cache}/vakt-ci/caddy-"+caddyVersion+", or set VAKT_CADDY)")
	}
	example, err := os.ReadFile("caddy/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	v := startVakt(t)
	u := startUpstream(t)
	port := freePort(t)
	conf := substitute(t, string(example),
		exampleVakt, v.authz,
		exampleUpstream, u.addr,
		"http://:8000 {", "http://:"+port+" {")
	dir := t.TempDir()
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + port
	// Caddy's own state (none is written with this configuration) stays in
	// the test's directory.
	env := []string{"HOME=" + dir, "XDG_CONFIG_HOME=" + dir, "XDG_DATA_HOME=" + dir}
	runProxy(t, addr, env, bin, "run", "--adapter", "caddyfile", "--config", file)
	testThroughProxy(t, proxyUnderTest{name: "caddy", addr: addr, exactBody: true, stripsByPrefix: true}, v, u)
	// Caddy drops the headers Connection names after forward_auth set them,
	// and passes request trailers on: a client naming vakt's headers in
	// Connection, or announcing trailers, is refused.
	for _, h := range [][2]string{{"Connection", "X-Vakt-Subject"}, {"Connection", "x_vakt_client_id"}, {"Trailer", "X-Vakt-Subject"}} {
		if resp, body := rawRequest(t, addr, http.MethodGet, "/public/x", [][2]string{h}); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %s: %d %s", h[0], h[1], resp.StatusCode, body)
		}
	}
}

// The fields of Traefik v3.7's dynamic configuration (pkg/config/dynamic)
// the example uses, with Traefik's names: the file is decoded strictly, so
// a field Traefik does not have, or has elsewhere, fails the test. Traefik's
// own types cannot be imported (its module replaces a local directory) and
// its binary cannot be built here.
type traefikDynamic struct {
	HTTP struct {
		Routers map[string]struct {
			EntryPoints []string `yaml:"entryPoints"`
			Middlewares []string `yaml:"middlewares"`
			Service     string   `yaml:"service"`
			Rule        string   `yaml:"rule"`
			Priority    int      `yaml:"priority"`
		} `yaml:"routers"`
		Middlewares map[string]struct {
			Headers *struct {
				CustomRequestHeaders  map[string]string `yaml:"customRequestHeaders"`
				CustomResponseHeaders map[string]string `yaml:"customResponseHeaders"`
			} `yaml:"headers"`
			ForwardAuth *struct {
				Address                  string   `yaml:"address"`
				TrustForwardHeader       *bool    `yaml:"trustForwardHeader"`
				AuthResponseHeaders      []string `yaml:"authResponseHeaders"`
				AuthResponseHeadersRegex string   `yaml:"authResponseHeadersRegex"`
				AuthRequestHeaders       []string `yaml:"authRequestHeaders"`
				MaxResponseBodySize      *int64   `yaml:"maxResponseBodySize"`
				ForwardBody              bool     `yaml:"forwardBody"`
				PreserveRequestMethod    bool     `yaml:"preserveRequestMethod"`
			} `yaml:"forwardAuth"`
		} `yaml:"middlewares"`
		Services map[string]struct {
			LoadBalancer *struct {
				PassHostHeader *bool `yaml:"passHostHeader"`
				Servers        []struct {
					URL string `yaml:"url"`
				} `yaml:"servers"`
			} `yaml:"loadBalancer"`
		} `yaml:"services"`
	} `yaml:"http"`
}

// The fields of Traefik v3.7's static configuration (pkg/config/static)
// the example uses.
type traefikStatic struct {
	EntryPoints map[string]struct {
		Address string `yaml:"address"`
		HTTP    struct {
			AliasHeadersStrategy string `yaml:"aliasHeadersStrategy"`
			SanitizePath         *bool  `yaml:"sanitizePath"`
			EncodedCharacters    *struct {
				AllowEncodedSlash         *bool `yaml:"allowEncodedSlash"`
				AllowEncodedBackSlash     *bool `yaml:"allowEncodedBackSlash"`
				AllowEncodedNullCharacter *bool `yaml:"allowEncodedNullCharacter"`
			} `yaml:"encodedCharacters"`
		} `yaml:"http"`
	} `yaml:"entryPoints"`
	Providers struct {
		File *struct {
			Filename string `yaml:"filename"`
			Watch    bool   `yaml:"watch"`
		} `yaml:"file"`
	} `yaml:"providers"`
}

func decodeTraefik(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalWithOptions(data, v, yaml.Strict()); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// The Traefik example, checked for what the nginx and Caddy examples are
// run for: the application named in the path, X-Forwarded-* Traefik's own,
// no client header choosing the request or an identity, every identity
// header copied, refusals and outages never reaching app-b.
func TestTraefikConfig(t *testing.T) {
	var d traefikDynamic
	decodeTraefik(t, "traefik/dynamic.yaml", &d)
	var s traefikStatic
	decodeTraefik(t, "traefik/traefik.yaml", &s)

	router, ok := d.HTTP.Routers["app-b"]
	if !ok {
		t.Fatal("no router app-b")
	}
	var auth, strip string
	for i, name := range router.Middlewares {
		m, ok := d.HTTP.Middlewares[name]
		if !ok {
			t.Fatalf("router app-b names middleware %q, which is not defined", name)
		}
		switch {
		case m.ForwardAuth != nil && auth == "":
			auth = name
		case m.Headers != nil && auth == "":
			strip = name
		default:
			t.Errorf("middleware %d (%s): only a headers middleware, then forwardAuth", i, name)
		}
	}
	if auth == "" || strip == "" {
		t.Fatalf("router app-b: middlewares %v, want a headers middleware before forwardAuth", router.Middlewares)
	}
	svc, ok := d.HTTP.Services[router.Service]
	if !ok || svc.LoadBalancer == nil || len(svc.LoadBalancer.Servers) == 0 {
		t.Fatalf("router app-b: service %q has no servers", router.Service)
	}
	for _, ep := range router.EntryPoints {
		if _, ok := s.EntryPoints[ep]; !ok {
			t.Errorf("router app-b: entry point %q is not in traefik.yaml", ep)
		}
	}

	fa := d.HTTP.Middlewares[auth].ForwardAuth
	prefix := "http://" + exampleVakt + server.AuthzPathPrefix + "/"
	app, ok := strings.CutPrefix(fa.Address, prefix)
	if !ok {
		t.Fatalf("forwardAuth.address %q is not %s<application id>", fa.Address, prefix)
	}
	if app != proxyApp {
		t.Errorf("forwardAuth.address names %q, want %q", app, proxyApp)
	}
	if _, err := authz.ParseAppID(app); err != nil {
		t.Errorf("forwardAuth.address: %q: %v", app, err)
	}
	if fa.TrustForwardHeader == nil || *fa.TrustForwardHeader {
		t.Error("forwardAuth.trustForwardHeader must be false: Traefik sets X-Forwarded-Method, -Uri and -Host itself")
	}
	if fa.ForwardBody || fa.PreserveRequestMethod {
		t.Error("forwardAuth: forwardBody and preserveRequestMethod must stay off")
	}
	if fa.MaxResponseBodySize == nil || *fa.MaxResponseBodySize <= 0 {
		t.Error("forwardAuth.maxResponseBodySize must be set")
	}
	// vakt gets the token and nothing else a client sent: no X-Original-*,
	// which it would believe over Traefik's X-Forwarded-*.
	if !slices.ContainsFunc(fa.AuthRequestHeaders, func(h string) bool { return strings.EqualFold(h, "Authorization") }) {
		t.Error("forwardAuth.authRequestHeaders must pass Authorization")
	}
	for _, h := range fa.AuthRequestHeaders {
		if l := strings.ToLower(h); strings.HasPrefix(l, "x-original-") || strings.HasPrefix(l, "x-forwarded-") || spoofsIdentity(l) {
			t.Errorf("forwardAuth.authRequestHeaders passes a client's %s to vakt", h)
		}
	}
	for _, h := range []string{authz.HeaderSubject, authz.HeaderClientID, authz.HeaderIdentityProvider, authz.HeaderScope, "x-vakt-pid"} {
		if !slices.ContainsFunc(fa.AuthResponseHeaders, func(g string) bool { return strings.EqualFold(g, h) }) {
			t.Errorf("forwardAuth.authResponseHeaders lacks %s", h)
		}
	}
	// The pattern removes every client header an upstream reads as vakt's
	// (Traefik matches canonical names) and copies every header vakt sets.
	re, err := regexp.Compile(fa.AuthResponseHeadersRegex)
	if err != nil || fa.AuthResponseHeadersRegex == "" {
		t.Fatalf("forwardAuth.authResponseHeadersRegex %q: %v", fa.AuthResponseHeadersRegex, err)
	}
	for _, h := range []string{"x-vakt-subject", "x_vakt_subject", "X-Vakt-Role", "x-vakt_pid", "X_vakt-scope", "x-vakt-pid"} {
		if !re.MatchString(http.CanonicalHeaderKey(h)) {
			t.Errorf("authResponseHeadersRegex does not match %s", http.CanonicalHeaderKey(h))
		}
	}
	for _, h := range []string{"Authorization", "X-Vakt", "Www-Authenticate", "X-Vaktx-Subject"} {
		if re.MatchString(h) {
			t.Errorf("authResponseHeadersRegex matches %s", h)
		}
	}
	// The headers middleware removes (empty value) a client's X-Original-*
	// and identity headers before forwardAuth runs.
	removed := map[string]bool{}
	for name, value := range d.HTTP.Middlewares[strip].Headers.CustomRequestHeaders {
		if value != "" {
			t.Errorf("%s sets %s: %q", strip, name, value)
		}
		removed[http.CanonicalHeaderKey(name)] = true
	}
	for _, h := range []string{"X-Original-Method", "X-Original-Uri", "X-Original-Url", authz.HeaderSubject, authz.HeaderClientID, authz.HeaderIdentityProvider, authz.HeaderScope} {
		if !removed[http.CanonicalHeaderKey(h)] {
			t.Errorf("%s does not remove a client's %s", strip, h)
		}
	}

	// The entry point removes aliasing header names and refuses encoded
	// slashes; paths are cleaned before vakt and app-b see them.
	for name, ep := range s.EntryPoints {
		if ep.HTTP.AliasHeadersStrategy != "delete" && ep.HTTP.AliasHeadersStrategy != "reject" {
			t.Errorf("entry point %s: aliasHeadersStrategy %q, want delete or reject", name, ep.HTTP.AliasHeadersStrategy)
		}
		if ep.HTTP.SanitizePath != nil && !*ep.HTTP.SanitizePath {
			t.Errorf("entry point %s: sanitizePath off", name)
		}
		ec := ep.HTTP.EncodedCharacters
		if ec == nil || ec.AllowEncodedSlash == nil || *ec.AllowEncodedSlash || ec.AllowEncodedBackSlash == nil || *ec.AllowEncodedBackSlash {
			t.Errorf("entry point %s: encoded slashes and backslashes must be refused", name)
		}
		if !strings.HasPrefix(ep.Address, "127.0.0.1:") {
			t.Errorf("entry point %s: %q, the example listens on the loopback", name, ep.Address)
		}
	}
	if s.Providers.File == nil || s.Providers.File.Filename != "deploy/traefik/dynamic.yaml" {
		t.Error("providers.file.filename must name deploy/traefik/dynamic.yaml")
	}
}
