package server

import (
	"context"
	"log/slog"
	"net/http"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	grpcmd "google.golang.org/grpc/metadata"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
)

// observer is what the faces record their decisions with, besides the
// metrics: the decision log and the trace.
type observer struct {
	decisions *decisionLog
	// setting is the log setting in force: the runtime's, which a reload
	// changes, or the agent's.
	setting    func() config.Log
	tracer     trace.Tracer // nil: tracing is off
	propagator propagation.TextMapPropagator
}

func newObserver(log *slog.Logger, setting func() config.Log) *observer {
	return &observer{decisions: newDecisionLog(log), setting: setting, propagator: newPropagator()}
}

// WithTracing traces the services' decisions with t (nil traces nothing),
// before they are served.
func (s *Services) WithTracing(t *Tracing) *Services {
	if t != nil {
		s.obs.tracer = t.tracer
	}
	return s
}

// start reads the caller's trace context (W3C or B3) from carrier into ctx
// and, with tracing on, starts the decision's span as its child. Without
// tracing the span records nothing, and the decision log still names the
// caller's trace.
func (o *observer) start(ctx context.Context, carrier propagation.TextMapCarrier, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	ctx = o.propagator.Extract(ctx, carrier)
	if o.tracer == nil {
		return ctx, trace.SpanFromContext(ctx)
	}
	return o.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
}

// startGRPC is start for a gRPC method: the trace context is in the
// request's metadata.
func (o *observer) startGRPC(ctx context.Context, method string) (context.Context, trace.Span) {
	md, _ := grpcmd.FromIncomingContext(ctx)
	method = strings.TrimPrefix(method, "/")
	service, m := splitMethod(method)
	return o.start(ctx, mdCarrier(md), method,
		attribute.String("rpc.system", "grpc"), attribute.String("rpc.service", service), attribute.String("rpc.method", m))
}

func splitMethod(full string) (service, method string) {
	for i := len(full) - 1; i >= 0; i-- {
		if full[i] == '/' {
			return full[:i], full[i+1:]
		}
	}
	return full, ""
}

// endOnPanic, deferred right after a span starts, ends it as an internal
// error when the handler panics (the panic goes on, to the recovery that
// answers it); on any other return it does nothing.
func endOnPanic(span trace.Span) {
	if r := recover(); r != nil {
		endSpan(span, authz.ReasonInternal)
		panic(r)
	}
}

// endSpan ends a decision's span with the decision and its reason; an
// outage is an error.
func endSpan(span trace.Span, r authz.Reason, attrs ...attribute.KeyValue) {
	if !span.IsRecording() {
		span.End()
		return
	}
	span.SetAttributes(attribute.String("vakt.decision", checkResult(r)), attribute.String("vakt.reason", r.String()))
	span.SetAttributes(attrs...)
	if r.Outage() {
		span.SetStatus(codes.Error, r.Description())
	}
	span.End()
}

// startCheck starts a Check's span, a child of the trace of the request
// the proxy asks about: its traceparent or B3 headers.
func (s *authorizationService) startCheck(ctx context.Context, req *checkRequest) (context.Context, trace.Span) {
	if req.headers != nil {
		ctx = s.obs.propagator.Extract(ctx, headerCarrier{req.headers})
	}
	return s.obs.tracer.Start(ctx, "envoy.service.auth.v3.Authorization/Check", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		attribute.String("rpc.system", "grpc"), attribute.String("rpc.service", "envoy.service.auth.v3.Authorization"), attribute.String("rpc.method", "Check")))
}

// endCheckSpan ends a Check's span with what the decision log says of it.
func endCheckSpan(span trace.Span, req *checkRequest, o *checkOutcome) {
	if !span.IsRecording() {
		span.End()
		return
	}
	attrs := make([]attribute.KeyValue, 0, 6)
	if o.app != nil {
		attrs = append(attrs,
			attribute.String("vakt.application", o.app.ID),
			attribute.String("vakt.rule", decidingRule(o.app, &o.d)),
			attribute.String("http.request.method", truncate(req.method, 32)),
			attribute.String("url.path", truncatePath(req.path)))
	}
	if o.d.Caller != "" {
		// A copy: the caller is a view of the cached token's claims
		// (authz.Claims), which a span waiting to be exported would keep
		// whole after the cache let it go.
		attrs = append(attrs, attribute.String("vakt.caller", strings.Clone(o.d.Caller)))
	}
	if o.d.Provider != nil {
		attrs = append(attrs, attribute.String("vakt.provider", o.d.Provider.Name()))
	}
	endSpan(span, o.d.Reason, attrs...)
}

// startHTTP is start for an HTTP request: the trace context is in its
// headers; the span is named for the method and the route.
func (o *observer) startHTTP(r *http.Request) (context.Context, trace.Span) {
	route := r.Pattern
	if _, path, ok := strings.Cut(route, " "); ok {
		route = path // "POST /api/v1/introspect": the method is named apart
	}
	if route == "" || route == "/" {
		// The issuer's routes (the token endpoint under the issuer's
		// path) are served from "/"; each handler serves one path.
		route = r.URL.Path
	}
	return o.start(r.Context(), propagation.HeaderCarrier(r.Header), r.Method+" "+truncatePath(route),
		attribute.String("http.request.method", r.Method), attribute.String("url.path", truncatePath(r.URL.Path)))
}
