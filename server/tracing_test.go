package server

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/vakt-dev/vakt/agent"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/redistest"
)

// otlpReceiver is an OTLP trace receiver on loopback, as a collector runs
// one: POST /v1/traces (protobuf, gzip or not) and the gRPC TraceService.
// It keeps every span it is sent, with its resource's service.name.
type otlpReceiver struct {
	collectortracepb.UnimplementedTraceServiceServer
	httpURL, grpcAddr string

	mu    sync.Mutex
	spans []receivedSpan
}

type receivedSpan struct {
	service string
	*tracepb.Span
}

func newOTLPReceiver(t testing.TB) *otlpReceiver {
	r := &otlpReceiver{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "not an OTLP/HTTP protobuf trace export", http.StatusBadRequest)
			return
		}
		var body io.Reader = req.Body
		if req.Header.Get("Content-Encoding") == "gzip" {
			gz, err := gzip.NewReader(req.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = gz
		}
		b, err := io.ReadAll(body)
		var export collectortracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &export)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.keep(&export)
		out, _ := proto.Marshal(&collectortracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	}))
	t.Cleanup(hs.Close)
	r.httpURL = hs.URL
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	collectortracepb.RegisterTraceServiceServer(gs, r)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	r.grpcAddr = lis.Addr().String()
	return r
}

func (r *otlpReceiver) Export(_ context.Context, req *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	r.keep(req)
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) keep(req *collectortracepb.ExportTraceServiceRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := stringAttr(rs.GetResource().GetAttributes(), "service.name")
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.spans = append(r.spans, receivedSpan{service, s})
			}
		}
	}
}

// named returns the spans received with name, in the order received.
func (r *otlpReceiver) named(name string) []receivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []receivedSpan
	for _, s := range r.spans {
		if s.GetName() == name {
			out = append(out, s)
		}
	}
	return out
}

func stringAttr(attrs []*commonpb.KeyValue, key string) string {
	for _, a := range attrs {
		if a.GetKey() == key {
			return a.GetValue().GetStringValue()
		}
	}
	return ""
}

// tracingTo sets tracing up as the OTEL_* environment says, pointed at r
// over protocol (http/protobuf or grpc).
func tracingTo(t testing.TB, r *otlpReceiver, protocol string) *Tracing {
	endpoint := r.httpURL
	if protocol == "grpc" {
		endpoint = "http://" + r.grpcAddr
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
	t.Setenv("OTEL_SERVICE_NAME", "vakt-under-test")
	t.Setenv("OTEL_TRACES_SAMPLER", "")
	tr, err := NewTracing(context.Background())
	if err != nil || tr == nil {
		t.Fatalf("NewTracing: %v, %v", tr, err)
	}
	return tr
}

// The caller's trace, as Envoy forwards it in the CheckRequest.
const (
	callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan  = "00f067aa0ba902b7"
	b3Trace     = "80f198ee56343ba864fe8b2a57d3eff7"
	b3Span      = "e457b5a2e4d86bd1"
)

// A Check joins the caller's trace (W3C traceparent or B3): its span is a
// child of the caller's, carries the decision, and reaches a real OTLP
// receiver, over HTTP and over gRPC; so do key set fetches.
func TestTracingCheck(t *testing.T) {
	for _, protocol := range []string{"http/protobuf", "grpc"} {
		t.Run(protocol, func(t *testing.T) {
			recv := newOTLPReceiver(t)
			tr := tracingTo(t, recv, protocol)
			e := newCheckEnvTraced(t, tr)
			allow := e.check(creq{app: appB, path: "/read", headers: map[string]string{
				"authorization": "Bearer " + e.own(app1, appB, "read:users"),
				"traceparent":   "00-" + callerTrace + "-" + callerSpan + "-01",
			}})
			if allow.GetStatus().GetCode() != 0 {
				t.Fatalf("allow: %v", allow.GetStatus())
			}
			deny := e.check(creq{app: appB, method: "POST", path: "/create", headers: map[string]string{
				"authorization": "Bearer " + e.own(app1, appB, "read:users"),
				"x-b3-traceid":  b3Trace, "x-b3-spanid": b3Span, "x-b3-sampled": "1",
			}})
			if deny.GetStatus().GetCode() == 0 {
				t.Fatal("deny allowed")
			}
			// A caller whose trace is not sampled is not traced.
			e.check(creq{app: appB, path: "/read", headers: map[string]string{
				"authorization": "Bearer " + e.own(app1, appB, "read:users"),
				"traceparent":   "00-" + strings.Repeat("1", 32) + "-" + callerSpan + "-00",
			}})
			// An auth0 token makes sure its keys were fetched.
			e.check(creq{app: "dev-gcp:team-b:api", path: "/", headers: map[string]string{"authorization": "Bearer " + e.auth0.Token(map[string]any{
				"iss": e.auth0.URL, "sub": "user-1", "aud": "https://api.example.com", "exp": time.Now().Add(time.Minute).Unix()})}})
			if err := tr.Shutdown(context.Background()); err != nil {
				t.Fatalf("shutdown (flush): %v", err)
			}

			checks := recv.named("envoy.service.auth.v3.Authorization/Check")
			if len(checks) != 3 {
				t.Fatalf("%d Check spans, want 3 (the unsampled caller's not among them)", len(checks))
			}
			for i, want := range []struct {
				trace, parent, decision, reason string
			}{
				{callerTrace, callerSpan, "allow", "none"},
				{b3Trace, b3Span, "deny", "scope_insufficient"},
			} {
				s := checks[i]
				attrs := s.GetAttributes()
				if got := hex.EncodeToString(s.GetTraceId()); got != want.trace {
					t.Errorf("span %d: trace id %s, want the caller's %s", i, got, want.trace)
				}
				if got := hex.EncodeToString(s.GetParentSpanId()); got != want.parent {
					t.Errorf("span %d: parent %s, want the caller's span %s", i, got, want.parent)
				}
				if s.GetKind() != tracepb.Span_SPAN_KIND_SERVER || s.service != "vakt-under-test" {
					t.Errorf("span %d: kind %v, service %q", i, s.GetKind(), s.service)
				}
				for k, v := range map[string]string{
					"vakt.decision": want.decision, "vakt.reason": want.reason, "vakt.application": appB,
					"vakt.caller": app1, "url.path": s.path(), "rpc.system": "grpc",
				} {
					if got := stringAttr(attrs, k); got != v {
						t.Errorf("span %d: %s = %q, want %q", i, k, got, v)
					}
				}
				if !strings.HasPrefix(stringAttr(attrs, "vakt.rule"), "routes[") {
					t.Errorf("span %d: vakt.rule %q", i, stringAttr(attrs, "vakt.rule"))
				}
			}
			fetches := recv.named("jwks fetch")
			if len(fetches) == 0 || stringAttr(fetches[0].GetAttributes(), "vakt.provider") != "auth0" ||
				!strings.HasPrefix(stringAttr(fetches[0].GetAttributes(), "url.full"), e.auth0.URL) {
				t.Errorf("jwks fetch spans: %v", fetches)
			}
		})
	}
}

// path is the url.path a Check span says: the request's path.
func (s receivedSpan) path() string {
	if stringAttr(s.GetAttributes(), "vakt.decision") == "allow" {
		return "/read"
	}
	return "/create"
}

// Exchange and Introspect spans join the caller's trace over gRPC metadata
// and HTTP headers; Redis calls are children of the exchange's span; the
// decision log names the trace.
func TestTracingExchangeAndIntrospect(t *testing.T) {
	recv := newOTLPReceiver(t)
	tr := tracingTo(t, recv, "http/protobuf")
	addr := redistest.Start(t)
	rr := exchange.NewRedisReplay(exchange.RedisOptions{Address: addr}, nil)
	t.Cleanup(func() { rr.Close() })
	rr.AddHook(tr.RedisHook(addr))
	e := newExchangeEnvTraced(t, rr, "", tr)

	traceparent := "00-" + callerTrace + "-" + callerSpan + "-01"
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), "traceparent", traceparent)
	r := e.request(t, nil)
	if _, err := e.grpc.Exchange(ctx, &vaktv1.ExchangeRequest{
		GrantType: r.GrantType, ClientAssertionType: r.ClientAssertionType, ClientAssertion: r.ClientAssertion,
		SubjectTokenType: r.SubjectTokenType, SubjectToken: r.SubjectToken, Audience: appB,
	}); err != nil {
		t.Fatal(err)
	}
	// Over HTTP: refused, the client not allowed to call the target.
	r = e.request(t, func(r *exchange.Request) { r.ClientAssertion = e.assertion(t, app3, nil) })
	form := url.Values{"grant_type": {r.GrantType}, "client_assertion_type": {r.ClientAssertionType}, "client_assertion": {r.ClientAssertion},
		"subject_token_type": {r.SubjectTokenType}, "subject_token": {r.SubjectToken}, "audience": {appB}}
	req, _ := http.NewRequest(http.MethodPost, e.issuer+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("traceparent", traceparent)
	resp, err := testHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("refused exchange: %d", resp.StatusCode)
	}
	if _, err := e.introspec.Introspect(ctx, &vaktv1.IntrospectRequest{IdentityProvider: "idporten", Token: e.idp.Token(e.idp.Claims(time.Now(), ""))}); err != nil {
		t.Fatal(err)
	}
	req, _ = http.NewRequest(http.MethodPost, e.issuer+"/api/v1/introspect", bytes.NewReader([]byte(`{"identity_provider":"idporten","token":"x"}`)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", traceparent)
	if resp, err = testHTTP.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	for _, want := range []struct {
		name, decision, reason string
		attrs                  map[string]string
	}{
		{"vakt.v1.TokenExchangeService/Exchange", "allow", "none", map[string]string{"vakt.client": app1, "vakt.target": appB, "vakt.provider": "idporten", "vakt.rule": "accessPolicy.inbound.rules: " + app1}},
		{"POST /token", "deny", "target_denied", map[string]string{"vakt.client": app3, "vakt.rule": "accessPolicy.inbound.rules: no rule names " + app3, "http.request.method": "POST"}},
		{"vakt.v1.IntrospectionService/Introspect", "allow", "none", map[string]string{"vakt.provider": "idporten"}},
		{"POST /api/v1/introspect", "deny", "token_malformed", map[string]string{"vakt.provider": "idporten"}},
	} {
		spans := recv.named(want.name)
		if len(spans) != 1 {
			t.Errorf("%s: %d spans", want.name, len(spans))
			continue
		}
		s := spans[0]
		if hex.EncodeToString(s.GetTraceId()) != callerTrace || hex.EncodeToString(s.GetParentSpanId()) != callerSpan {
			t.Errorf("%s: trace %x parent %x, want the caller's", want.name, s.GetTraceId(), s.GetParentSpanId())
		}
		want.attrs["vakt.decision"], want.attrs["vakt.reason"] = want.decision, want.reason
		for k, v := range want.attrs {
			if got := stringAttr(s.GetAttributes(), k); got != v {
				t.Errorf("%s: %s = %q, want %q", want.name, k, got, v)
			}
		}
	}
	// The replay store's Redis calls are children of the exchanges (a
	// connection's setup, of the call that opened it).
	recv.mu.Lock()
	defer recv.mu.Unlock()
	byID := map[string]receivedSpan{}
	for _, s := range recv.spans {
		byID[string(s.GetSpanId())] = s
	}
	var claims int
	for _, s := range recv.spans {
		if !strings.HasPrefix(s.GetName(), "redis ") {
			continue
		}
		if stringAttr(s.GetAttributes(), "db.system.name") != "redis" || hex.EncodeToString(s.GetTraceId()) != callerTrace {
			t.Errorf("redis span %q: attributes %v, trace %x", s.GetName(), s.GetAttributes(), s.GetTraceId())
		}
		if s.GetName() == "redis evalsha" || s.GetName() == "redis eval" {
			claims++
		}
		p := s
		for strings.HasPrefix(p.GetName(), "redis ") {
			p = byID[string(p.GetParentSpanId())]
		}
		if n := p.GetName(); n != "vakt.v1.TokenExchangeService/Exchange" && n != "POST /token" {
			t.Errorf("redis span %q descends from %q, not an exchange", s.GetName(), n)
		}
	}
	if claims < 2 {
		t.Errorf("%d Redis script calls traced, want one per claim at least", claims)
	}
}

// Tracing is off unless the environment asks for it, and a setting vakt
// cannot honour stops it rather than being ignored.
func TestTracingFromEnv(t *testing.T) {
	for _, tt := range []struct {
		env     map[string]string
		on      bool
		wantErr string
	}{
		{env: nil},
		{env: map[string]string{"OTEL_SERVICE_NAME": "x"}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, on: true},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, on: true},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, on: true},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, wantErr: "OTEL_TRACES_EXPORTER"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, wantErr: "http/json"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"}, wantErr: "OTEL_TRACES_SAMPLER"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, wantErr: "OTEL_TRACES_SAMPLER_ARG"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}, on: true},
	} {
		for _, k := range []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
			"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME"} {
			t.Setenv(k, tt.env[k])
		}
		tr, err := NewTracing(context.Background())
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%v: err %v, want one naming %s", tt.env, err, tt.wantErr)
			}
		case err != nil:
			t.Errorf("%v: %v", tt.env, err)
		case (tr != nil) != tt.on:
			t.Errorf("%v: tracing on %v, want %v", tt.env, tr != nil, tt.on)
		}
		_ = tr.Shutdown(context.Background())
	}
}

// Hostile trace headers change nothing of the decision: a repeated or
// oversized traceparent, a tracestate of thousands of members, B3 garbage.
// The Check is answered as it would be, and traced as a new root or as the
// caller's child, never refused for its headers.
func TestTracingHostileHeaders(t *testing.T) {
	recv := newOTLPReceiver(t)
	tr := tracingTo(t, recv, "http/protobuf")
	e := newCheckEnvTraced(t, tr)
	tok := "Bearer " + e.own(app1, appB, "read:users")
	valid := "00-" + callerTrace + "-" + callerSpan + "-01"
	members := make([]string, 3000)
	for i := range members {
		members[i] = fmt.Sprintf("k%d=v%d", i, i)
	}
	for i, h := range []map[string]string{
		{"traceparent": strings.Repeat(valid+",", 200) + valid},
		{"traceparent": valid + strings.Repeat("-x", 4000)},
		{"traceparent": valid, "tracestate": strings.Join(members, ",")},
		{"b3": strings.Repeat("f", 5000) + "-" + b3Span + "-1"},
		{"x-b3-traceid": strings.Repeat("z", 32), "x-b3-spanid": b3Span, "x-b3-sampled": "1"},
		{"x-b3-traceid": b3Trace, "x-b3-spanid": b3Span, "x-b3-flags": "1", "x-b3-sampled": strings.Repeat("1", 1000)},
		{"traceparent": "ff-" + callerTrace + "-" + callerSpan + "-01"},
	} {
		h["authorization"] = tok
		if res := e.check(creq{app: appB, path: "/read", headers: h}); res.GetStatus().GetCode() != 0 {
			t.Errorf("headers %d: the Check was refused: %v", i, res.GetStatus())
		}
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(recv.named("envoy.service.auth.v3.Authorization/Check")); n == 0 {
		t.Error("no Check span at all")
	}
}

// The agent's exchanges are spans too, named for their route, children of
// the application's trace, with the upstream call beneath; the upstream
// request carries the trace. Refusals are in its decision log.
func TestTracingAgent(t *testing.T) {
	recv := newOTLPReceiver(t)
	tr := tracingTo(t, recv, "http/protobuf")
	x := newExchangeEnv(t, nil)
	k := x.keys[app1]
	logs := &lockedBuffer{}
	a := serveAgentTraced(t, x, &agent.Env{
		ClientID: app1, Key: &exchange.SigningKey{ID: k.ID, Alg: k.Alg, Private: k.Private},
		TokenEndpoint: x.issuer + "/token", Issuer: x.issuer, WellKnownURL: x.issuer + "/.well-known/oauth-authorization-server",
	}, slog.New(slog.NewJSONHandler(logs, nil)), tr)
	user := x.idp.Token(x.idp.Claims(time.Now(), ""))
	for _, target := range []string{appB, "dev-gcp:team-b:nobody"} {
		req, _ := http.NewRequest(http.MethodPost, a.http+"/api/v1/token/exchange",
			strings.NewReader(url.Values{"identity_provider": {"tokenx"}, "target": {target}, "user_token": {user}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
		resp, err := testHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := recv.named("POST /api/v1/token/exchange")
	if len(spans) != 2 {
		t.Fatalf("%d agent exchange spans", len(spans))
	}
	for i, want := range []string{"allow", "deny"} {
		s := spans[i]
		if hex.EncodeToString(s.GetTraceId()) != callerTrace || stringAttr(s.GetAttributes(), "vakt.decision") != want || stringAttr(s.GetAttributes(), "vakt.client") != app1 {
			t.Errorf("span %d: trace %x, attributes %v", i, s.GetTraceId(), s.GetAttributes())
		}
	}
	up := recv.named("token exchange upstream")
	if len(up) == 0 || string(up[0].GetParentSpanId()) != string(spans[0].GetSpanId()) {
		t.Errorf("upstream spans %v", up)
	}
	// The authority (untraced) read the trace from the upstream request.
	if got := x.logs.lines(t, "exchange"); len(got) != 1 || got[0]["trace_id"] != callerTrace {
		t.Errorf("the authority's decision log: %v", got)
	}
	got := logs.lines(t, "exchange")
	if len(got) != 1 || got[0]["decision"] != "deny" || got[0]["client"] != app1 || got[0]["target"] != "dev-gcp:team-b:nobody" || got[0]["trace_id"] != callerTrace {
		t.Errorf("the agent's decision log: %v", got)
	}
}
