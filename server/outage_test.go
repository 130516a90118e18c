package server

import (
	"context"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// leaks reports whether a public answer names something internal: a URL,
// an address, a port.
func leaks(s string) bool {
	return strings.Contains(s, "http") || strings.Contains(s, "127.0.0.1") || strings.Contains(s, "GET ")
}

// An identity provider that is down is an outage on every face, said in
// fixed words: Check answers a gRPC error (Envoy's status_on_error answers
// 503), /token 503 temporarily_unavailable, Introspect active false with
// "identity provider is unavailable". No answer names the provider's URL.
func TestIdentityProviderDownIsAnOutage(t *testing.T) {
	// Check.
	c := newCheckEnv(t)
	c.auth0.SetDown(true)
	c.load(c.yaml) // a runtime that never had the provider's keys
	tok := c.auth0.Token(map[string]any{"iss": c.auth0.URL, "sub": "s", "aud": "https://api.example.com", "exp": time.Now().Add(time.Hour).Unix()})
	_, err := c.client.Check(context.Background(), checkRequestTo("dev-gcp:team-b:api", "/x", map[string]string{"authorization": "Bearer " + tok}))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Check with the provider down: %v, want UNAVAILABLE", err)
	}
	if msg := status.Convert(err).Message(); msg != "identity provider is unavailable" {
		t.Fatalf("Check message %q", msg)
	}

	// /token and Introspect.
	x := newExchangeEnv(t, nil)
	x.idp.SetDown(true)
	rt := x.cur.Load()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	down, err := NewRuntime(ctx, rt.Config, Options{Logger: quiet, Signer: rt.Signer, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{})})
	if err != nil {
		t.Fatal(err)
	}
	x.cur.Store(down)
	subject := x.idp.Token(x.idp.Claims(time.Now(), ""))
	for _, via := range []func(*testing.T, exchange.Request) outcome{x.viaHTTP, x.viaGRPC} {
		got := via(t, x.request(t, func(r *exchange.Request) { r.SubjectToken = subject }))
		if got.code != codeTemporarilyUnavailable || leaks(got.description) {
			t.Fatalf("exchange with the provider down: %+v", got)
		}
	}
	resp, err := testHTTP.PostForm(x.issuer+"/token", url.Values{
		"grant_type": {exchange.GrantTypeTokenExchange}, "client_assertion_type": {exchange.ClientAssertionTypeJWT},
		"client_assertion": {x.assertion(t, app1, nil)}, "subject_token_type": {exchange.TokenTypeJWT},
		"subject_token": {subject}, "audience": {appB},
	})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || leaks(string(body)) {
		t.Fatalf("/token: %d %s", resp.StatusCode, body)
	}

	res, err := x.introspec.Introspect(context.Background(), &vaktv1.IntrospectRequest{IdentityProvider: "idporten", Token: subject})
	if err != nil || res.Active || res.Error != "identity provider is unavailable" {
		t.Fatalf("Introspect: %v %v", res, err)
	}
	resp, err = testHTTP.PostForm(x.issuer+"/api/v1/introspect", url.Values{"identity_provider": {"idporten"}, "token": {subject}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"active":false,"error":"identity provider is unavailable"}` {
		t.Fatalf("HTTP introspect: %d %s", resp.StatusCode, body)
	}
}

func checkRequestTo(app, path string, headers map[string]string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		ContextExtensions: map[string]string{ContextExtensionApp: app},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: path, Headers: headers,
		}},
	}}
}
