package server

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
)

// logs reports whether a Check decided for reason r gets a decision log
// line: log.decisions deny (the default) logs refusals and outages, all
// every Check, none nothing.
func (rt *Runtime) logs(r authz.Reason) bool {
	switch rt.Config.Log.Decisions {
	case config.LogDecisionsAll:
		return true
	case config.LogDecisionsNone:
		return false
	}
	return r != authz.ReasonNone
}

// logDecision writes the decision log line of a Check: which application,
// which caller, what was asked, the decision, its reason, and the rule or
// route that decided it. It never carries a token or a claim's value: the
// token is named by its jti, the subject by a keyed hash; the path goes
// without its query (an API with personal data in its paths has it here:
// the README says so).
func (s *authorizationService) logDecision(ctx context.Context, req *authv3.CheckRequest, o *checkOutcome, latency time.Duration) {
	d := &o.d
	level := slog.LevelInfo
	if d.Reason.Outage() {
		level = slog.LevelWarn
	}
	if !s.log.Enabled(ctx, level) {
		return
	}
	httpReq := req.GetAttributes().GetRequest().GetHttp()
	headers := requestHeaders{m: httpReq.GetHeaders(), raw: httpReq.GetHeaderMap().GetHeaders()}
	attrs := []slog.Attr{
		slog.String("decision", checkResult(d.Reason)),
		slog.String("reason", d.Reason.String()),
		slog.String("application", o.app.ID),
		slog.String("method", truncate(o.method, 32)),
		slog.String("path", truncatePath(o.path)),
		slog.String("rule", decidingRule(o.app, d)),
	}
	if d.Caller != "" {
		attrs = append(attrs, slog.String("caller", d.Caller))
	}
	if d.Provider != nil {
		attrs = append(attrs, slog.String("provider", d.Provider.Name()))
	}
	if d.Claims != nil {
		if jti := d.Claims.ID(); jti != "" {
			attrs = append(attrs, slog.String("jti", truncate(jti, 128)))
		}
		if d.Claims.Subject != "" {
			// A keyed hash, so that one user's requests can be followed
			// without the log holding who they are, nor a guess at a
			// small space of subjects (employee or national ids) finding
			// them.
			mac := hmac.New(sha256.New, s.subKey[:])
			mac.Write([]byte(d.Claims.Subject))
			attrs = append(attrs, slog.String("sub_hash", hex.EncodeToString(mac.Sum(nil)[:8])))
		}
	}
	if latency > 0 {
		attrs = append(attrs, slog.Float64("latency_seconds", latency.Seconds()))
	}
	if id := headers.get("x-request-id"); id != "" {
		attrs = append(attrs, slog.String("request_id", truncate(id, 128)))
	}
	if trace := traceID(headers.get("traceparent")); trace != "" {
		attrs = append(attrs, slog.String("trace_id", trace))
	}
	if d.Err != nil {
		attrs = append(attrs, slog.String("cause", d.Err.Error()))
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
