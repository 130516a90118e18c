package server

import (
	"context"
	"fmt"
	"strings"

	"github.com/vakt-dev/vakt/authz"
)

// ExplainRequest is a request that has not happened: which application,
// what is asked, and the token it would carry ("" for none).
type ExplainRequest struct {
	App           string // an application id, cluster:namespace:name
	Method, Path  string
	Authorization string // the Authorization header's value, "" for none
	// Supposed says what the token stands for when the caller made it up
	// (explain --caller), for the explanation's text.
	Supposed string
}

// Explanation is what Check would answer a request, and every step that
// led there.
type Explanation struct {
	Allow bool
	// Steps are label and text pairs, in the order Check takes them.
	Steps [][2]string
}

// String renders the steps one per line, labels aligned.
func (e Explanation) String() string {
	var b strings.Builder
	for _, s := range e.Steps {
		fmt.Fprintf(&b, "%-12s %s\n", s[0], s[1])
	}
	return b.String()
}

// Explain decides r with the runtime's own Checker, the code that decides
// every Check, and says why: the application, the route that matched, the
// token, the caller against the access policy, the scopes, the decision
// and its answer.
func Explain(ctx context.Context, rt *Runtime, r ExplainRequest) Explanation {
	var e Explanation
	step := func(label, format string, args ...any) {
		e.Steps = append(e.Steps, [2]string{label, fmt.Sprintf(format, args...)})
	}
	app, ok := rt.Policy.Application(r.App)
	if !ok {
		step("application", "%s is not configured", r.App)
		explainDecision(step, authz.NoApplication())
		return e
	}
	step("application", "%s", app.ID)
	step("request", "%s %s", r.Method, r.Path)
	d := rt.Checker.Check(ctx, authz.CheckRequest{App: app, Method: r.Method, Path: r.Path, Authorization: r.Authorization})

	switch {
	case d.Reason == authz.ReasonPathInvalid:
		step("path", "refused before any route: %v", d.Err)
	case d.Route > 0:
		step("route", "%s", describeRoute(d.Route-1, &app.Routes[d.Route-1]))
	case d.Reason == authz.ReasonRouteNotFound:
		step("route", "none of the application's %d routes matches", len(app.Routes))
	default:
		step("route", "the application has no routes: any request needs a token")
	}
	if d.Route > 0 && app.Routes[d.Route-1].Public {
		step("token", "not needed: the route is public")
		explainDecision(step, d)
		e.Allow = d.Allow
		return e
	}
	switch {
	case d.Reason == authz.ReasonRouteNotFound || d.Reason == authz.ReasonPathInvalid:
	case r.Authorization == "":
		step("token", "none")
	case d.Claims == nil:
		step("token", "refused: %s", d.Reason.Description())
	default:
		what := "given"
		if r.Supposed != "" {
			what = r.Supposed
		}
		step("token", "%s; verified by identity provider %s", what, d.Provider.Name())
	}
	if d.Claims != nil {
		switch {
		case d.Reason == authz.ReasonCallerMissing:
			step("caller", "the token names no calling application")
		case d.Reason == authz.ReasonCallerDenied:
			step("caller", "%s: accessPolicy.inbound.rules has no rule naming it (rules: %s)", d.Caller, ruleList(app))
		case d.Caller != "":
			step("caller", "%s: allowed by accessPolicy.inbound.rules", d.Caller)
		default:
			step("caller", "not checked: an external identity provider's token, admitted by the application's authentication")
		}
		reached := d.Allow || d.Reason == authz.ReasonScopeInsufficient || d.Reason == authz.ReasonClaimNotForwardable
		if reached && d.Route > 0 && len(app.Routes[d.Route-1].Scopes) > 0 {
			step("scopes", "needs %s; the token holds %s", strings.Join(app.Routes[d.Route-1].Scopes, " "), orNone(d.Claims.ScopeText()))
		}
	}
	explainDecision(step, d)
	e.Allow = d.Allow
	return e
}

func explainDecision(step func(label, format string, args ...any), d authz.Decision) {
	if d.Allow {
		step("decision", "allow")
		return
	}
	a := answerFor(d.Reason)
	if d.Reason.Outage() {
		step("decision", "cannot decide (%s: %s): Check answers gRPC %s, Envoy its status_on_error", d.Reason, d.Reason.Description(), grpcName(a.grpc))
		return
	}
	step("decision", "deny (%s: %s): HTTP %d", d.Reason, d.Reason.Description(), a.http)
	if d.Err != nil {
		step("cause", "%v", d.Err)
	}
}

func ruleList(app *authz.Application) string {
	if len(app.Inbound) == 0 {
		return "none"
	}
	return strings.Join(app.Inbound, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return `"` + s + `"`
}
