package server

import (
	"context"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/authz"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// introspector answers "is this token valid, and what does it say?" for
// both faces: gRPC IntrospectionService and POST /api/v1/introspect.
type introspector struct {
	// validator returns the validator in force: the runtime's (it changes on
	// reload) or the agent's.
	validator func() *authz.Validator
	metrics   *Metrics
	log       *slog.Logger
	obs       *observer // nil logs no decision and traces nothing
}

// introspection is the answer about one token.
type introspection struct {
	Active bool
	Reason authz.Reason   // why not active
	Error  string         // the human-readable reason, when not active
	Claims map[string]any // when active
}

// introspect validates token for provider. It returns a description of
// what is missing for an unusable request; every verdict on the token itself
// is an introspection.
func (in *introspector) introspect(ctx context.Context, provider, token string) (introspection, string) {
	start := time.Now()
	switch {
	case provider == "":
		return introspection{}, "identity_provider is required"
	case token == "":
		return introspection{}, "token is required"
	}
	c, raw, err := in.validator().ValidateRaw(ctx, provider, token)
	if err != nil {
		r := authz.ReasonOf(err)
		res := introspection{Reason: r, Error: introspectionError(err, r, provider)}
		in.metrics.observeIntrospection(start, res)
		in.observe(ctx, start, provider, nil, r, err)
		return res, ""
	}
	res := introspection{Active: true, Claims: raw}
	in.metrics.observeIntrospection(start, res)
	in.observe(ctx, start, provider, c, authz.ReasonNone, nil)
	return res, ""
}

// observe writes an introspection's decision log line and sets its span's
// attributes (the face that started the span ends it).
func (in *introspector) observe(ctx context.Context, start time.Time, provider string, c *authz.Claims, r authz.Reason, err error) {
	if in.obs == nil {
		return
	}
	setting := in.obs.setting()
	if !logs(setting, r) && r.Outage() {
		// log.decisions: none still leaves the cause of an outage.
		in.log.Debug("introspection could not be decided", "identity_provider", truncate(provider, 64), "reason", r.String(), "cause", err)
	}
	in.obs.decisions.logIntrospection(ctx, setting, provider, c, r, err, time.Since(start))
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String("vakt.provider", truncate(provider, 64)))
	}
}

// startGRPC and startHTTP start an introspection's span (a recording one
// only when traced).
func (in *introspector) startGRPC(ctx context.Context, method string) (context.Context, trace.Span) {
	if in.obs == nil {
		return ctx, trace.SpanFromContext(ctx)
	}
	return in.obs.startGRPC(ctx, method)
}

func (in *introspector) startHTTP(r *http.Request) (context.Context, trace.Span) {
	if in.obs == nil {
		return r.Context(), trace.SpanFromContext(r.Context())
	}
	return in.obs.startHTTP(r)
}

// introspectionReason is an introspection's reason, for its span: none
// when active, request_invalid for a request that could not be asked.
func introspectionReason(res introspection, bad string) authz.Reason {
	if bad != "" {
		return authz.ReasonRequestInvalid
	}
	return res.Reason
}

// introspectionError is the human-readable reason a token was rejected.
// The NAIS contract asks for a specific reason, and the engine's messages
// are vakt's own words ("token is malformed: header is not a JSON object"),
// so they are shown as they are; an outage gets its fixed description only,
// as its cause names URLs and addresses. An unknown provider is named so the
// caller sees their typo.
func introspectionError(err error, r authz.Reason, provider string) string {
	switch {
	case r.Outage():
		return r.Description()
	case r == authz.ReasonProviderUnknown:
		if len(provider) > 64 {
			provider = provider[:64] + "…"
		}
		return "identity provider " + strconv.Quote(provider) + " is not configured"
	}
	return err.Error()
}

// introspectionService is vakt.v1.IntrospectionService.
type introspectionService struct {
	vaktv1.UnimplementedIntrospectionServiceServer
	in *introspector
}

var _ vaktv1.IntrospectionServiceServer = (*introspectionService)(nil)

func (s *introspectionService) Introspect(ctx context.Context, req *vaktv1.IntrospectRequest) (*vaktv1.IntrospectResponse, error) {
	ctx, span := s.in.startGRPC(ctx, vaktv1.IntrospectionService_Introspect_FullMethodName)
	defer endOnPanic(span)
	res, bad := s.in.introspect(ctx, req.GetIdentityProvider(), req.GetToken())
	defer func() { endSpan(span, introspectionReason(res, bad)) }()
	if bad != "" {
		return nil, grpcRequestError(bad)
	}
	out := &vaktv1.IntrospectResponse{Active: res.Active, Error: res.Error}
	if res.Active {
		claims, err := claimsStruct(res.Claims)
		if err != nil {
			// The claims came out of a JSON decoder, so this cannot happen;
			// if it does, fail closed rather than answer half.
			return nil, status.Error(codes.Internal, authz.ReasonInternal.Description())
		}
		out.Claims = claims
	}
	return out, nil
}

// writeIntrospectError answers a request that cannot be introspected as the
// NAIS contract has every answer: with active (false) and the error, and
// nothing else; the status says what was wrong with the request.
func writeIntrospectError(w http.ResponseWriter, e *requestError) {
	writeJSON(w, e.status, map[string]any{"active": false, "error": e.description})
}

// introspectHandler is POST /api/v1/introspect, the NAIS contract.
type introspectHandler struct{ in *introspector }

var _ http.Handler = (*introspectHandler)(nil)

func (h *introspectHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, span := h.in.startHTTP(r)
	defer endOnPanic(span)
	f, rerr := readFields(w, r, "identity_provider", "token")
	if rerr != nil {
		endSpan(span, authz.ReasonRequestInvalid)
		writeIntrospectError(w, rerr)
		return
	}
	res, bad := h.in.introspect(ctx, f["identity_provider"], f["token"])
	endSpan(span, introspectionReason(res, bad))
	if bad != "" {
		writeIntrospectError(w, badRequest(bad))
		return
	}
	// "The response is always a HTTP 200 OK response with a JSON body."
	if !res.Active {
		writeJSON(w, http.StatusOK, map[string]any{"active": false, "error": res.Error})
		return
	}
	body := make(map[string]any, len(res.Claims)+1)
	maps.Copy(body, res.Claims) // never write into the cached claims
	body["active"] = true
	writeJSON(w, http.StatusOK, body)
}
