package server

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	grpcmd "google.golang.org/grpc/metadata"

	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// wantLine checks a decision log line's fields.
func wantLine(t *testing.T, what string, got map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %v, want %v (line %v)", what, k, got[k], v, got)
		}
	}
	if _, ok := got["latency_seconds"].(float64); !ok {
		t.Errorf("%s: no latency_seconds: %v", what, got)
	}
}

// One line per exchange refused (by default) or per exchange (all): the
// client, the target, the rule that decided, the subject token's jti and
// hashed subject, the trace; never a token.
func TestExchangeDecisionLog(t *testing.T) {
	e := newExchangeEnv(t, nil)
	if got := e.viaGRPC(t, e.request(t, nil)); got.code != "" {
		t.Fatalf("exchange: %v", got)
	}
	if got := e.logs.lines(t, "exchange"); len(got) != 0 {
		t.Fatalf("a granted exchange is not logged by default: %v", got)
	}
	// Refused over HTTP, with the caller's trace.
	r := e.request(t, func(r *exchange.Request) { r.ClientAssertion = e.assertion(t, app3, nil) })
	form := url.Values{"grant_type": {r.GrantType}, "client_assertion_type": {r.ClientAssertionType}, "client_assertion": {r.ClientAssertion},
		"subject_token_type": {r.SubjectTokenType}, "subject_token": {r.SubjectToken}, "audience": {appB}}
	req, _ := http.NewRequest(http.MethodPost, e.issuer+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
	resp, err := testHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	e.viaGRPC(t, e.request(t, func(r *exchange.Request) { r.ClientAssertion = "x" }))
	e.viaGRPC(t, e.request(t, func(r *exchange.Request) { r.Audience = []string{"dev-gcp:team-b:nobody"} }))
	got := e.logs.lines(t, "exchange")
	if len(got) != 3 {
		t.Fatalf("%d lines, want 3: %v", len(got), got)
	}
	wantLine(t, "target denied", got[0], map[string]any{
		"level": "INFO", "decision": "deny", "reason": "target_denied", "client": app3, "target": appB, "provider": "idporten",
		"rule": "accessPolicy.inbound.rules: no rule names " + app3, "trace_id": callerTrace,
	})
	if got[0]["jti"] == nil || got[0]["sub_hash"] == nil || got[0]["sub_hash"] == "user-1" {
		t.Errorf("the subject token's jti and hashed sub: %v", got[0])
	}
	wantLine(t, "assertion invalid", got[1], map[string]any{"decision": "deny", "reason": "assertion_invalid", "client": nil, "target": appB})
	wantLine(t, "target unknown", got[2], map[string]any{
		"decision": "deny", "reason": "target_unknown", "client": app1, "rule": "applications: dev-gcp:team-b:nobody is not registered",
	})
	for _, line := range got {
		for k, v := range line {
			if s, ok := v.(string); ok && (strings.Contains(s, r.SubjectToken[:20]) || strings.Contains(s, r.ClientAssertion[:20]) || strings.Contains(s, "user-1")) {
				t.Errorf("%s carries a token or the subject: %q", k, s)
			}
		}
	}

	e.reload(t, "log:\n  decisions: all\n")
	e.viaGRPC(t, e.request(t, nil))
	got = e.logs.lines(t, "exchange")
	if len(got) != 1 {
		t.Fatalf("log.decisions all: %v", got)
	}
	wantLine(t, "granted", got[0], map[string]any{"decision": "allow", "reason": "none", "client": app1, "target": appB, "rule": "accessPolicy.inbound.rules: " + app1})
	e.reload(t, "log:\n  decisions: none\n")
	e.viaGRPC(t, e.request(t, func(r *exchange.Request) { r.ClientAssertion = "x" }))
	if got := e.logs.lines(t, "exchange"); len(got) != 0 {
		t.Fatalf("log.decisions none: %v", got)
	}
}

// One line per introspection of an inactive token (by default), or per
// introspection (all), over gRPC and HTTP.
func TestIntrospectionDecisionLog(t *testing.T) {
	e := newExchangeEnv(t, nil)
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), "traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
	good := e.idp.Token(e.idp.Claims(time.Now(), ""))
	if _, err := e.introspec.Introspect(ctx, &vaktv1.IntrospectRequest{IdentityProvider: "idporten", Token: good}); err != nil {
		t.Fatal(err)
	}
	if got := e.logs.lines(t, "introspect"); len(got) != 0 {
		t.Fatalf("an active token is not logged by default: %v", got)
	}
	if _, err := e.introspec.Introspect(ctx, &vaktv1.IntrospectRequest{IdentityProvider: "idporten", Token: "x.y.z"}); err != nil {
		t.Fatal(err)
	}
	resp, err := testHTTP.Post(e.issuer+"/api/v1/introspect", "application/json", strings.NewReader(`{"identity_provider":"`+strings.Repeat("p", 100)+`","token":"a.b.c"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := e.logs.lines(t, "introspect")
	if len(got) != 2 {
		t.Fatalf("%d lines, want 2: %v", len(got), got)
	}
	wantLine(t, "malformed", got[0], map[string]any{"decision": "deny", "reason": "token_malformed", "provider": "idporten", "trace_id": callerTrace})
	wantLine(t, "unknown provider", got[1], map[string]any{"decision": "deny", "reason": "provider_unknown", "provider": strings.Repeat("p", 64) + "…"})

	e.reload(t, "log:\n  decisions: all\n")
	if _, err := e.introspec.Introspect(ctx, &vaktv1.IntrospectRequest{IdentityProvider: "idporten", Token: good}); err != nil {
		t.Fatal(err)
	}
	got = e.logs.lines(t, "introspect")
	if len(got) != 1 {
		t.Fatalf("log.decisions all: %v", got)
	}
	wantLine(t, "active", got[0], map[string]any{"decision": "allow", "reason": "none", "provider": "idporten", "trace_id": callerTrace})
	if got[0]["jti"] == nil || got[0]["sub_hash"] == nil || strings.Contains(got[0]["sub_hash"].(string), "user") {
		t.Errorf("jti and sub_hash: %v", got[0])
	}
}

// log.sampleAllows keeps a share of the allows and every refusal.
func TestDecisionLogSamplesAllows(t *testing.T) {
	e := newCheckEnv(t)
	e.load(e.yaml + "log:\n  decisions: all\n  sampleAllows: 0.5\n")
	auth := map[string]string{"authorization": "Bearer " + e.own(app1, appB, "read:users")}
	const n = 400
	for range n {
		e.check(creq{app: appB, path: "/read", headers: auth})
	}
	// Binomial(400, 0.5): 200 ± 10; 100 to 300 is ten deviations either way.
	if got := len(e.logs.lines(t, "check")); got < 100 || got > 300 {
		t.Errorf("%d of %d allows logged at a share of 0.5", got, n)
	}
	for range 50 {
		e.check(creq{app: appB, path: "/nowhere", headers: auth})
	}
	if got := len(e.logs.lines(t, "check")); got != 50 {
		t.Errorf("%d of 50 refusals logged; sampling is for allows only", got)
	}
}

// A Check's line names the caller's B3 trace when it sent no traceparent.
func TestCheckDecisionLogB3(t *testing.T) {
	e := newCheckEnv(t)
	for _, h := range []map[string]string{
		{"x-b3-traceid": b3Trace, "x-b3-spanid": b3Span},
		{"b3": b3Trace + "-" + b3Span + "-1"},
		{"x-b3-traceid": b3Trace[16:], "x-b3-spanid": b3Span},
	} {
		e.check(creq{app: appB, path: "/nowhere", headers: h})
	}
	got := e.logs.lines(t, "check")
	if len(got) != 3 || got[0]["trace_id"] != b3Trace || got[1]["trace_id"] != b3Trace || got[2]["trace_id"] != "0000000000000000"+b3Trace[16:] {
		t.Fatalf("trace ids: %v", got)
	}
}

// Introspections are counted by whether the token was active and why not;
// every series exists from the start, as do the exchanges'.
func TestIntrospectionMetrics(t *testing.T) {
	e := newExchangeEnv(t, nil)
	scrape := func() string {
		resp, err := testHTTP.Get(e.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		if _, err := io.Copy(&b, resp.Body); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	before := scrape()
	for _, want := range []string{
		`vakt_introspections_total{active="true",reason="none"} 0`,
		`vakt_introspections_total{active="false",reason="token_expired"} 0`,
		`vakt_introspections_total{active="false",reason="keys_unavailable"} 0`,
		`vakt_token_exchanges_total{reason="",result="ok"} 0`,
		`vakt_token_exchanges_total{reason="assertion_replayed",result="invalid_client"} 0`,
		`vakt_token_exchanges_total{reason="replay_unavailable",result="temporarily_unavailable"} 0`,
	} {
		if !strings.Contains(before, want) {
			t.Errorf("before any request, the metrics lack %s", want)
		}
	}
	ctx := context.Background()
	for _, tok := range []string{e.idp.Token(e.idp.Claims(time.Now(), "")), "x.y.z", "x.y.z"} {
		if _, err := e.introspec.Introspect(ctx, &vaktv1.IntrospectRequest{IdentityProvider: "idporten", Token: tok}); err != nil {
			t.Fatal(err)
		}
	}
	after := scrape()
	for _, want := range []string{
		`vakt_introspections_total{active="true",reason="none"} 1`,
		`vakt_introspections_total{active="false",reason="token_malformed"} 2`,
		`vakt_introspection_duration_seconds_count 3`,
	} {
		if !strings.Contains(after, want) {
			t.Errorf("the metrics lack %s", want)
		}
	}
}
