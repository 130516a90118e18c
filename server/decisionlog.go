package server

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
)

// maxCause bounds a logged cause, which may quote what a client sent.
const maxCause = 512

// decisionLog writes the decision log: a line per decision of Check,
// Exchange and Introspect, as log.decisions asks.
type decisionLog struct {
	log *slog.Logger
	// subKey keys sub_hash; made at start, so that a hash follows a user
	// within one process (across Check, Exchange and Introspect) and is
	// no one's to reverse.
	subKey [32]byte
}

func newDecisionLog(log *slog.Logger) *decisionLog {
	l := &decisionLog{log: log}
	_, _ = rand.Read(l.subKey[:]) // crypto/rand.Read never fails (Go 1.24)
	return l
}

// logs reports whether a decision for reason r gets a line: log.decisions
// deny (the default) logs refusals and outages, all every decision (allows
// sampled by log.sampleAllows), none nothing.
func logs(l config.Log, r authz.Reason) bool {
	switch l.Decisions {
	case config.LogDecisionsAll:
		if r == authz.ReasonNone && l.SampleAllows != nil {
			return mathrand.Float64() < *l.SampleAllows
		}
		return true
	case config.LogDecisionsNone:
		return false
	}
	return r != authz.ReasonNone
}

// level is a decision's: an outage is a warning, any other decision INFO.
func decisionLevel(r authz.Reason) slog.Level {
	if r.Outage() {
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

// subHash is a keyed hash of a subject, so that one user's requests can be
// followed without the log holding who they are, nor a guess at a small
// space of subjects (employee or national ids) finding them.
func (l *decisionLog) subHash(sub string) string {
	mac := hmac.New(sha256.New, l.subKey[:])
	mac.Write([]byte(sub))
	return hex.EncodeToString(mac.Sum(nil)[:8])
}

// tokenAttrs are what a line says of a verified token: its jti and
// sub_hash, never its contents.
func (l *decisionLog) tokenAttrs(attrs []slog.Attr, c *authz.Claims) []slog.Attr {
	if c == nil {
		return attrs
	}
	if jti := c.ID(); jti != "" {
		attrs = append(attrs, slog.String("jti", truncate(jti, 128)))
	}
	if c.Subject() != "" {
		attrs = append(attrs, slog.String("sub_hash", l.subHash(c.Subject())))
	}
	return attrs
}

// traceAttrs are the trace a decision belongs to: ctx's span, or the
// caller's trace context read into ctx.
func traceAttrs(ctx context.Context, attrs []slog.Attr) []slog.Attr {
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	return attrs
}

// logExchange writes an exchange's decision log line.
func (l *decisionLog) logExchange(ctx context.Context, setting config.Log, o *exchange.Outcome, latency time.Duration) {
	r := authz.ReasonNone
	if o.Err != nil {
		r = o.Err.Reason()
	}
	level := decisionLevel(r)
	if !logs(setting, r) || !l.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("decision", checkResult(r)),
		slog.String("reason", r.String()),
	}
	if o.Client != "" {
		attrs = append(attrs, slog.String("client", o.Client))
	}
	if o.Target != "" {
		attrs = append(attrs, slog.String("target", truncate(o.Target, 200)))
	}
	if o.Provider != "" {
		attrs = append(attrs, slog.String("provider", o.Provider))
	}
	if o.Rule != "" {
		attrs = append(attrs, slog.String("rule", o.Rule))
	}
	attrs = l.tokenAttrs(attrs, o.Subject)
	attrs = append(attrs, slog.Float64("latency_seconds", latency.Seconds()))
	attrs = traceAttrs(ctx, attrs)
	if o.Err != nil {
		// What the client was told: the reason's words, or the detail
		// that replaced them ("sub must equal iss").
		attrs = append(attrs, slog.String("description", publicText(truncate(o.Err.Description(), 200))))
		if o.Err.Err != nil {
			attrs = append(attrs, slog.String("cause", truncate(o.Err.Err.Error(), maxCause)))
		}
	}
	l.log.LogAttrs(ctx, level, "exchange", attrs...)
}

// logIntrospection writes an introspection's decision log line: the token
// active (allow) or not (deny, with the reason), or an outage (error).
func (l *decisionLog) logIntrospection(ctx context.Context, setting config.Log, provider string, c *authz.Claims, r authz.Reason, cause error, latency time.Duration) {
	level := decisionLevel(r)
	if !logs(setting, r) || !l.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("decision", checkResult(r)),
		slog.String("reason", r.String()),
		slog.String("provider", truncate(provider, 64)),
	}
	if c != nil {
		if caller := c.Caller(); caller != "" {
			attrs = append(attrs, slog.String("caller", truncate(caller, 200)))
		}
	}
	attrs = l.tokenAttrs(attrs, c)
	attrs = append(attrs, slog.Float64("latency_seconds", latency.Seconds()))
	attrs = traceAttrs(ctx, attrs)
	if cause != nil {
		attrs = append(attrs, slog.String("cause", truncate(cause.Error(), maxCause)))
	}
	l.log.LogAttrs(ctx, level, "introspect", attrs...)
}

// logDecision writes the decision log line of a Check: which application,
// which caller, what was asked, the decision, its reason, and the rule or
// route that decided it. It never carries a token or a claim's value: the
// token is named by its jti, the subject by a keyed hash; the path goes
// without its query (an API with personal data in its paths has it here:
// docs/operations.md says so).
func (s *authorizationService) logDecision(ctx context.Context, req *checkRequest, o *checkOutcome, latency time.Duration) {
	d := &o.d
	level := decisionLevel(d.Reason)
	if !s.log.Enabled(ctx, level) {
		return
	}
	headers := req.headers
	attrs := []slog.Attr{
		slog.String("decision", checkResult(d.Reason)),
		slog.String("reason", d.Reason.String()),
		slog.String("application", o.app.ID),
		slog.String("method", truncate(req.method, 32)),
		slog.String("path", truncatePath(req.path)),
		slog.String("rule", decidingRule(o.app, d)),
	}
	if d.Caller != "" {
		attrs = append(attrs, slog.String("caller", truncate(d.Caller, 200)))
	}
	if d.Provider != nil {
		attrs = append(attrs, slog.String("provider", d.Provider.Name()))
	}
	attrs = s.obs.decisions.tokenAttrs(attrs, d.Claims)
	if latency > 0 {
		attrs = append(attrs, slog.Float64("latency_seconds", latency.Seconds()))
	}
	if id := headers.get("x-request-id"); id != "" {
		attrs = append(attrs, slog.String("request_id", truncate(id, 128)))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		// Check's span, traced.
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	} else if id := traceID(headers.get("traceparent")); id != "" {
		attrs = append(attrs, slog.String("trace_id", id))
	} else if id := b3TraceID(headers); id != "" {
		attrs = append(attrs, slog.String("trace_id", id))
	}
	if d.Err != nil {
		attrs = append(attrs, slog.String("cause", truncate(d.Err.Error(), maxCause)))
	}
	s.log.LogAttrs(ctx, level, "check", attrs...)
}

// decidingRule says which part of the application's configuration decided:
// the route that matched and, where the decision turned on it, the access
// policy.
func decidingRule(app *authz.Application, d *authz.Decision) string {
	var route string
	switch {
	case d.Reason == authz.ReasonPathInvalid:
		route = "the path was refused before any route"
	case d.Route > 0 && d.Route <= len(app.Routes):
		route = describeRoute(d.Route-1, &app.Routes[d.Route-1])
	case len(app.Routes) > 0:
		route = "no route matches"
	}
	var policy string
	switch d.Reason {
	case authz.ReasonCallerDenied:
		policy = "accessPolicy.inbound.rules: no rule names " + d.Caller
	case authz.ReasonCallerMissing:
		policy = "accessPolicy.inbound.rules: the token names no calling application"
	case authz.ReasonNone:
		if d.Caller != "" {
			policy = "accessPolicy.inbound.rules: " + d.Caller
		}
	}
	switch {
	case route == "":
		return policy
	case policy == "":
		return route
	}
	return route + "; " + policy
}

// describeRoute is a route as the decision log names it:
// "routes[1] POST /create needs create:users".
func describeRoute(i int, r *authz.Route) string {
	methods := "any method"
	if len(r.Methods) > 0 {
		methods = strings.Join(r.Methods, ",")
	}
	target := r.Path
	if target == "" {
		target = r.PathPrefix + "*"
	}
	needs := "public"
	if !r.Public {
		needs = "needs a token"
		if len(r.Scopes) > 0 {
			needs = "needs " + strings.Join(r.Scopes, " ")
		}
	}
	return fmt.Sprintf("routes[%d] %s %s %s", i, methods, target, needs)
}

// traceID is the trace id of a W3C traceparent header
// (version-traceid-parentid-flags, 55 characters at version 00), or ""
// when it has none valid. It reads fixed offsets: a hostile header costs
// nothing to refuse.
func traceID(traceparent string) string {
	if len(traceparent) < 55 || traceparent[2] != '-' || traceparent[35] != '-' || traceparent[52] != '-' ||
		!lowerHex(traceparent[:2]) || traceparent[:2] == "ff" || (traceparent[:2] == "00" && len(traceparent) != 55) {
		return ""
	}
	id := traceparent[3:35]
	if !lowerHex(id) || !lowerHex(traceparent[36:52]) || id == "00000000000000000000000000000000" {
		return ""
	}
	return id
}

// b3TraceID is the trace id of Zipkin's B3 headers, single (b3:
// traceid-spanid-…) or multi (x-b3-traceid), as 32 hex digits (a 64-bit
// id left-padded, as OpenTelemetry reads it), or "" when none is valid.
func b3TraceID(h checkHeaders) string {
	id := h.get("x-b3-traceid")
	if id == "" {
		id, _, _ = strings.Cut(h.get("b3"), "-")
	}
	if (len(id) != 16 && len(id) != 32) || !lowerHex(id) || strings.Trim(id, "0") == "" {
		return ""
	}
	if len(id) == 16 {
		id = "0000000000000000" + id
	}
	return id
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// truncate cuts s to at most n bytes, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
