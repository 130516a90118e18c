package authz

import (
	"context"
	"errors"
	"slices"
	"strings"
)

// RFC 6750 §3.1 error codes, and access_denied for a caller the access
// policy does not allow (not a scope problem).
const (
	CheckInvalidRequest    = "invalid_request"
	CheckInvalidToken      = "invalid_token"
	CheckInsufficientScope = "insufficient_scope"
	CheckAccessDenied      = "access_denied"
)

// CheckRequest is one HTTP request to an application, as Check sees it.
type CheckRequest struct {
	App           *Application
	Method        string
	Path          string // the request target, query included
	Authorization string // the Authorization header; "" when absent
}

// Decision is the answer to a CheckRequest.
type Decision struct {
	Allow bool
	// Status is the HTTP status of a denial: 400, 401 or 403.
	Status int
	// Error is the RFC 6750 error code of a denial ("" when no credentials
	// were sent, or when no route or application matched).
	Error       string
	Description string
	// Scope lists the scopes a route needs, on insufficient_scope.
	Scope string
	// Claims of the token, on allow; nil on a public route.
	Claims *Claims
	// Caller is the calling application the token names, if any.
	Caller string
}

// Checker decides Check requests: the bearer token, the application's
// access policy, its routes and their scopes.
type Checker struct {
	Validator *Validator
	// Own is the name of the provider of tokens vakt issued.
	Own string
}

// Check decides req. In order:
//  1. the path (NormalizePath): bad → 400 invalid_request;
//  2. the route: with routes, none matching → 403; a public route → allow;
//  3. the bearer token: none → 401 (no error code), malformed header → 400
//     invalid_request, invalid → 401 invalid_token with the engine's reason;
//  4. whose token: vakt's own with aud = the application, or one of the
//     application's authentication entries (provider and audience) → else
//     401 invalid_token;
//  5. the caller the token names (client_id, else azp), when it is an
//     application id: the inbound rules must allow it → else 403
//     access_denied. vakt's own tokens always name one;
//  6. every scope of the route → else 403 insufficient_scope.
func (c *Checker) Check(ctx context.Context, req CheckRequest) Decision {
	path, err := NormalizePath(req.Path)
	if err != nil {
		return deny(400, CheckInvalidRequest, "request path is not acceptable")
	}
	var route *Route
	if routes := req.App.Routes; len(routes) > 0 {
		for i := range routes {
			if routes[i].matches(req.Method, path) {
				route = &routes[i]
				break
			}
		}
		if route == nil {
			return deny(403, "", "no route of the application matches the request")
		}
		if route.Public {
			return Decision{Allow: true}
		}
	}
	if req.Authorization == "" {
		return deny(401, "", "a bearer token is required")
	}
	token, err := splitBearer(req.Authorization)
	if err != nil {
		return deny(400, CheckInvalidRequest, err.Error())
	}
	v := c.Validator
	claims, provider, hit, err := v.cachedByIssuer(token)
	if !hit {
		if !validB64Token(token) {
			return deny(400, CheckInvalidRequest, ErrBadAuthorization.Error())
		}
		claims, provider, err = v.verifyByIssuer(ctx, token)
	}
	if err != nil {
		return deny(401, CheckInvalidToken, err.Error())
	}
	app := req.App
	own := provider.Name() == c.Own
	if own {
		if !slices.Contains(claims.Audience, app.ID) {
			return deny(401, CheckInvalidToken, ErrAudienceInvalid.Error())
		}
	} else if d, ok := acceptsExternal(app, provider.Name(), claims); !ok {
		return d
	}
	caller := callerOf(claims)
	if caller != "" || own {
		if !isApplicationID(caller) {
			if own {
				return deny(403, CheckAccessDenied, "token names no calling application")
			}
			caller = "" // an external client id, not one of ours: rules do not apply
		} else if !app.Allows(caller) {
			return deny(403, CheckAccessDenied, "application "+caller+" may not call "+app.ID)
		}
	}
	if route != nil {
		for _, s := range route.Scopes {
			if !claims.HasScope(s) {
				d := deny(403, CheckInsufficientScope, "token lacks a scope the request needs")
				d.Scope = strings.Join(route.Scopes, " ")
				return d
			}
		}
	}
	return Decision{Allow: true, Claims: claims, Caller: caller}
}

func acceptsExternal(app *Application, provider string, claims *Claims) (Decision, bool) {
	listed := false
	for _, a := range app.Authentication {
		if a.Provider != provider {
			continue
		}
		listed = true
		if a.Audience == "" || slices.Contains(claims.Audience, a.Audience) {
			return Decision{}, true
		}
	}
	if listed {
		return deny(401, CheckInvalidToken, ErrAudienceInvalid.Error()), false
	}
	return deny(401, CheckInvalidToken, ErrIssuerNotTrusted.Error()), false
}

func callerOf(c *Claims) string {
	if s, ok := c.Raw["client_id"].(string); ok && s != "" {
		return s
	}
	s, _ := c.Raw["azp"].(string)
	return s
}

// isApplicationID reports whether s has the shape cluster:namespace:name.
func isApplicationID(s string) bool {
	first := strings.IndexByte(s, ':')
	last := strings.LastIndexByte(s, ':')
	return first > 0 && last > first+1 && last < len(s)-1 && strings.Count(s, ":") == 2
}

func deny(status int, code, description string) Decision {
	return Decision{Status: status, Error: code, Description: description}
}

// errNoApplication is for adapters that find no application for a request.
var errNoApplication = errors.New("no application is configured for the request")

// NoApplication is the decision for a request no application claims: 403.
func NoApplication() Decision { return deny(403, "", errNoApplication.Error()) }
