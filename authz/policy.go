package authz

import (
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strings"
)

// ApplicationPolicy is what vakt enforces for one application.
type ApplicationPolicy struct {
	ID string
	// Inbound lists the application ids (cluster:namespace:name) that may
	// call it.
	Inbound []string
	// Hosts are the request hosts (without port) that name it in Check, and
	// in a token exchange's resource (RFC 8707).
	Hosts []string
	// Resources are absolute URIs that name it in a token exchange's
	// resource, besides any URI of one of its hosts.
	Resources []string
	// Routes, matched in order, first match wins. With routes, a request
	// matching none is denied; without, any path is allowed.
	Routes []Route
	// Authentication lists the external identity providers whose tokens it
	// accepts in Check, besides tokens vakt issued for it.
	Authentication []Authentication
	// ForwardClaims are claims copied into request headers on allow.
	ForwardClaims []ClaimHeader
	// StripAuthorization removes the Authorization header on allow.
	StripAuthorization bool
	// NoDynamicMetadata leaves the claims out of Check's allow answer.
	NoDynamicMetadata bool
	// PathParameters says whether a path with ';' is refused (the default)
	// or read as servlet containers read it.
	PathParameters PathParameters
}

// Route is a set of requests and what they need.
type Route struct {
	Methods    []string // any method when empty
	Path       string   // exact match, or
	PathPrefix string   // prefix match
	Scopes     []string // every one required
	Public     bool     // no token needed

	scopeText string // Scopes joined, for insufficient_scope answers
}

func (r *Route) matches(method, path string) bool {
	if len(r.Methods) > 0 && !slices.Contains(r.Methods, method) {
		return false
	}
	if r.Path != "" {
		return path == r.Path
	}
	return strings.HasPrefix(path, r.PathPrefix)
}

// Authentication accepts tokens of an identity provider, when Audience (if
// set) is in their aud.
type Authentication struct {
	Provider string
	Audience string
}

// ClaimHeader forwards a claim as a request header.
type ClaimHeader struct {
	Claim  string
	Header string
}

// Application is a registered application as the policy sees it.
type Application struct {
	ApplicationPolicy
	allowed map[string]struct{}
}

// Policy answers who may call whom, and what a request to an application
// needs. It is immutable.
type Policy struct {
	apps       map[string]*Application
	byHost     map[string]*Application
	byResource map[string]*Application
}

// NewPolicy builds a policy; application ids and hosts must be unique.
func NewPolicy(apps []ApplicationPolicy) (*Policy, error) { return NewPolicyFrom(nil, apps) }

// NewPolicyFrom is NewPolicy for the configuration after prev's (nil for
// none): an application whose ApplicationPolicy is the same as in prev is
// prev's *Application, so that what adapters keep for it (Check's answers,
// kept with the pointer) stays good across a policy change
// that does not concern it. An application that changed is a new one, and
// its answers are built anew.
func NewPolicyFrom(prev *Policy, apps []ApplicationPolicy) (*Policy, error) {
	p := &Policy{apps: make(map[string]*Application, len(apps)), byHost: map[string]*Application{}, byResource: map[string]*Application{}}
	for _, a := range apps {
		if _, dup := p.apps[a.ID]; dup {
			return nil, fmt.Errorf("application %s appears twice", a.ID)
		}
		app := &Application{ApplicationPolicy: a, allowed: make(map[string]struct{}, len(a.Inbound))}
		app.Routes = slices.Clone(a.Routes)
		for i := range app.Routes {
			app.Routes[i].scopeText = scopeList(app.Routes[i].Scopes)
		}
		for _, id := range a.Inbound {
			app.allowed[id] = struct{}{}
		}
		// Every field compared, the routes' scopeText too: allowed follows
		// from Inbound. Only a build of the configuration is slowed.
		if old, ok := prev.previous(a.ID); ok && reflect.DeepEqual(old.ApplicationPolicy, app.ApplicationPolicy) {
			app = old
		}
		for _, h := range a.Hosts {
			h = asciiLower(h)
			if other, dup := p.byHost[h]; dup {
				return nil, fmt.Errorf("host %s belongs to both %s and %s", h, other.ID, a.ID)
			}
			p.byHost[h] = app
		}
		for _, r := range a.Resources {
			u, err := url.Parse(r)
			if err != nil || !u.IsAbs() {
				return nil, fmt.Errorf("application %s: resource %q is not an absolute URI", a.ID, r)
			}
			r = CanonicalResource(u)
			if other, dup := p.byResource[r]; dup {
				return nil, fmt.Errorf("resource %s belongs to both %s and %s", r, other.ID, a.ID)
			}
			p.byResource[r] = app
		}
		p.apps[a.ID] = app
	}
	return p, nil
}

// previous is Application on a policy that may be nil (none before).
func (p *Policy) previous(id string) (*Application, bool) {
	if p == nil {
		return nil, false
	}
	return p.Application(id)
}

// ApplicationByResource returns the application a resource URI (RFC 8707)
// names: one of its resources exactly, or else a URI of one of its hosts.
func (p *Policy) ApplicationByResource(u *url.URL) (*Application, bool) {
	if u.User != nil {
		return nil, false // a URI with userinfo names no resource of ours
	}
	if a, ok := p.byResource[CanonicalResource(u)]; ok {
		return a, true
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, false
	}
	return p.ApplicationByHost(asciiLower(u.Hostname()))
}

// CanonicalResource is a resource URI as RFC 3986 §6.2.2–6.2.3 compares
// it: scheme and host in lower case, no default port, an empty path as "/"
// for http(s), the rest as written.
func CanonicalResource(u *url.URL) string {
	c := *u
	c.Scheme = asciiLower(c.Scheme)
	c.Host = asciiLower(c.Host)
	switch {
	case c.Scheme == "https" && c.Port() == "443", c.Scheme == "http" && c.Port() == "80":
		c.Host = c.Hostname()
	}
	if (c.Scheme == "https" || c.Scheme == "http") && c.Path == "" && c.RawPath == "" {
		c.Path = "/"
	}
	return c.String()
}

// Application returns the registered application with id.
func (p *Policy) Application(id string) (*Application, bool) {
	a, ok := p.apps[id]
	return a, ok
}

// ApplicationByHost returns the application that lists host (no port).
func (p *Policy) ApplicationByHost(host string) (*Application, bool) {
	a, ok := p.byHost[host]
	if !ok && hasUpper(host) {
		a, ok = p.byHost[asciiLower(host)]
	}
	return a, ok
}

// asciiLower is s with ASCII letters in lower case, and nothing else
// changed: hosts compare in ASCII case only (RFC 4343), and
// strings.ToLower would also take the Kelvin sign for k.
func asciiLower(s string) string {
	if !hasUpper(s) {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// Registered reports whether id is a registered application.
func (p *Policy) Registered(id string) bool {
	_, ok := p.apps[id]
	return ok
}

// MayCall returns nil when target is registered and its inbound rules allow
// caller, ErrApplicationUnknown or ErrAccessDenied otherwise.
func (p *Policy) MayCall(caller, target string) error {
	app, ok := p.apps[target]
	if !ok {
		return fmt.Errorf("%w: %s is not registered", ErrApplicationUnknown, clip(target))
	}
	if !app.Allows(caller) {
		return fmt.Errorf("%w: %s may not call %s", ErrAccessDenied, clip(caller), clip(target))
	}
	return nil
}

// Allows reports whether the inbound rules allow caller.
func (a *Application) Allows(caller string) bool {
	_, ok := a.allowed[caller]
	return ok
}

// clip keeps a client's value short enough to repeat in an error.
func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}
