package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vakt-dev/vakt/agent"
	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/idptest"
)

type agentEnv struct {
	authority *xenv
	http      string
	exchange  vaktv1.TokenExchangeServiceClient
	introspec vaktv1.IntrospectionServiceClient
}

// newAgentEnv runs vakt's authority and, beside app-1, vakt agent.
func newAgentEnv(t testing.TB) *agentEnv {
	x := newExchangeEnv(t, nil)
	k := x.keys[app1]
	env := &agent.Env{
		ClientID:      app1,
		Key:           &exchange.SigningKey{ID: k.ID, Alg: k.Alg, Private: k.Private},
		TokenEndpoint: x.issuer + "/token",
		Issuer:        x.issuer,
		WellKnownURL:  x.issuer + "/.well-known/oauth-authorization-server",
		IDPorten:      &agent.IDPortenEnv{Issuer: x.idp.URL, JWKSURI: x.idp.JWKSURI()},
	}
	return serveAgent(t, x, env, quiet)
}

// serveAgent runs vakt agent from env, beside the authority x.
func serveAgent(t testing.TB, x *xenv, env *agent.Env, log *slog.Logger) *agentEnv {
	t.Helper()
	return serveAgentTraced(t, x, env, log, nil)
}

// serveAgentTraced is serveAgent with tracing (nil for none).
func serveAgentTraced(t testing.TB, x *xenv, env *agent.Env, log *slog.Logger, tracing *Tracing) *agentEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rt, err := NewAgentRuntime(ctx, env, log, tracing)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := Listen("127.0.0.1:0", "127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, AgentServices(rt, NewMetrics(), log).WithTracing(tracing), ls) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpc.NewClient(ls.GRPC.Addr().String(), testDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &agentEnv{
		authority: x, http: "http://" + ls.HTTP.Addr().String(),
		exchange: vaktv1.NewTokenExchangeServiceClient(conn), introspec: vaktv1.NewIntrospectionServiceClient(conn),
	}
}

func (a *agentEnv) postJSON(t *testing.T, path string, body any) (int, map[string]any) {
	t.Helper()
	resp, err := testHTTP.Post(a.http+path, "application/json", bytes.NewReader([]byte(idptest.JSON(t, body))))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, m
}

func TestAgentAgainstVakt(t *testing.T) {
	a := newAgentEnv(t)
	x := a.authority
	ctx := context.Background()
	user := x.idp.Token(x.idp.Claims(time.Now(), ""))

	// gRPC: the caller sends only subject_token and audience.
	res, err := a.exchange.Exchange(ctx, &vaktv1.ExchangeRequest{SubjectToken: user, Audience: appB})
	if err != nil {
		t.Fatal(err)
	}
	if res.TokenType != "Bearer" || res.ExpiresIn != 900 {
		t.Fatalf("response %v", res)
	}
	// The issued token passes vakt's Check for app-b (whose policy allows app-1).
	check := newAuthorizationService(x.cur, quiet, nil, nil)
	cr, err := check.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		ContextExtensions: map[string]string{ContextExtensionApp: appB},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/anything", Headers: map[string]string{"authorization": "Bearer " + res.AccessToken},
		}},
	}})
	if err != nil || cr.GetOkResponse() == nil {
		t.Fatalf("Check of the agent's token: %v %v", cr, err)
	}
	if h := headerMap(cr.GetOkResponse().GetHeaders()); h[authz.HeaderClientID] != app1 || h[authz.HeaderSubject] != "user-1" {
		t.Fatalf("identity headers %v", h)
	}

	// HTTP, as NAIS applications call it: the second identical exchange is
	// served from the cache; skip_cache asks again.
	st, body := a.postJSON(t, "/api/v1/token/exchange", map[string]any{"identity_provider": "tokenx", "target": appB, "user_token": user})
	if st != 200 || body["access_token"] != res.AccessToken || body["token_type"] != "Bearer" {
		t.Fatalf("cached exchange: %d %v", st, body)
	}
	st, body = a.postJSON(t, "/api/v1/token/exchange", map[string]any{"identity_provider": "tokenx", "target": appB, "user_token": user, "skip_cache": true})
	if st != 200 || body["access_token"] == res.AccessToken {
		t.Fatalf("skip_cache: %d %v", st, body)
	}

	// Upstream errors come through with their OAuth code, over gRPC and HTTP.
	_, err = a.exchange.Exchange(ctx, &vaktv1.ExchangeRequest{SubjectToken: user, Audience: "dev-gcp:team-b:nobody"})
	st2 := status.Convert(err)
	var reason string
	for _, d := range st2.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			reason = info.Reason
		}
	}
	if reason != "invalid_target" || st2.Message() != "token exchange audience is invalid" {
		t.Fatalf("upstream refusal over gRPC: %v", err)
	}
	st, body = a.postJSON(t, "/api/v1/token/exchange", map[string]any{"identity_provider": "tokenx", "target": "dev-gcp:team-b:nobody", "user_token": user})
	if st != 400 || body["error"] != "invalid_target" {
		t.Fatalf("upstream refusal over HTTP: %d %v", st, body)
	}
	if _, err := a.exchange.Exchange(ctx, &vaktv1.ExchangeRequest{Audience: appB}); status.Code(err) == 0 {
		t.Fatal("exchange without a subject token succeeded")
	}

	// Introspection at the agent: a token issued to app-1, and ID-porten's.
	k := x.cur.Load().Signer.Keys()[0]
	toApp1 := idptest.Sign(t, &idptest.Key{ID: k.ID, Alg: k.Alg, Private: k.Private}, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID},
		map[string]any{"iss": x.issuer, "sub": "user-1", "aud": app1, "exp": time.Now().Add(time.Minute).Unix()})
	for _, tt := range []struct{ provider, token, errMsg string }{
		{"tokenx", toApp1, ""},
		{"tokenx", res.AccessToken, "token audience is invalid"}, // issued to app-b, not to this application
		{"idporten", user, ""},
	} {
		ir, err := a.introspec.Introspect(ctx, &vaktv1.IntrospectRequest{IdentityProvider: tt.provider, Token: tt.token})
		if err != nil || ir.Active != (tt.errMsg == "") || ir.Error != tt.errMsg {
			t.Fatalf("%s: %v %v", tt.provider, ir, err)
		}
	}
	st, body = a.postJSON(t, "/api/v1/introspect", map[string]any{"identity_provider": "idporten", "token": user})
	if st != 200 || body["active"] != true || body["sub"] != "user-1" {
		t.Fatalf("HTTP introspect at the agent: %d %v", st, body)
	}
}

// naisEnv is the environment NAIS injects into an application with TokenX
// and ID-porten, as its documentation lists it (see agent.Env): TokenX is
// the authority x, ID-porten x.idp, both on loopback, and each is given by
// its well-known URL and its jwks_uri both.
func naisEnv(t *testing.T, x *xenv, idportenAudience string) map[string]string {
	t.Helper()
	k := x.keys[app1]
	priv, err := exchange.MarshalPrivateKeys([]*exchange.SigningKey{{ID: k.ID, Alg: k.Alg, Private: k.Private}})
	if err != nil {
		t.Fatal(err)
	}
	var set struct{ Keys []json.RawMessage }
	if err := json.Unmarshal(priv, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("%s: %v", priv, err)
	}
	return map[string]string{
		"TOKEN_X_CLIENT_ID":       app1,
		"TOKEN_X_PRIVATE_JWK":     string(set.Keys[0]),
		"TOKEN_X_ISSUER":          x.issuer,
		"TOKEN_X_JWKS_URI":        x.issuer + "/jwks",
		"TOKEN_X_WELL_KNOWN_URL":  x.issuer + "/.well-known/oauth-authorization-server",
		"TOKEN_X_TOKEN_ENDPOINT":  x.issuer + "/token",
		"IDPORTEN_AUDIENCE":       idportenAudience,
		"IDPORTEN_ISSUER":         x.idp.URL,
		"IDPORTEN_JWKS_URI":       x.idp.JWKSURI(),
		"IDPORTEN_WELL_KNOWN_URL": x.idp.WellKnownURL(),
		// The endpoints of NAIS's own sidecar, injected as well: the agent
		// reads none of them.
		"NAIS_TOKEN_ENDPOINT":               "http://127.0.0.1:7164/api/v1/token",
		"NAIS_TOKEN_EXCHANGE_ENDPOINT":      "http://127.0.0.1:7164/api/v1/token/exchange",
		"NAIS_TOKEN_INTROSPECTION_ENDPOINT": "http://127.0.0.1:7164/api/v1/introspect",
	}
}

// TestAgentNAISEnvironment starts vakt agent from exactly what NAIS
// injects, both well-known URLs and both jwks_uris included (issue 15): it
// starts, exchanges, and introspects a token of each provider as active.
// Addresses that disagree with their discovery document refuse that
// provider's tokens as an outage and say why in the log; a provider that is
// down at start does not keep the agent from starting.
func TestAgentNAISEnvironment(t *testing.T) {
	x := newExchangeEnv(t, nil)
	const aud = "idporten-client-of-app-1"
	ctx := context.Background()
	k := x.cur.Load().Signer.Keys()[0]
	toApp1 := idptest.Sign(t, &idptest.Key{ID: k.ID, Alg: k.Alg, Private: k.Private}, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID},
		map[string]any{"iss": x.issuer, "sub": "user-1", "aud": app1, "exp": time.Now().Add(time.Minute).Unix()})
	user := x.idp.Token(x.idp.Claims(time.Now(), aud))
	start := func(t *testing.T, vars map[string]string) (*agentEnv, *lockedBuffer) {
		t.Helper()
		env, err := agent.EnvFrom(func(k string) string { return vars[k] })
		if err != nil {
			t.Fatal(err)
		}
		logs := &lockedBuffer{}
		return serveAgent(t, x, env, slog.New(slog.NewJSONHandler(logs, nil))), logs
	}
	type want struct {
		provider, token string
		active          bool
		errMsg          string
	}
	introspect := func(t *testing.T, a *agentEnv, wants ...want) {
		t.Helper()
		for _, w := range wants {
			ir, err := a.introspec.Introspect(ctx, &vaktv1.IntrospectRequest{IdentityProvider: w.provider, Token: w.token})
			if err != nil || ir.Active != w.active || ir.Error != w.errMsg {
				t.Errorf("%s: %v %v, want active %v %q", w.provider, ir, err, w.active, w.errMsg)
			}
		}
	}

	t.Run("as injected", func(t *testing.T) {
		a, _ := start(t, naisEnv(t, x, aud))
		introspect(t, a,
			want{"tokenx", toApp1, true, ""},
			want{"idporten", user, true, ""},
			want{"idporten", x.idp.Token(x.idp.Claims(time.Now(), "someone-else")), false, "token audience is invalid"},
		)
		st, body := a.postJSON(t, "/api/v1/introspect", map[string]any{"identity_provider": "idporten", "token": user})
		if st != 200 || body["active"] != true || body["aud"] != aud {
			t.Fatalf("HTTP introspect: %d %v", st, body)
		}
		// TOKEN_X_PRIVATE_JWK and TOKEN_X_TOKEN_ENDPOINT exchange.
		res, err := a.exchange.Exchange(ctx, &vaktv1.ExchangeRequest{SubjectToken: user, Audience: appB})
		if err != nil || res.AccessToken == "" {
			t.Fatalf("exchange: %v %v", res, err)
		}
	})

	t.Run("addresses that disagree", func(t *testing.T) {
		vars := naisEnv(t, x, aud)
		vars["TOKEN_X_JWKS_URI"] = x.issuer + "/not-the-jwks"
		vars["IDPORTEN_JWKS_URI"] = x.idp.URL + "/not-the-jwks"
		a, logs := start(t, vars)
		outage := authz.ReasonKeysUnavailable.Description()
		introspect(t, a, want{"tokenx", toApp1, false, outage}, want{"idporten", user, false, outage})
		logged := map[string]string{}
		for _, l := range logs.lines(t, "key set fetch failed; tokens of this provider are rejected until keys arrive") {
			logged[l["identity_provider"].(string)], _ = l["error"].(string)
		}
		for provider, name := range map[string]string{"tokenx": "TOKEN_X", "idporten": "IDPORTEN"} {
			if want := name + "_WELL_KNOWN_URL and " + name + "_JWKS_URI disagree"; !strings.Contains(logged[provider], want) {
				t.Errorf("%s: the log does not say %q: %v", provider, want, logged)
			}
		}
	})

	t.Run("ID-porten down at start", func(t *testing.T) {
		x.idp.SetDown(true)
		defer x.idp.SetDown(false)
		a, _ := start(t, naisEnv(t, x, aud))
		introspect(t, a, want{"tokenx", toApp1, true, ""}, want{"idporten", user, false, authz.ReasonKeysUnavailable.Description()})
	})

	// Neither address is still refused, naming both variables.
	vars := naisEnv(t, x, aud)
	delete(vars, "TOKEN_X_JWKS_URI")
	delete(vars, "TOKEN_X_WELL_KNOWN_URL")
	if _, err := agent.EnvFrom(func(k string) string { return vars[k] }); err == nil || !strings.Contains(err.Error(), "TOKEN_X_JWKS_URI or TOKEN_X_WELL_KNOWN_URL") {
		t.Fatalf("neither address: %v", err)
	}
}

// BenchmarkAgentExchangeGRPC is the whole gRPC round trip of an agent
// exchange on loopback, served from the agent's cache.
func BenchmarkAgentExchangeGRPC(b *testing.B) {
	a := newAgentEnv(b)
	x := a.authority
	ctx := context.Background()
	req := &vaktv1.ExchangeRequest{SubjectToken: x.idp.Token(x.idp.Claims(time.Now(), "")), Audience: appB}
	if _, err := a.exchange.Exchange(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.exchange.Exchange(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
