package authz

import (
	"errors"
	"fmt"
)

// Rejections by the access policy.
var (
	ErrApplicationUnknown = errors.New("application is not registered")
	ErrAccessDenied       = errors.New("caller is not allowed by the application's access policy")
)

// ApplicationPolicy is one application's inbound rules, as application ids
// (cluster:namespace:name) that may call it.
type ApplicationPolicy struct {
	ID      string
	Inbound []string
}

// Policy answers who may call whom. It is immutable.
type Policy struct {
	apps map[string]map[string]struct{}
}

// NewPolicy builds a policy; application ids must be unique.
func NewPolicy(apps []ApplicationPolicy) (*Policy, error) {
	p := &Policy{apps: make(map[string]map[string]struct{}, len(apps))}
	for _, a := range apps {
		if _, dup := p.apps[a.ID]; dup {
			return nil, fmt.Errorf("application %s appears twice", a.ID)
		}
		allowed := make(map[string]struct{}, len(a.Inbound))
		for _, id := range a.Inbound {
			allowed[id] = struct{}{}
		}
		p.apps[a.ID] = allowed
	}
	return p, nil
}

// Registered reports whether id is a registered application.
func (p *Policy) Registered(id string) bool {
	_, ok := p.apps[id]
	return ok
}

// MayCall returns nil when target is registered and its inbound rules allow
// caller, ErrApplicationUnknown or ErrAccessDenied otherwise.
func (p *Policy) MayCall(caller, target string) error {
	allowed, ok := p.apps[target]
	if !ok {
		return fmt.Errorf("%w: %s", ErrApplicationUnknown, target)
	}
	if _, ok := allowed[caller]; !ok {
		return fmt.Errorf("%w: %s may not call %s", ErrAccessDenied, caller, target)
	}
	return nil
}
