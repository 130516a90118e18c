package authz

import (
	"context"
	"strings"

	"github.com/vakt-dev/vakt/internal/cache"
)

// CheckRequest is one HTTP request to an application, as Check sees it.
type CheckRequest struct {
	App           *Application
	Method        string
	Path          string // the request target, query included
	Authorization string // the Authorization header; "" when absent
}

// Decision is the answer to a CheckRequest. The engine says why; the
// adapters decide how to say it (server maps the Reason to a status, an
// RFC 6750 error code and a public description).
type Decision struct {
	Allow bool
	// Reason is why the request was refused, or could not be decided
	// (Reason.Outage): ReasonNone on allow.
	Reason Reason
	// Err is the cause, for the log only: it may name URLs and addresses.
	Err error
	// Scope lists the scopes the route needs, on ReasonScopeInsufficient.
	Scope string
	// Claims of the token, once it verified: on allow (nil on a public
	// route), and on a refusal of a verified token, for the decision log.
	Claims *Claims
	// Provider verified the token, whenever Claims is set.
	Provider *Provider
	// Caller is the calling application the token names, if any (an
	// application id: a token naming anything else has none).
	Caller string
	// Route is the application's route that matched, numbered from 1 in
	// the order of its routes; 0 when none matched or it has none. It says
	// which rule decided (the decision log, explain).
	Route int

	// raw is every claim, when the token was verified for this decision
	// (a cache miss): parsed once, and never kept with the claims.
	raw map[string]any
	// key is where the verified-token cache keeps the token, when kept.
	key  cache.Key
	kept bool
}

// TokenKey is the key under which the verified-token cache keeps the
// token the decision verified: the SHA-256 of its signature, which names
// the token without holding it. ok is false when the cache was not asked to
// keep it (no cache, a retired provider's token, no token). A face that
// keeps what it makes of the claims per token (Check's answer, in its wire
// form) keys it by this: the same signature is the same verified token.
func (d *Decision) TokenKey() (key [32]byte, ok bool) { return d.key, d.kept }

// RawClaims returns every claim of the token as Claims.Raw does, in a map of
// the caller's own: the one its verification parsed when this decision
// verified the token, so that a cache miss parses the payload once.
func (d *Decision) RawClaims() map[string]any {
	if d.raw != nil {
		return d.raw
	}
	return d.Claims.Raw()
}

// Checker decides Check requests: the bearer token, the application's
// access policy, its routes and their scopes.
type Checker struct {
	Validator *Validator
	// Own is the name of the provider of tokens vakt issued.
	Own string
}

// Check decides req. In order:
//  1. the path (NormalizePath): bad → ReasonPathInvalid;
//  2. the route: with routes, none matching → ReasonRouteNotFound; a public
//     route → allow;
//  3. the bearer token: none → ReasonTokenMissing, a malformed header →
//     ReasonAuthorizationInvalid, an invalid token → its ReasonToken*, keys
//     that cannot be had → ReasonKeysUnavailable (an outage);
//  4. whose token: vakt's own with aud = the application, or one of the
//     application's authentication entries (provider and audience) → else
//     ReasonTokenAudience or ReasonTokenIssuer;
//  5. for vakt's own tokens, the caller they name (client_id, else azp):
//     an application id → else ReasonCallerMissing, which the inbound rules
//     allow → else ReasonCallerDenied. External tokens name no caller;
//  6. every scope of the route → else ReasonScopeInsufficient;
//  7. every claim the allow response forwards as a header (sub, the scopes,
//     idp of vakt's own tokens, the application's forwardClaims) can be a
//     header value as it is → else ReasonClaimNotForwardable: vakt never
//     tells an application something other than what the token says.
func (c *Checker) Check(ctx context.Context, req CheckRequest) Decision {
	path, err := NormalizePath(req.Path, req.App.PathParameters)
	if err != nil {
		return deny(ReasonPathInvalid, err)
	}
	var route *Route
	number := 0
	if routes := req.App.Routes; len(routes) > 0 {
		for i := range routes {
			if routes[i].matches(req.Method, path) {
				route, number = &routes[i], i+1
				break
			}
		}
		if route == nil {
			return deny(ReasonRouteNotFound, nil)
		}
		if route.Public {
			return Decision{Allow: true, Route: number}
		}
	}
	d := c.checkToken(ctx, req, route)
	d.Route = number
	return d
}

// checkToken is Check past the route: the token, the caller and the
// route's scopes.
func (c *Checker) checkToken(ctx context.Context, req CheckRequest, route *Route) Decision {
	if req.Authorization == "" {
		return deny(ReasonTokenMissing, nil)
	}
	token, err := splitBearer(req.Authorization)
	if err == errNotBearer {
		// RFC 6750 §3.1: another scheme is no token at all; the answer is
		// a plain challenge, without an error code.
		return deny(ReasonTokenMissing, err)
	}
	if err != nil {
		return deny(ReasonAuthorizationInvalid, err)
	}
	v := c.Validator
	e, key, hit, err := v.cachedByIssuer(token)
	claims, provider := e.claims, e.provider
	var raw map[string]any
	if !hit {
		if !validB64Token(token) {
			return deny(ReasonAuthorizationInvalid, ErrBadAuthorization)
		}
		claims, raw, provider, key, err = v.verifyByIssuer(ctx, token)
	}
	if err != nil {
		return deny(ReasonOf(err), err)
	}
	// A refusal of a verified token says whose it was, for the decision
	// log; the answer to the client never carries any of it.
	refuse := func(r Reason, caller string) Decision {
		return Decision{Reason: r, Claims: claims, Provider: provider, Caller: caller}
	}
	app := req.App
	own := provider.Name() == c.Own
	switch {
	case own && claims.HasAudience(app.ID):
		// The application is registered: the Validator's own rule (admit)
		// holds, at no lookup's cost.
	case v.admit(provider, claims) != nil:
		// As the provider's own refusal would be: no claims named.
		return deny(ReasonTokenAudience, ErrAudienceInvalid)
	case own:
		return refuse(ReasonTokenAudience, "")
	default:
		if r := acceptsExternal(app, provider.Name(), claims); r != ReasonNone {
			return refuse(r, "")
		}
	}
	// The caller is named only by vakt's own tokens, which vakt minted for
	// a client it authenticated. An external provider's client_id or azp
	// is that provider's name for a client, and may be chosen to look like
	// an application id: it is neither checked against the rules nor told
	// to the application (its authentication entry's audience admits it).
	var caller string
	if own {
		caller = claims.Caller()
		if !isApplicationID(caller) {
			return refuse(ReasonCallerMissing, "")
		}
		if !app.Allows(caller) {
			return refuse(ReasonCallerDenied, caller)
		}
	}
	if route != nil {
		for _, s := range route.Scopes {
			if !claims.HasScope(s) {
				d := refuse(ReasonScopeInsufficient, caller)
				d.Scope = route.scopeText
				return d
			}
		}
	}
	if !forwardable(claims, own, app) {
		return refuse(ReasonClaimNotForwardable, caller)
	}
	return Decision{Allow: true, Claims: claims, Provider: provider, Caller: caller, raw: raw,
		key: key, kept: v.cache != nil && key != cache.Key{}}
}

// forwardable reports whether every claim the allow response sets as a
// header can be one. The caller needs no check: it is forwarded only as an
// application id the rules allow.
func forwardable(c *Claims, own bool, app *Application) bool {
	if c.unsafeScope {
		return false
	}
	if c.count(listUnsafe) == 0 {
		return true
	}
	if !c.forwardable("sub") || (own && !c.forwardable("idp")) {
		return false
	}
	for _, fc := range app.ForwardClaims {
		if !c.forwardable(fc.Claim) {
			return false
		}
	}
	return true
}

// acceptsExternal reports why the application does not accept a token of
// an external provider, or ReasonNone when it does.
func acceptsExternal(app *Application, provider string, claims *Claims) Reason {
	listed := false
	for _, a := range app.Authentication {
		if a.Provider != provider {
			continue
		}
		listed = true
		if a.Audience == "" || claims.HasAudience(a.Audience) {
			return ReasonNone
		}
	}
	if listed {
		return ReasonTokenAudience
	}
	return ReasonTokenIssuer
}

func deny(r Reason, cause error) Decision { return Decision{Reason: r, Err: cause} }

// NoApplication is the decision for a request no application claims.
func NoApplication() Decision { return deny(ReasonApplicationUnknown, nil) }

// scopeList joins scopes for a WWW-Authenticate scope attribute.
func scopeList(scopes []string) string { return strings.Join(scopes, " ") }
