package agent

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/idptest"
)

// recorder is a token endpoint that records what it receives.
type recorder struct {
	mu      sync.Mutex
	forms   []map[string]string
	calls   atomic.Int64
	respond func(n int64, w http.ResponseWriter, audience string)
	srv     *httptest.Server
}

func newRecorder(t *testing.T, respond func(n int64, w http.ResponseWriter, audience string)) *recorder {
	r := &recorder{respond: respond}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := r.calls.Add(1)
		if err := req.ParseForm(); err != nil {
			t.Errorf("form: %v", err)
		}
		f := map[string]string{"content-type": req.Header.Get("Content-Type")}
		for k, v := range req.PostForm {
			f[k] = strings.Join(v, ",")
		}
		r.mu.Lock()
		r.forms = append(r.forms, f)
		r.mu.Unlock()
		r.respond(n, w, req.PostForm.Get("audience"))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func okToken(expiresIn int) func(int64, http.ResponseWriter, string) {
	return func(n int64, w http.ResponseWriter, aud string) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"token-%d-for-%s","issued_token_type":"%s","token_type":"Bearer","expires_in":%d}`, n, aud, exchange.TokenTypeAccessToken, expiresIn)
	}
}

func newTestAgent(t *testing.T, endpoint string, clock *idptest.Clock, cacheSize int) (*Agent, *exchange.SigningKey) {
	key, err := exchange.GenerateSigningKey("RS256")
	if err != nil {
		t.Fatal(err)
	}
	up := &Upstream{
		Endpoint:  endpoint,
		Assertion: &AssertionBuilder{ClientID: "dev-gcp:team-a:app-1", TokenEndpoint: endpoint, Key: key, Now: clock.Now},
		Client:    NewHTTPClient(), Retries: 2, Backoff: time.Millisecond, Timeout: 10 * time.Second,
	}
	return New(Config{Upstream: up, CacheSize: cacheSize, Now: clock.Now}), key
}

func decodeSegment(t *testing.T, seg string) map[string]any {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAgentRequestAndRetries(t *testing.T) {
	rec := newRecorder(t, func(n int64, w http.ResponseWriter, aud string) {
		if n == 1 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		okToken(900)(n, w, aud)
	})
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	agent, key := newTestAgent(t, rec.srv.URL+"/token", clock, 0)
	res, err := agent.Exchange(context.Background(), "user-token", "dev-gcp:team-b:app-b", false)
	if err != nil {
		t.Fatal(err)
	}
	if res.AccessToken != "token-2-for-dev-gcp:team-b:app-b" || res.ExpiresIn != 900 || res.TokenType != "Bearer" {
		t.Fatalf("response %+v", res)
	}
	if len(rec.forms) != 2 {
		t.Fatalf("%d attempts, want 2 (one retry after a 503)", len(rec.forms))
	}
	var jtis []string
	for _, f := range rec.forms {
		want := map[string]string{
			"content-type":          "application/x-www-form-urlencoded",
			"grant_type":            exchange.GrantTypeTokenExchange,
			"client_assertion_type": exchange.ClientAssertionTypeJWT,
			"subject_token_type":    exchange.TokenTypeJWT,
			"subject_token":         "user-token",
			"audience":              "dev-gcp:team-b:app-b",
		}
		for k, v := range want {
			if f[k] != v {
				t.Errorf("%s = %q, want %q", k, f[k], v)
			}
		}
		if len(f) != len(want)+1 {
			t.Errorf("unexpected fields: %v", f)
		}
		parts := strings.Split(f["client_assertion"], ".")
		h, c := decodeSegment(t, parts[0]), decodeSegment(t, parts[1])
		if h["kid"] != key.ID || h["typ"] != "JWT" || h["alg"] != "RS256" || len(h) != 3 {
			t.Errorf("assertion header %v", h)
		}
		now := float64(clock.Now().Unix())
		if c["iss"] != "dev-gcp:team-a:app-1" || c["sub"] != c["iss"] || c["aud"] != rec.srv.URL+"/token" ||
			c["iat"] != now || c["nbf"] != now || c["exp"] != now+30 || c["jti"] == "" {
			t.Errorf("assertion claims %v", c)
		}
		jtis = append(jtis, c["jti"].(string))
	}
	if jtis[0] == jtis[1] {
		t.Fatal("a retry reused the jti")
	}
}

func TestAgentUpstreamErrors(t *testing.T) {
	rec := newRecorder(t, func(n int64, w http.ResponseWriter, aud string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":"invalid_target","error_description":"token exchange audience x is invalid"}`)
	})
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	agent, _ := newTestAgent(t, rec.srv.URL, clock, 0)
	for range 2 {
		_, err := agent.Exchange(context.Background(), "user-token", "x", false)
		var e *exchange.Error
		if !errors.As(err, &e) || e.Reason() != authz.ReasonUpstreamRefused || e.UpstreamCode != "invalid_target" || e.Description() != "token exchange audience x is invalid" {
			t.Fatalf("upstream error passed on as %v", err)
		}
	}
	// A 4xx is not retried, and errors are not cached: two calls, two requests.
	if n := rec.calls.Load(); n != 2 {
		t.Fatalf("%d upstream calls, want 2", n)
	}

	// An upstream that cannot be reached: temporarily_unavailable after retries.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	down, _ := newTestAgent(t, "http://"+addr+"/token", clock, 0)
	_, err := down.Exchange(context.Background(), "user-token", "x", false)
	var e *exchange.Error
	if !errors.As(err, &e) || e.Reason() != authz.ReasonUpstreamUnavailable || !e.Reason().Outage() {
		t.Fatalf("upstream down: %v", err)
	}
}

func TestAgentCache(t *testing.T) {
	rec := newRecorder(t, okToken(900))
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	agent, _ := newTestAgent(t, rec.srv.URL, clock, 0)
	ctx := context.Background()
	get := func(sub, aud string, skip bool) *exchange.Response {
		t.Helper()
		res, err := agent.Exchange(ctx, sub, aud, skip)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	first := get("u1", "a", false)
	clock.Advance(100 * time.Second)
	hit := get("u1", "a", false)
	if hit.AccessToken != first.AccessToken || hit.ExpiresIn != 800 || rec.calls.Load() != 1 {
		t.Fatalf("hit %+v after %d calls", hit, rec.calls.Load())
	}
	// Different audiences or subject tokens never share an entry.
	if get("u1", "b", false).AccessToken == first.AccessToken || get("u2", "a", false).AccessToken == first.AccessToken {
		t.Fatal("entries shared")
	}
	if rec.calls.Load() != 3 {
		t.Fatalf("%d calls, want 3", rec.calls.Load())
	}
	// Skip-cache asks upstream and refreshes the entry.
	fresh := get("u1", "a", true)
	if fresh.AccessToken == first.AccessToken || get("u1", "a", false).AccessToken != fresh.AccessToken {
		t.Fatal("skip_cache did not refresh")
	}
	// The safety margin: 900 s tokens are handed out for 780 s.
	calls := rec.calls.Load()
	clock.Advance(779 * time.Second)
	get("u1", "a", false)
	if rec.calls.Load() != calls {
		t.Fatal("miss within the lifetime less the margin")
	}
	clock.Advance(2 * time.Second)
	get("u1", "a", false)
	if rec.calls.Load() != calls+1 {
		t.Fatal("hit after the lifetime less the margin")
	}
}

func TestAgentShortLivedTokens(t *testing.T) {
	rec := newRecorder(t, okToken(60))
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	agent, _ := newTestAgent(t, rec.srv.URL, clock, 0)
	ctx := context.Background()
	agent.Exchange(ctx, "u", "a", false)
	clock.Advance(29 * time.Second)
	if res, _ := agent.Exchange(ctx, "u", "a", false); res.ExpiresIn != 31 || rec.calls.Load() != 1 {
		t.Fatalf("within half the lifetime: %+v, %d calls", res, rec.calls.Load())
	}
	clock.Advance(time.Second)
	agent.Exchange(ctx, "u", "a", false)
	if rec.calls.Load() != 2 {
		t.Fatal("a 60 s token was handed out past half its lifetime")
	}
}

// 200 concurrent identical requests make one upstream call, all of them
// waiting on it: in a bubble of testing/synctest, whose Wait returns once
// every goroutine is blocked, the upstream (in memory) answers only when
// each request has joined the call in flight.
func TestAgentSingleFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var calls atomic.Int64
		upstream := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			n := calls.Add(1)
			<-release
			if err := r.ParseForm(); err != nil {
				return nil, err
			}
			w := httptest.NewRecorder()
			okToken(900)(n, w, r.PostForm.Get("audience"))
			return w.Result(), nil
		})
		clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
		agent, _ := newTestAgent(t, "https://tokens.example/token", clock, 0)
		agent.upstream.Client = &http.Client{Transport: upstream}
		var wg sync.WaitGroup
		tokens := make(chan string, 200)
		for range 200 {
			wg.Go(func() {
				res, err := agent.Exchange(context.Background(), "u", "a", false)
				if err != nil {
					t.Error(err)
					return
				}
				tokens <- res.AccessToken
			})
		}
		synctest.Wait() // one request at the upstream, 199 waiting on its call
		close(release)
		wg.Wait()
		close(tokens)
		if n := calls.Load(); n != 1 {
			t.Fatalf("200 concurrent identical requests made %d upstream calls", n)
		}
		for tok := range tokens {
			if tok != "token-1-for-a" {
				t.Fatalf("token %q", tok)
			}
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestAgentCacheBound(t *testing.T) {
	rec := newRecorder(t, okToken(900))
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	agent, _ := newTestAgent(t, rec.srv.URL, clock, 3)
	for i := range 10 {
		if _, err := agent.Exchange(context.Background(), "u", fmt.Sprint("aud-", i), false); err != nil {
			t.Fatal(err)
		}
	}
	if n := agent.Len(); n > 3 {
		t.Fatalf("%d entries, bound 3", n)
	}
}

// The cache key separates the token from the audience: a caller who moves
// the start of an audience into the token gets its own exchange, never
// another pair's cached token.
func TestAgentCacheKeySeparatesFields(t *testing.T) {
	rec := newRecorder(t, okToken(900))
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	agent, _ := newTestAgent(t, rec.srv.URL, clock, 0)
	first, err := agent.Exchange(context.Background(), "T", "dev-gcp:team-b:app-b", false)
	if err != nil {
		t.Fatal(err)
	}
	shifted, err := agent.Exchange(context.Background(), "Tdev-gcp:team-b:", "app-b", false)
	if err != nil {
		t.Fatal(err)
	}
	if shifted.AccessToken == first.AccessToken || rec.calls.Load() != 2 {
		t.Fatalf("the shifted pair got the cached token %q (%d upstream calls)", shifted.AccessToken, rec.calls.Load())
	}
}

// The cache is bounded in bytes too: large tokens make it hold fewer.
func TestAgentCacheBytes(t *testing.T) {
	big := strings.Repeat("t", 8000)
	rec := newRecorder(t, func(n int64, w http.ResponseWriter, aud string) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"%s-%d","issued_token_type":"x","token_type":"Bearer","expires_in":900}`, big, n)
	})
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	key, _ := exchange.GenerateSigningKey("ES256")
	a := New(Config{Upstream: &Upstream{
		Endpoint: rec.srv.URL, Client: NewHTTPClient(), Timeout: 10 * time.Second,
		Assertion: &AssertionBuilder{ClientID: "dev:a:app-1", TokenEndpoint: rec.srv.URL, Key: key, Now: clock.Now},
	}, CacheBytes: 100 << 10, Now: clock.Now})
	for i := range 50 {
		if _, err := a.Exchange(context.Background(), "u", fmt.Sprint("aud-", i), false); err != nil {
			t.Fatal(err)
		}
	}
	if st := a.cache.Stats(); st.Bytes > 100<<10 || st.Entries == 0 || st.Entries > 13 {
		t.Fatalf("%+v", st)
	}
}

func TestAgentEnv(t *testing.T) {
	key, _ := exchange.GenerateSigningKey("RS256")
	priv, _ := exchange.MarshalPrivateKeys([]*exchange.SigningKey{key})
	var set struct{ Keys []json.RawMessage }
	_ = json.Unmarshal(priv, &set)
	// The variables NAIS injects for TokenX and ID-porten (agent.Env
	// names its documentation), both well-known URL and jwks_uri included.
	env := map[string]string{
		"TOKEN_X_CLIENT_ID": "dev-gcp:team-a:app-1", "TOKEN_X_PRIVATE_JWK": string(set.Keys[0]),
		"TOKEN_X_TOKEN_ENDPOINT": "https://tokenx.example/token", "TOKEN_X_ISSUER": "https://tokenx.example",
		"TOKEN_X_JWKS_URI": "https://tokenx.example/jwks", "TOKEN_X_WELL_KNOWN_URL": "https://tokenx.example/.well-known/oauth-authorization-server",
		"IDPORTEN_ISSUER": "https://idporten.example/", "IDPORTEN_JWKS_URI": "https://idporten.example/jwks",
		"IDPORTEN_WELL_KNOWN_URL": "https://idporten.example/.well-known/openid-configuration", "IDPORTEN_AUDIENCE": "https://nav.no",
	}
	with := func(unset []string, set, value string) func(string) string {
		m := maps.Clone(env)
		for _, k := range unset {
			delete(m, k)
		}
		if set != "" {
			m[set] = value
		}
		return func(k string) string { return m[k] }
	}
	e, err := EnvFrom(with(nil, "", ""))
	if err != nil || e.Key.ID != key.ID || e.Key.Alg != "RS256" || e.JWKSURI != env["TOKEN_X_JWKS_URI"] || e.WellKnownURL != env["TOKEN_X_WELL_KNOWN_URL"] ||
		e.IDPorten == nil || *e.IDPorten != (IDPortenEnv{Issuer: "https://idporten.example/", JWKSURI: env["IDPORTEN_JWKS_URI"], WellKnownURL: env["IDPORTEN_WELL_KNOWN_URL"], Audience: "https://nav.no"}) {
		t.Fatalf("%+v %v", e, err)
	}
	// Either address alone is enough.
	for _, unset := range []string{"TOKEN_X_JWKS_URI", "TOKEN_X_WELL_KNOWN_URL", "IDPORTEN_JWKS_URI", "IDPORTEN_WELL_KNOWN_URL"} {
		if _, err := EnvFrom(with([]string{unset}, "", "")); err != nil {
			t.Errorf("without %s: %v", unset, err)
		}
	}
	for _, tt := range []struct {
		unset      []string
		set, value string
		want       string
	}{
		{unset: []string{"TOKEN_X_CLIENT_ID"}, want: "TOKEN_X_CLIENT_ID is not set"},
		{unset: []string{"TOKEN_X_PRIVATE_JWK"}, want: "TOKEN_X_PRIVATE_JWK is not set"},
		{set: "TOKEN_X_PRIVATE_JWK", value: `{"kty":"RSA","n":"secret-looking","e":"AQAB","d":"TOP-SECRET"}`, want: "TOKEN_X_PRIVATE_JWK is not one private JWK"},
		{set: "TOKEN_X_TOKEN_ENDPOINT", value: "tokenx/token", want: "TOKEN_X_TOKEN_ENDPOINT is not an absolute"},
		{set: "TOKEN_X_WELL_KNOWN_URL", value: "tokenx/.well-known", want: "TOKEN_X_WELL_KNOWN_URL is not an absolute"},
		{unset: []string{"TOKEN_X_JWKS_URI", "TOKEN_X_WELL_KNOWN_URL"}, want: "TOKEN_X_JWKS_URI or TOKEN_X_WELL_KNOWN_URL must be set"},
		{unset: []string{"IDPORTEN_JWKS_URI", "IDPORTEN_WELL_KNOWN_URL"}, want: "IDPORTEN_JWKS_URI or IDPORTEN_WELL_KNOWN_URL must be set"},
	} {
		_, err := EnvFrom(with(tt.unset, tt.set, tt.value))
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "TOP-SECRET") {
			t.Errorf("%v: %v", tt, err)
		}
	}
}

// An absurd expires_in is passed on, but cached 24 hours at most.
func TestAgentHugeLifetime(t *testing.T) {
	rec := newRecorder(t, func(n int64, w http.ResponseWriter, aud string) {
		fmt.Fprintf(w, `{"access_token":"t%d","token_type":"Bearer","expires_in":9223372036854775807}`, n)
	})
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	agent, _ := newTestAgent(t, rec.srv.URL, clock, 0)
	ctx := context.Background()
	if _, err := agent.Exchange(ctx, "u", "a", false); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	if res, err := agent.Exchange(ctx, "u", "a", false); err != nil || res.AccessToken != "t1" {
		t.Fatalf("within a day: %v %v", res, err)
	}
	clock.Advance(24 * time.Hour)
	if res, err := agent.Exchange(ctx, "u", "a", false); err != nil || res.AccessToken != "t2" {
		t.Fatalf("after a day the token must be fetched again: %v %v", res, err)
	}
}

// Exchanges under way upstream are bounded: callers who give up do not
// leave an unbounded number of fetches behind; past the bound a miss is
// temporarily_unavailable at once.
func TestAgentBoundsFetches(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		<-release
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"t","issued_token_type":"x","token_type":"Bearer","expires_in":900}`)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	a, _ := newTestAgent(t, srv.URL, clock, 0)
	var unavailable atomic.Int64
	var wg sync.WaitGroup
	for i := range maxFetches + 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			_, err := a.Exchange(ctx, fmt.Sprint("user-", i), "aud", false)
			var e *exchange.Error
			if errors.As(err, &e) && e.Reason() == authz.ReasonUpstreamUnavailable && errors.Is(err, errTooManyFetches) {
				unavailable.Add(1)
			}
		}()
	}
	wg.Wait()
	a.mu.Lock()
	n := len(a.inflight)
	a.mu.Unlock()
	if n > maxFetches || unavailable.Load() == 0 {
		t.Fatalf("%d fetches under way, %d refused at once", n, unavailable.Load())
	}
}
