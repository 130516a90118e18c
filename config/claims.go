package config

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/vakt-dev/vakt/authz"
)

// What an application claims, in a Clash.
const (
	ClaimID       = "application id"
	ClaimHost     = "host"
	ClaimResource = "resource URI"
)

// Clash is one claim of an application that another application, claimed
// before it, holds.
type Clash struct {
	// Kind is what was claimed: ClaimID, ClaimHost or ClaimResource.
	Kind string
	// Value is the claim as the application wrote it (its id, for an id).
	Value string
	// Path names the field: spec (for the id), spec.hosts[0],
	// spec.resources[1].
	Path string
	// Line is the field's line in the resource's spec; 0 when unknown.
	Line int
	// Owner is the id of the application holding the claim.
	Owner string
	// OwnerInFile: the owner is an application of the configuration file,
	// which always keeps its claims.
	OwnerInFile bool

	msg string
}

// Error reads as a FieldError: "line 3: spec.hosts[0]: "x.example" already
// belongs to dev-gcp:team-z:victim".
func (c *Clash) Error() string {
	return (&FieldError{Path: c.Path, Line: c.Line, Msg: c.msg}).Error()
}

// ConflictError is Claim's refusal: claims of the application that
// applications claimed before it hold. The application took none of its
// claims. Callers tell it from any other refusal with errors.As (the
// Kubernetes condition reason Conflict).
type ConflictError struct {
	// Application is the id of the application refused.
	Application string
	// Clashes, in the order of the application's fields: its id, hosts,
	// resource URIs.
	Clashes []Clash
}

// Error is one line per clash, as Errors has one per field.
func (e *ConflictError) Error() string {
	msgs := make([]string, len(e.Clashes))
	for i := range e.Clashes {
		msgs[i] = e.Clashes[i].Error()
	}
	return strings.Join(msgs, "\n")
}

// Owners are the ids of the applications holding the claims, each once,
// in the order of the clashes.
func (e *ConflictError) Owners() []string {
	var ids []string
	seen := map[string]bool{}
	for _, c := range e.Clashes {
		if !seen[c.Owner] {
			seen[c.Owner] = true
			ids = append(ids, c.Owner)
		}
	}
	return ids
}

// Claim takes a's id, hosts and resource URIs (and the hosts of its
// http(s) resource URIs) in the index, if none is held by an application
// claimed before it: the configuration file's applications
// (NewResourceIndex claims them first, so they always keep theirs), then
// those Claim accepted, in the order it was called. Two applications
// clash when one would take the other's id, host or resource URI
// (compared canonically, as token exchange compares them: "https://x" and
// "https://X:443/" are one), list as a host the host of the other's
// http(s) resource URI, or have a resource URI on the other's host.
//
// On a clash Claim takes nothing and returns a *ConflictError listing
// every clash. a is an application CheckApplication or CheckJwker
// accepted (its hosts and resource URIs valid, none twice): one it did
// not check may be refused for what a check would refuse, or not. Claim
// changes the index: unlike the checks, it is not safe for concurrent use.
func (x *ResourceIndex) Claim(a *Application) error {
	if a.Name == "" || a.Namespace == "" {
		return errors.New("an application needs a name and a namespace to claim anything")
	}
	if cs := x.claims.clashes(a, "spec", a.lines); len(cs) > 0 {
		return &ConflictError{Application: a.ID(), Clashes: cs}
	}
	x.claims.take(a, owner{id: a.ID(), at: a.ID()})
	return nil
}

// owner is an application holding claims.
type owner struct {
	id   string
	at   string // how an id clash names it: its id, or applications[i] in Load
	file bool
}

// claimSet is who holds which id, host and resource URI.
type claimSet struct {
	ids       map[string]owner
	hosts     map[string]owner
	resources map[string]owner // canonical resource URI
	// resHosts are the hosts of http(s) resource URIs: a host one
	// application lists may not be another's resource URI's, as token
	// exchange looks resource URIs up before hosts.
	resHosts map[string]owner
	// noteFile: clashes say when the owner is the configuration file's
	// (not in Load, where every application is).
	noteFile bool
}

func newClaimSet() *claimSet {
	return &claimSet{ids: map[string]owner{}, hosts: map[string]owner{}, resources: map[string]owner{}, resHosts: map[string]owner{}}
}

// claimLines are the lines of an application's hosts and resources in its
// resource's spec, for Claim's errors: found the first time a clash needs
// one, as a spec accepted (most are) needs none.
type claimLines struct {
	spec             []byte
	nHosts, nRes     int
	once             sync.Once
	hosts, resources []int
}

func newClaimLines(spec []byte, a *Application) *claimLines {
	return &claimLines{spec: spec, nHosts: len(a.Hosts), nRes: len(a.Resources)}
}

func (l *claimLines) find() {
	l.once.Do(func() {
		v := newValidator(l.spec)
		l.hosts, l.resources = v.seqLines("hosts", l.nHosts), v.seqLines("resources", l.nRes)
	})
}

func (l *claimLines) host(j int) int {
	if l == nil {
		return 0
	}
	if l.find(); j >= len(l.hosts) {
		return 0
	}
	return l.hosts[j]
}

func (l *claimLines) resource(j int) int {
	if l == nil {
		return 0
	}
	if l.find(); j >= len(l.resources) {
		return 0
	}
	return l.resources[j]
}

// webResource parses a resource URI as claims compare it: its canonical
// form, and its host when it is an http(s) URI (else ""). ok is false for
// what the validator refuses.
func webResource(r string) (key, host string, ok bool) {
	u, err := url.Parse(r)
	if err != nil || !u.IsAbs() || u.Fragment != "" {
		return "", "", false
	}
	if u.Scheme == "https" || u.Scheme == "http" {
		host = asciiLower(u.Hostname())
	}
	return authz.CanonicalResource(u), host, true
}

// clashes lists what of a's claims others hold; at names a's fields.
// Entries the validator refuses are skipped: it reports them.
func (s *claimSet) clashes(a *Application, at string, lines *claimLines) []Clash {
	var cs []Clash
	add := func(kind, value, path string, line int, o owner, format string) {
		who := o.id
		if kind == ClaimID {
			who = o.at
		}
		if o.file && s.noteFile {
			who += " (in vakt's configuration file)"
		}
		cs = append(cs, Clash{Kind: kind, Value: value, Path: path, Line: line, Owner: o.id, OwnerInFile: o.file,
			msg: fmt.Sprintf(format, value, who)})
	}
	if a.Name != "" && a.Namespace != "" {
		if o, taken := s.ids[a.ID()]; taken {
			add(ClaimID, a.ID(), at, 0, o, "application id %s is already used by %s")
		}
	}
	for j, h := range a.Hosts {
		if !hostname.MatchString(h) {
			continue
		}
		p := fmt.Sprintf("%s.hosts[%d]", at, j)
		if o, taken := s.hosts[h]; taken {
			add(ClaimHost, h, p, lines.host(j), o, "%q already belongs to %s")
		} else if o, taken := s.resHosts[h]; taken {
			add(ClaimHost, h, p, lines.host(j), o, "%q is the host of a resource URI of %s")
		}
	}
	for j, r := range a.Resources {
		key, host, ok := webResource(r)
		if !ok {
			continue
		}
		p := fmt.Sprintf("%s.resources[%d]", at, j)
		if o, taken := s.resources[key]; taken {
			add(ClaimResource, r, p, lines.resource(j), o, "%q already belongs to %s")
		} else if o, taken := s.hosts[host]; taken && host != "" {
			add(ClaimResource, r, p, lines.resource(j), o, "%q is on the host of %s")
		}
	}
	return cs
}

// take gives o every claim of a that is free.
func (s *claimSet) take(a *Application, o owner) {
	if a.Name != "" && a.Namespace != "" {
		if _, taken := s.ids[a.ID()]; !taken {
			s.ids[a.ID()] = o
		}
	}
	for _, h := range a.Hosts {
		if _, taken := s.hosts[h]; !taken && hostname.MatchString(h) {
			s.hosts[h] = o
		}
	}
	for _, r := range a.Resources {
		key, host, ok := webResource(r)
		if !ok {
			continue
		}
		if _, taken := s.resources[key]; !taken {
			s.resources[key] = o
		}
		if _, taken := s.resHosts[host]; !taken && host != "" {
			s.resHosts[host] = o
		}
	}
}
