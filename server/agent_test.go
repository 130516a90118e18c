package server

import (
	"bytes"
	"context"
	"encoding/json"
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
	ctx, cancel := context.WithCancel(context.Background())
	rt, err := NewAgentRuntime(ctx, env, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := Listen("127.0.0.1:0", "127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, AgentServices(rt, NewMetrics(), quiet), ls) }()
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
