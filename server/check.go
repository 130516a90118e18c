package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.opentelemetry.io/otel/trace"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
)

// ContextExtensionApp is the key of Envoy's check_settings.context_extensions
// that names the application a route leads to (an id cluster:namespace:name).
// deploy/envoy/envoy.yaml writes it; a test holds the two together.
const ContextExtensionApp = "vakt_app"

// metadataNamespace is the dynamic metadata namespace of the claims.
const metadataNamespace = "vakt"

// maxCheckHeaders bounds the headers of a CheckRequest vakt works on.
const maxCheckHeaders = 1024

// authorizationService is Envoy's envoy.service.auth.v3.Authorization.
type authorizationService struct {
	authv3.UnimplementedAuthorizationServer
	cur     *Current
	log     *slog.Logger
	metrics *Metrics // nil counts nothing
	obs     *observer
}

func newAuthorizationService(cur *Current, log *slog.Logger, m *Metrics, obs *observer) *authorizationService {
	if obs == nil {
		obs = newObserver(log, func() config.Log { return cur.Load().Config.Log })
	}
	return &authorizationService{cur: cur, log: log, metrics: m, obs: obs}
}

var _ authv3.AuthorizationServer = (*authorizationService)(nil)

// Check answers Envoy's ext_authz: request → application → decision →
// response. A denial is an answer (status OK on the RPC); an outage (keys
// that cannot be had, overload) is an RPC error, so that Envoy's
// status_on_error tells it from a refusal.
func (s *authorizationService) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	r, err := s.checkEnvoy(ctx, req)
	if r.wire != nil {
		return r.wire.message(), err
	}
	return r.msg, err
}

// envoyReply is Envoy's face's rendering of an answer: an allow that needs
// no change for this request is its pre-marshalled answer, which the codec
// writes as it is; anything else a message.
type envoyReply struct {
	wire *preMarshalled
	msg  *authv3.CheckResponse
}

// checkEnvoy is Check as the gRPC server calls it (authorizationDesc): the
// request read, decided, and the answer rendered for Envoy.
func (s *authorizationService) checkEnvoy(ctx context.Context, req *authv3.CheckRequest) (envoyReply, error) {
	var span trace.Span // nil unless traced: the untraced Check pays a comparison
	cr := envoyRequest(req)
	if s.obs.tracer != nil {
		ctx, span = s.startCheck(ctx, &cr)
		defer endOnPanic(span)
	}
	o := s.check(ctx, &cr, span)
	return renderEnvoy(&o)
}

// check decides a request of any face, and counts, traces and logs the
// decision: once per request, whichever face asked.
func (s *authorizationService) check(ctx context.Context, req *checkRequest, span trace.Span) checkOutcome {
	var start time.Duration
	if s.metrics != nil {
		start = s.metrics.checkStart()
	}
	o := s.decide(ctx, req)
	if s.metrics != nil {
		s.metrics.observeCheck(o.d.Reason, start)
	}
	if span != nil {
		endCheckSpan(span, req, &o)
	}
	if o.app != nil {
		switch {
		case logs(o.rt.Config.Log, o.d.Reason):
			var latency time.Duration
			if s.metrics != nil {
				latency = s.metrics.checkStart() - start
			}
			s.logDecision(ctx, req, &o, latency)
		case o.d.Reason.Outage():
			// log.decisions: none still leaves the cause of an outage.
			s.log.Debug("check could not be decided", "application", o.app.ID, "reason", o.d.Reason.String(), "cause", o.d.Err)
		}
	}
	return o
}

// checkOutcome is a Check decided: the answer, and what the decision log
// says of it.
type checkOutcome struct {
	answer checkAnswer
	rt     *Runtime
	d      authz.Decision
	app    *authz.Application // nil when the request named none (logged apart)
}

// decide is a request's answer, and the decision behind it.
func (s *authorizationService) decide(ctx context.Context, req *checkRequest) checkOutcome {
	rt := s.cur.Load()
	if req.invalid {
		d := authz.Decision{Reason: authz.ReasonRequestInvalid}
		return checkOutcome{answer: denied(d, "", false), rt: rt, d: d}
	}
	grpcCall := strings.HasPrefix(req.headers.get("content-type"), "application/grpc")
	app, ok := findApplication(rt, req)
	if !ok {
		// A configuration problem rather than a client's: say which request
		// found no application, so the route or host can be fixed.
		s.log.Warn("check denied: no application for the request",
			"context_extension", req.appID, "destination_principal", req.principal,
			"host", req.host, "path", truncatePath(req.path))
		d := authz.NoApplication()
		return checkOutcome{answer: denied(d, "", grpcCall), rt: rt, d: d}
	}
	d := rt.Checker.Check(ctx, authz.CheckRequest{App: app, Method: req.method, Path: req.path, Authorization: req.headers.get("authorization")})
	if !d.Allow {
		if d.Reason.Outage() {
			return checkOutcome{answer: checkAnswer{outage: true}, rt: rt, d: d, app: app}
		}
		return checkOutcome{answer: denied(d, app.ID, grpcCall), rt: rt, d: d, app: app}
	}
	return checkOutcome{answer: rt.allowed(&d, app, req.headers, req.face), rt: rt, d: d, app: app}
}

// envoyHeaders are a CheckRequest's headers, wherever Envoy put them: in
// headers, or in header_map when its encode_raw_headers is set (a name may
// repeat there, and a value may be raw bytes). Both are read, so that no
// header escapes vakt by arriving in the other. One pointer: in a
// checkHeaders, it costs no allocation.
type envoyHeaders struct {
	r *authv3.AttributeContext_HttpRequest
}

// get joins in linear time: a request may repeat a header a thousand times.
func (h envoyHeaders) get(name string) string {
	v := h.r.GetHeaders()[name]
	var b *strings.Builder
	for _, hv := range h.r.GetHeaderMap().GetHeaders() {
		if hv.GetKey() != name {
			continue
		}
		s := hv.GetValue()
		if raw := hv.GetRawValue(); len(raw) > 0 {
			s = string(raw)
		}
		switch {
		case v == "" && b == nil:
			v = s
		case b == nil:
			b = &strings.Builder{}
			b.WriteString(v)
			fallthrough
		default:
			b.WriteByte(',')
			b.WriteString(s)
		}
	}
	if b != nil {
		return b.String()
	}
	return v
}

func (h envoyHeaders) count() int {
	return len(h.r.GetHeaders()) + len(h.r.GetHeaderMap().GetHeaders())
}

func (h envoyHeaders) each(f func(name string)) {
	for name := range h.r.GetHeaders() {
		f(name)
	}
	for _, hv := range h.r.GetHeaderMap().GetHeaders() {
		f(hv.GetKey())
	}
}

func (h envoyHeaders) spoofed(dst []string) []string {
	for name := range h.r.GetHeaders() {
		if spoofsIdentity(name) {
			dst = append(dst, name)
		}
	}
	for _, hv := range h.r.GetHeaderMap().GetHeaders() {
		if name := hv.GetKey(); spoofsIdentity(name) {
			dst = append(dst, name)
		}
	}
	return dst
}

// envoyRequest is the request a CheckRequest asks about.
func envoyRequest(req *authv3.CheckRequest) checkRequest {
	attrs := req.GetAttributes()
	r := attrs.GetRequest().GetHttp()
	if r == nil {
		return checkRequest{invalid: true}
	}
	cr := checkRequest{
		appID: attrs.GetContextExtensions()[ContextExtensionApp], principal: attrs.GetDestination().GetPrincipal(),
		host: r.GetHost(), method: r.GetMethod(), path: r.GetPath(), headers: envoyHeaders{r}, face: envoyFace,
	}
	if cr.headers.count() > maxCheckHeaders {
		// Envoy sends 100 headers at most by default; a request with
		// thousands did not come through a proxy, and is not worked on.
		return checkRequest{invalid: true}
	}
	// HTTP/2 requests may carry the method and path as pseudo-headers
	// only.
	if cr.path == "" {
		cr.path = cr.headers.get(":path")
	}
	if cr.method == "" {
		cr.method = cr.headers.get(":method")
	}
	return cr
}

func truncatePath(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i] // query strings may carry secrets
	}
	if len(p) > 200 {
		p = p[:200] + "…"
	}
	return p
}

// findApplication names the application being called, first that applies:
// the id the route names (Envoy's context extension, the HTTP face's
// path), the destination principal of an Istio mesh
// (spiffe://<trust domain>/ns/<namespace>/sa/<name>, in vakt's cluster),
// the request's host.
func findApplication(rt *Runtime, req *checkRequest) (*authz.Application, bool) {
	if req.appID != "" {
		return rt.Policy.Application(req.appID)
	}
	if ns, sa, ok := spiffeWorkload(req.principal, rt.Config.TrustDomain); ok {
		return rt.Policy.Application(authz.AppID{Cluster: rt.Config.Cluster, Namespace: ns, Name: sa}.String())
	}
	host := req.host
	if host == "" {
		return nil, false
	}
	if h, _, ok := strings.Cut(host, ":"); ok && !strings.HasPrefix(host, "[") {
		host = h
	}
	return rt.Policy.ApplicationByHost(host)
}

// spiffeWorkload reads spiffe://<trustDomain>/ns/<namespace>/sa/<name>. A
// principal of another trust domain (or of none) names no workload of
// vakt's: another mesh's service accounts are not its applications.
func spiffeWorkload(principal, trustDomain string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(principal, "spiffe://")
	if !ok {
		return "", "", false
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok || td == "" || td != trustDomain {
		return "", "", false
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return "", "", false
	}
	return parts[1], parts[3], true
}

// publicAllow is the allow answer of a public route, and of any request
// whose answer sets no header.
var publicAllow = mustPreMarshal(&authv3.CheckResponse{
	Status:       &rpcstatus.Status{Code: int32(codes.OK)},
	HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
})

func mustPreMarshal(m *authv3.CheckResponse) *preMarshalled {
	p, err := newPreMarshalled(m)
	if err != nil {
		panic(err) // a message of strings and numbers; cannot fail
	}
	return p
}

// allowed is the allow answer: the identity of this token for this
// application (made once per verified token: the same token for the same
// application always gets the same headers and metadata), none for a
// public route, and the headers this request calls on the proxy to
// remove.
func (rt *Runtime) allowed(d *authz.Decision, app *authz.Application, reqHeaders checkHeaders, f face) checkAnswer {
	a := checkAnswer{allow: true, status: http.StatusOK}
	if d.Claims != nil {
		a.id = rt.answers.identity(d, app, f)
	}
	// Envoy removes headers after setting them (ext_authz.cc, onComplete):
	// list only the client's x-vakt-* headers vakt does not set itself.
	a.remove = reqHeaders.spoofed(nil)
	if a.id != nil {
		a.remove = slices.DeleteFunc(a.remove, a.id.sets)
	}
	// Sorted, as the map's order is random and the answer's is not; each
	// once (a name may repeat in header_map), in O(n log n).
	slices.Sort(a.remove)
	a.remove = slices.Compact(a.remove)
	if app.StripAuthorization && d.Claims != nil {
		a.remove = append(a.remove, "authorization")
	}
	return a
}

// envoyIdentity writes into p the allow answer for a token and an
// application in Envoy's wire form: the headers hs, and the claims as
// dynamic metadata unless metadata is false (or the answer would be past
// maxAnswer with them), and appends to spans where each header's name and
// value are in it. Both are written straight from the claims, with no
// message built and no reflection, into one buffer of their size (rounded
// up to its allocation's size class).
func envoyIdentity(p *preMarshalled, hs []answerHeader, raw map[string]any, metadata bool, spans []headerSpan) []headerSpan {
	n := identityWireSize(hs)
	var md structWire
	mdSize := 0
	if metadata {
		if m, err := md.size(metadataNamespace, raw); err == nil && n+m <= maxAnswer {
			mdSize = m
		}
	}
	// Grown, not made: append rounds the capacity up to the allocation's
	// size class, so that the identity's size counts what it costs.
	wire, spans := appendIdentityWire(slices.Grow([]byte(nil), n+mdSize), hs, spans)
	if mdSize > 0 {
		wire = md.append(wire, metadataNamespace, raw)
	}
	p.bytes = wire
	p.buf[0] = &p.bytes
	return spans
}

// Field numbers of CheckResponse (external_auth.proto), OkHttpResponse,
// HeaderValueOption and HeaderValue (base.proto), and the append action.
const (
	checkStatus            protowire.Number = 1
	checkOkResponse        protowire.Number = 3
	okHeaders              protowire.Number = 2
	optionHeader           protowire.Number = 1
	optionAppendAction     protowire.Number = 3
	headerKey              protowire.Number = 1
	headerValue            protowire.Number = 2
	overwriteIfExistsOrAdd                  = uint64(corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)
)

// appendIdentityWire appends CheckResponse{status: OK, ok_response:
// {headers: hs, each to overwrite}} as proto.Marshal writes it, byte for
// byte (TestIdentityWire), and to spans where each name and value went.
// The values are claims, which the token's parser made valid UTF-8, as a
// string field must be.
func appendIdentityWire(b []byte, hs []answerHeader, spans []headerSpan) ([]byte, []headerSpan) {
	b = protowire.AppendTag(b, checkStatus, protowire.BytesType)
	b = protowire.AppendVarint(b, 0) // google.rpc.Status{code: OK}: no field set
	b = protowire.AppendTag(b, checkOkResponse, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(okResponseSize(hs)))
	for _, h := range hs {
		hv := lenString(h.name) + lenString(h.value)
		b = protowire.AppendTag(b, okHeaders, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(lenField(hv)+2))
		b = protowire.AppendTag(b, optionHeader, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(hv))
		b = protowire.AppendTag(b, headerKey, protowire.BytesType)
		b = protowire.AppendString(b, h.name)
		nameEnd := len(b)
		b = protowire.AppendTag(b, headerValue, protowire.BytesType)
		b = protowire.AppendString(b, h.value)
		spans = append(spans, headerSpan{uint32(nameEnd - len(h.name)), uint32(len(h.name)), uint32(len(b) - len(h.value)), uint32(len(h.value))})
		b = protowire.AppendTag(b, optionAppendAction, protowire.VarintType)
		b = protowire.AppendVarint(b, overwriteIfExistsOrAdd)
	}
	return b, spans
}

// okResponseSize is the size of the OkHttpResponse setting hs.
func okResponseSize(hs []answerHeader) int {
	n := 0
	for _, h := range hs {
		n += lenField(lenField(lenString(h.name)+lenString(h.value)) + 2) // and append_action: a tag and a one-byte varint
	}
	return n
}

// identityWireSize is the length appendIdentityWire appends.
func identityWireSize(hs []answerHeader) int { return 2 + lenField(okResponseSize(hs)) }

// denied builds an RFC 6750 denial from the reason table: the status,
// WWW-Authenticate on 401 and on bearer errors, a JSON body, and for gRPC
// requests grpc-status and grpc-message, as gRPC clients otherwise see an
// HTTP status where they expect a gRPC one. Every text in it is the
// reason's fixed description.
func denied(d authz.Decision, realm string, grpcCall bool) checkAnswer {
	a := answerFor(d.Reason)
	desc := d.Reason.Description()
	var headers []answerHeader
	add := func(k, v string) { headers = append(headers, answerHeader{k, v}) }
	switch {
	case a.http == 401 && a.code == "":
		add("www-authenticate", `Bearer realm="`+publicText(realm)+`"`)
	case a.code == codeInvalidToken || a.code == codeInvalidRequest:
		add("www-authenticate", `Bearer realm="`+publicText(realm)+`", error="`+a.code+`", error_description="`+desc+`"`)
	case a.code == codeInsufficientScope:
		add("www-authenticate", `Bearer realm="`+publicText(realm)+`", error="`+a.code+`", scope="`+publicText(d.Scope)+`"`)
	}
	add("content-type", "application/json")
	body := map[string]string{"error": a.code, "error_description": desc}
	if a.code == "" {
		switch a.http {
		case 401:
			body["error"] = "unauthorized"
		case 403:
			body["error"] = "forbidden"
		}
	}
	if d.Scope != "" {
		body["scope"] = d.Scope
	}
	b, _ := json.Marshal(body)
	if grpcCall {
		add("grpc-status", strconv.Itoa(int(a.grpc)))
		add("grpc-message", grpcMessage(desc))
	}
	return checkAnswer{status: a.http, headers: headers, body: string(b)}
}

// renderEnvoy renders an answer for Envoy: an allow as an OkHttpResponse
// (pre-marshalled when it needs no change), a refusal as a
// DeniedHttpResponse with the reason's gRPC status, an outage as an RPC
// error with the reason's description (the decision log has the cause,
// which names URLs and addresses).
func renderEnvoy(o *checkOutcome) (envoyReply, error) {
	a := &o.answer
	r := o.d.Reason
	switch {
	case a.outage:
		return envoyReply{}, status.Error(answerFor(r).grpc, r.Description())
	case a.allow:
		answer := publicAllow
		if a.id != nil {
			answer = &a.id.envoy
		}
		if len(a.remove) == 0 {
			return envoyReply{wire: answer}, nil // shared and never modified
		}
		res := answer.message()
		res.GetOkResponse().HeadersToRemove = a.remove
		return envoyReply{msg: res}, nil
	}
	headers := make([]*corev3.HeaderValueOption, 0, len(a.headers))
	for _, h := range a.headers {
		headers = append(headers, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: h.name, Value: h.value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	return envoyReply{msg: &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(answerFor(r).grpc), Message: r.Description()},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(a.status)},
			Headers: headers,
			Body:    a.body,
		}},
	}}, nil
}

// grpcMessage percent-encodes a grpc-message value (gRPC over HTTP/2 spec).
func grpcMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			b.WriteString("%" + strings.ToUpper(strconv.FormatUint(uint64(c)>>4, 16)+strconv.FormatUint(uint64(c)&15, 16)))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
