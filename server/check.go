package server

import (
	"context"
	"encoding/json"
	"log/slog"
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
	res, err := s.checkWire(ctx, req)
	if p, ok := res.(*preMarshalled); ok {
		return p.message(), err
	}
	r, _ := res.(*authv3.CheckResponse)
	return r, err
}

// checkWire is Check as the gRPC server calls it (authorizationDesc): an
// allow that needs no change for this request is its pre-marshalled answer,
// written as it is (codec); anything else a *authv3.CheckResponse.
func (s *authorizationService) checkWire(ctx context.Context, req *authv3.CheckRequest) (any, error) {
	var start time.Duration
	if s.metrics != nil {
		start = s.metrics.checkStart()
	}
	var span trace.Span // nil unless traced: the untraced Check pays a comparison
	if s.obs.tracer != nil {
		ctx, span = s.startCheck(ctx, req)
		defer endOnPanic(span)
	}
	o := s.decide(ctx, req)
	if s.metrics != nil {
		s.metrics.observeCheck(o.d.Reason, start)
	}
	if span != nil {
		endCheckSpan(span, &o)
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
	return o.res, o.err
}

// checkOutcome is a Check decided: the answer, and what the decision log
// says of it.
type checkOutcome struct {
	res any
	err error
	rt  *Runtime
	d   authz.Decision
	app *authz.Application // nil when the request named none (logged apart)

	method, path string // as Check read them, when app is set
}

// decide is checkWire's answer, and the decision behind it.
func (s *authorizationService) decide(ctx context.Context, req *authv3.CheckRequest) checkOutcome {
	rt := s.cur.Load()
	httpReq := req.GetAttributes().GetRequest().GetHttp()
	if httpReq == nil {
		d := authz.Decision{Reason: authz.ReasonRequestInvalid}
		return checkOutcome{res: denied(d, "", false), rt: rt, d: d}
	}
	headers := requestHeaders{m: httpReq.GetHeaders(), raw: httpReq.GetHeaderMap().GetHeaders()}
	if len(headers.m)+len(headers.raw) > maxCheckHeaders {
		// Envoy sends 100 headers at most by default; a request with
		// thousands did not come through a proxy, and is not worked on.
		d := authz.Decision{Reason: authz.ReasonRequestInvalid}
		return checkOutcome{res: denied(d, "", false), rt: rt, d: d}
	}
	grpcCall := strings.HasPrefix(headers.get("content-type"), "application/grpc")
	app, ok := findApplication(rt, req.GetAttributes())
	if !ok {
		// A configuration problem rather than a client's: say which request
		// found no application, so the route or host can be fixed.
		attrs := req.GetAttributes()
		s.log.Warn("check denied: no application for the request",
			"context_extension", attrs.GetContextExtensions()[ContextExtensionApp],
			"destination_principal", attrs.GetDestination().GetPrincipal(),
			"host", httpReq.GetHost(), "path", truncatePath(httpReq.GetPath()))
		d := authz.NoApplication()
		return checkOutcome{res: denied(d, "", grpcCall), rt: rt, d: d}
	}
	path := httpReq.GetPath()
	if path == "" {
		path = headers.get(":path")
	}
	method := httpReq.GetMethod()
	if method == "" {
		method = headers.get(":method")
	}
	d := rt.Checker.Check(ctx, authz.CheckRequest{App: app, Method: method, Path: path, Authorization: headers.get("authorization")})
	if !d.Allow {
		if d.Reason.Outage() {
			// The cause names URLs and addresses: the decision log has
			// it, Envoy gets the reason's description.
			return checkOutcome{err: status.Error(answerFor(d.Reason).grpc, d.Reason.Description()), rt: rt, d: d, app: app, method: method, path: path}
		}
		return checkOutcome{res: denied(d, app.ID, grpcCall), rt: rt, d: d, app: app, method: method, path: path}
	}
	return checkOutcome{res: allowed(d, app, headers), rt: rt, d: d, app: app, method: method, path: path}
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
// the context extension Envoy's route sets, the destination principal of an
// Istio mesh (spiffe://<trust domain>/ns/<namespace>/sa/<name>, in vakt's
// cluster), the request's host.
func findApplication(rt *Runtime, attrs *authv3.AttributeContext) (*authz.Application, bool) {
	if id := attrs.GetContextExtensions()[ContextExtensionApp]; id != "" {
		return rt.Policy.Application(id)
	}
	if ns, sa, ok := spiffeWorkload(attrs.GetDestination().GetPrincipal(), rt.Config.TrustDomain); ok {
		return rt.Policy.Application(authz.AppID{Cluster: rt.Config.Cluster, Namespace: ns, Name: sa}.String())
	}
	host := attrs.GetRequest().GetHttp().GetHost()
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

// requestHeaders are a CheckRequest's headers, wherever Envoy put them: in
// headers, or in header_map when its encode_raw_headers is set (a name may
// repeat there, and a value may be raw bytes). Both are read, so that no
// header escapes vakt by arriving in the other.
type requestHeaders struct {
	m   map[string]string
	raw []*corev3.HeaderValue
}

// get returns a header's value; repeated values are joined with ",", as
// HTTP combines them (and as Envoy's headers map has them).
// Joining is linear: a request may repeat a header a thousand times.
func (h requestHeaders) get(name string) string {
	v := h.m[name]
	var b *strings.Builder
	for _, hv := range h.raw {
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

// each calls f with every header name, once per occurrence.
func (h requestHeaders) each(f func(name string)) {
	for name := range h.m {
		f(name)
	}
	for _, hv := range h.raw {
		f(hv.GetKey())
	}
}

// spoofsIdentity reports whether a client's header name would reach an
// application as one of vakt's: x-vakt-* in any case, and with '_' or '.'
// for '-', which CGI, WSGI and PHP upstreams read alike (x_vakt_subject and
// x.vakt.subject are HTTP_X_VAKT_SUBJECT, as x-vakt-subject is).
func spoofsIdentity(name string) bool {
	const prefix = authz.IdentityHeaderPrefix
	if len(name) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c == '_' || c == '.' {
			c = '-'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
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

// allowed is the allow answer: the one built for this token and
// application (once per verified token: the same token for the same
// application always gets the same headers and metadata), or for a
// public route the empty one, and a response of its own only when this
// request's headers call for removals.
func allowed(d authz.Decision, app *authz.Application, reqHeaders requestHeaders) any {
	answer := publicAllow
	if d.Claims != nil {
		answer = d.Derive(app, func() (any, int) {
			a := identityAnswer(d, app)
			return a, a.size()
		}).(*preMarshalled)
	}
	// Envoy removes headers after setting them (ext_authz.cc, onComplete):
	// list only the client's x-vakt-* headers vakt does not set itself.
	var remove, more []string
	reqHeaders.each(func(name string) {
		if spoofsIdentity(name) && !answer.setsHeader(app, name, &more) {
			remove = append(remove, name)
		}
	})
	// Sorted, as the map's order is random and the answer's is not; each
	// once (a name may repeat in header_map), in O(n log n).
	slices.Sort(remove)
	remove = slices.Compact(remove)
	if app.StripAuthorization && d.Claims != nil {
		remove = append(remove, "authorization")
	}
	if len(remove) == 0 {
		return answer // shared and never modified
	}
	res := answer.message()
	res.GetOkResponse().HeadersToRemove = remove
	return res
}

// identityAnswer is the allow answer for a token and an application,
// marshalled: the identity headers, and the claims as dynamic metadata.
// The answer is kept with the token in the verified-token cache, which
// counts it at authz.DerivedAllowance bytes: a token whose claims would
// make it larger is answered without them in dynamic_metadata (the
// identity headers are always there), and one whose headers alone are
// larger has its answer built on every Check (Derive does not keep it).
// Both are written in their wire form straight from the claims, with no
// message built and no reflection, into one buffer of their size (rounded
// up to its allocation's size class).
func identityAnswer(d authz.Decision, app *authz.Application) *preMarshalled {
	raw := d.RawClaims() // parsed by the verification on a cache miss
	var stack [8]answerHeader
	hs, sets := identityHeaders(d, app, raw, stack[:0])
	n := identityWireSize(hs)
	var md structWire
	mdSize := 0
	if !app.NoDynamicMetadata {
		// An answer past the allowance goes without its metadata, so that
		// one large token cannot take a large share of the cache.
		if m, err := md.size(metadataNamespace, raw); err == nil && n+m <= authz.DerivedAllowance {
			mdSize = m
		}
	}
	// Grown, not made: append rounds the capacity up to the allocation's
	// size class, so that preMarshalled.size counts what it costs.
	wire := appendIdentityWire(slices.Grow([]byte(nil), n+mdSize), hs)
	if mdSize > 0 {
		wire = md.append(wire, metadataNamespace, raw)
	}
	return newPreMarshalledBytes(wire, sets)
}

// answerHeader is a header an allow answer sets.
type answerHeader struct{ name, value string }

// identityHeaders appends to hs the headers of the allow answer for a token
// and an application, those with a value, in the order of
// answerHeaders(app), and says which they are as preMarshalled.sets has
// them.
func identityHeaders(d authz.Decision, app *authz.Application, raw map[string]any, hs []answerHeader) (_ []answerHeader, sets uint64) {
	i := 0
	set := func(name, value string) {
		if value != "" {
			hs = append(hs, answerHeader{name, value})
			sets |= 1 << min(i, moreHeaders)
		}
		i++
	}
	c := d.Claims
	set(authz.HeaderSubject, c.Subject())
	set(authz.HeaderClientID, d.Caller)
	set(authz.HeaderIdentityProvider, d.Provider.IdentityProvider(c))
	set(authz.HeaderScope, c.ScopeText())
	for _, fc := range app.ForwardClaims {
		set(fc.Header, claimString(raw[fc.Claim]))
	}
	return hs, sets
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
// byte (TestIdentityWire). The values are claims, which the token's parser
// made valid UTF-8, as a string field must be.
func appendIdentityWire(b []byte, hs []answerHeader) []byte {
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
		b = protowire.AppendTag(b, headerValue, protowire.BytesType)
		b = protowire.AppendString(b, h.value)
		b = protowire.AppendTag(b, optionAppendAction, protowire.VarintType)
		b = protowire.AppendVarint(b, overwriteIfExistsOrAdd)
	}
	return b
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

// claimString renders a claim as a header value: strings as they are,
// anything else as JSON.
func claimString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case json.Number:
		return x.String()
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return ""
		}
		return string(b)
	}
}

// denied builds an RFC 6750 denial from the reason table: the status,
// WWW-Authenticate on 401 and on bearer errors, a JSON body, and for gRPC
// requests grpc-status and grpc-message, as gRPC clients otherwise see an
// HTTP status where they expect a gRPC one. Every text in it is the
// reason's fixed description.
func denied(d authz.Decision, realm string, grpcCall bool) *authv3.CheckResponse {
	a := answerFor(d.Reason)
	desc := d.Reason.Description()
	var headers []*corev3.HeaderValueOption
	add := func(k, v string) {
		headers = append(headers, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: k, Value: v},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
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
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(a.grpc), Message: desc},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(a.http)},
			Headers: headers,
			Body:    string(b),
		}},
	}
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
