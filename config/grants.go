package config

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/vakt-dev/vakt/authz"
)

// Grant is the cluster administrator's leave for the resources of some
// namespaces to claim names: hosts, resource URIs, and URLs vakt fetches
// keys from. A resource (an Application or a Jwker) may list a host or a
// resource URI, or name a jwksUri, only where a grant applying to its
// namespace grants it; an application found by Envoy's context extension
// or its SPIFFE principal needs none. Grants say who may claim a name, not
// who holds it: two namespaces granted one name claim it in turn, the
// older resource first (ResourceIndex.Claim).
//
// A change of grants applies at the next reload: no restart.
type Grant struct {
	// Namespaces the grant applies to, by name.
	Namespaces []string `yaml:"namespaces"`
	// NamespaceSelector selects the namespaces the grant applies to by
	// their labels, as a Kubernetes label selector does. Every namespace
	// has the label kubernetes.io/metadata.name, its name. An empty
	// selector ({}) selects every namespace. At least one of namespaces and
	// namespaceSelector is required; with both, a namespace either names or
	// selects is granted.
	NamespaceSelector *LabelSelector `yaml:"namespaceSelector"`
	// Hosts the namespaces' applications may list in hosts: exact
	// lowercase host names, or wildcards "*.example.com", which match any
	// host with one or more labels before ".example.com" (a.example.com,
	// a.b.example.com) and never example.com itself, as Gateway API
	// hostnames do. A granted host grants the http(s) resource URIs on it
	// too, of any port and path: they name nothing the host does not.
	Hosts []string `yaml:"hosts"`
	// Resources are prefixes of the resource URIs the namespaces'
	// applications may list in resources: absolute URIs without user
	// info, query or fragment, compared in canonical form (scheme and host
	// in lower case, no default port, an empty http(s) path as "/"; the
	// rest as written, percent-encoding included). A prefix ending in "/"
	// (or ":", for an opaque URI such as urn:team-b:) matches every URI
	// that starts with it. Any other prefix matches the URI itself, or one
	// continuing it at a path segment boundary: "https://api.example.com/b"
	// matches https://api.example.com/b, https://api.example.com/b/v1 and
	// https://api.example.com/b?v=1, never https://api.example.com/bee
	// (nor, for an opaque prefix urn:b, urn:bee; urn:b:x it matches). A URI
	// with a "." or ".." path segment matches no prefix.
	Resources []string `yaml:"resources"`
	// JWKSURIs are prefixes of the jwksUri the namespaces' applications
	// may have vakt fetch their public keys from: https URLs, matched as
	// resources are. None by default: a resource's keys come from
	// secretName (vakt makes them) or inline jwks, and vakt fetches no URL
	// a team chose.
	JWKSURIs []string `yaml:"jwksUris"`
}

// LabelSelector selects namespaces by their labels, as Kubernetes'
// metav1.LabelSelector does: every matchLabels pair and every
// matchExpressions requirement must hold.
type LabelSelector struct {
	// MatchLabels: the namespace has each label with exactly this value.
	MatchLabels map[string]string `yaml:"matchLabels"`
	// MatchExpressions: each requirement holds.
	MatchExpressions []LabelSelectorRequirement `yaml:"matchExpressions"`
}

// Operators of a LabelSelectorRequirement, as Kubernetes has them.
const (
	SelectorIn           = "In"
	SelectorNotIn        = "NotIn"
	SelectorExists       = "Exists"
	SelectorDoesNotExist = "DoesNotExist"
)

// LabelSelectorRequirement is a requirement on one label: In (the label is
// set to one of values), NotIn (it is not set, or set to none of values),
// Exists (it is set) or DoesNotExist (it is not). In and NotIn need values;
// Exists and DoesNotExist take none.
type LabelSelectorRequirement struct {
	Key      string   `yaml:"key"`
	Operator string   `yaml:"operator"`
	Values   []string `yaml:"values"`
}

// NamespaceNameLabel is the label the API server gives every namespace:
// its name.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

// Matches reports whether labels satisfy the selector; an empty selector
// matches everything, a nil one nothing.
func (s *LabelSelector) Matches(labels map[string]string) bool {
	if s == nil {
		return false
	}
	for k, want := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != want {
			return false
		}
	}
	for _, r := range s.MatchExpressions {
		got, ok := labels[r.Key]
		switch r.Operator {
		case SelectorIn:
			if !ok || !slices.Contains(r.Values, got) {
				return false
			}
		case SelectorNotIn:
			if ok && slices.Contains(r.Values, got) {
				return false
			}
		case SelectorExists:
			if !ok {
				return false
			}
		case SelectorDoesNotExist:
			if ok {
				return false
			}
		default:
			return false // refused by Load: never matches
		}
	}
	return true
}

// UsesNamespaceLabels reports whether a grant selects namespaces by their
// labels: whether a change of a namespace's labels may change what its
// resources are granted.
func (k *Kubernetes) UsesNamespaceLabels() bool {
	for i := range k.Grants {
		if k.Grants[i].NamespaceSelector != nil {
			return true
		}
	}
	return false
}

// Label keys and values, as Kubernetes validates them: a key is a name of
// at most 63 characters with an optional DNS subdomain prefix and "/".
var (
	labelName  = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
	labelValue = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
)

// checkLabelKey checks a label key as Kubernetes does.
func checkLabelKey(k string) error {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	}
	switch {
	case hasPrefix && (prefix == "" || len(prefix) > 253 || !hostname.MatchString(prefix)):
		return fmt.Errorf("%q is not a label key: its prefix must be a lowercase DNS subdomain", k)
	case len(name) > 63 || !labelName.MatchString(name):
		return fmt.Errorf("%q is not a label key (a name of at most 63 letters, digits, '-', '_' and '.', beginning and ending with a letter or digit, after an optional prefix and '/')", k)
	}
	return nil
}

func checkLabelValue(s string) error {
	if len(s) > 63 || !labelValue.MatchString(s) {
		return fmt.Errorf("%q is not a label value (at most 63 letters, digits, '-', '_' and '.', beginning and ending with a letter or digit)", s)
	}
	return nil
}

// validateGrants checks kubernetes.grants.
func (c *Config) validateGrants(v *validator) {
	k := &c.Kubernetes
	for i := range k.Grants {
		g := &k.Grants[i]
		at := fmt.Sprintf("kubernetes.grants[%d]", i)
		if len(g.Namespaces) == 0 && g.NamespaceSelector == nil {
			v.fail(at, "give namespaces or namespaceSelector (or both): the namespaces granted")
		}
		if len(g.Hosts) == 0 && len(g.Resources) == 0 && len(g.JWKSURIs) == 0 {
			v.fail(at, "grants nothing: give hosts, resources or jwksUris")
		}
		for j, ns := range g.Namespaces {
			p := fmt.Sprintf("%s.namespaces[%d]", at, j)
			switch {
			case !label.MatchString(ns):
				v.fail(p, "%q is not a namespace name", ns)
			case len(k.Namespaces) > 0 && !slices.Contains(k.Namespaces, ns):
				v.warn("%s: namespace %s is not in kubernetes.namespaces: vakt reads no resource there", p, ns)
			}
		}
		if s := g.NamespaceSelector; s != nil {
			v.selector(at+".namespaceSelector", s)
		}
		for j, h := range g.Hosts {
			if err := checkHostPattern(h); err != nil {
				v.fail(fmt.Sprintf("%s.hosts[%d]", at, j), "%v", err)
			}
		}
		for j, r := range g.Resources {
			if _, err := parsePrefix(r, false); err != nil {
				v.fail(fmt.Sprintf("%s.resources[%d]", at, j), "%v", err)
			}
		}
		for j, r := range g.JWKSURIs {
			if _, err := parsePrefix(r, true); err != nil {
				v.fail(fmt.Sprintf("%s.jwksUris[%d]", at, j), "%v", err)
			}
		}
	}
}

// selector checks a label selector as Kubernetes validates one.
func (v *validator) selector(at string, s *LabelSelector) {
	if len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0 {
		v.warn("%s is empty: it selects every namespace", at)
	}
	keys := make([]string, 0, len(s.MatchLabels))
	for k := range s.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := at + ".matchLabels"
		if !strings.Contains(k, "'") {
			p += ".'" + k + "'"
		}
		if err := checkLabelKey(k); err != nil {
			v.fail(p, "%v", err)
		} else if err := checkLabelValue(s.MatchLabels[k]); err != nil {
			v.fail(p, "%v", err)
		}
	}
	for j, r := range s.MatchExpressions {
		p := fmt.Sprintf("%s.matchExpressions[%d]", at, j)
		if r.Key == "" {
			v.fail(p+".key", "is required")
		} else if err := checkLabelKey(r.Key); err != nil {
			v.fail(p+".key", "%v", err)
		}
		switch r.Operator {
		case SelectorIn, SelectorNotIn:
			if len(r.Values) == 0 {
				v.fail(p+".values", "must be non-empty for operator %s", r.Operator)
			}
		case SelectorExists, SelectorDoesNotExist:
			if len(r.Values) > 0 {
				v.fail(p+".values", "must be empty for operator %s", r.Operator)
			}
		case "":
			v.fail(p+".operator", "is required: In, NotIn, Exists or DoesNotExist")
		default:
			v.fail(p+".operator", "%q is not In, NotIn, Exists or DoesNotExist", r.Operator)
		}
		for k, val := range r.Values {
			if err := checkLabelValue(val); err != nil {
				v.fail(fmt.Sprintf("%s.values[%d]", p, k), "%v", err)
			}
		}
	}
}

// checkHostPattern checks a granted host: a lowercase host name, or "*."
// and one.
func checkHostPattern(h string) error {
	suffix, wild := strings.CutPrefix(h, "*.")
	switch {
	case h == "*":
		return fmt.Errorf(`"*" alone is not a host: a wildcard has a suffix (*.example.com)`)
	case strings.Contains(suffix, "*"):
		return fmt.Errorf("%q: a wildcard is only a whole first label, as in *.example.com", h)
	case !hostname.MatchString(suffix):
		if hostname.MatchString(strings.ToLower(suffix)) {
			return fmt.Errorf("%q is not lowercase", h)
		}
		if wild {
			return fmt.Errorf("%q is not *. and a host name without port", h)
		}
		return fmt.Errorf("%q is not a lowercase host name without port, nor *. and one", h)
	}
	return nil
}

// prefix is a granted URI prefix, in canonical form.
type prefix struct {
	canon string
	// opaque: the prefix is an opaque URI (urn:…, its scheme's ':' not
	// followed by '/'), whose segments ':' separates too.
	opaque bool
}

// parsePrefix checks a granted URI prefix; https requires an https URL.
func parsePrefix(s string, https bool) (prefix, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil || !u.IsAbs() || u.Fragment != "" || strings.Contains(s, "#"):
		return prefix{}, fmt.Errorf("%q is not an absolute URI without a fragment", s)
	case https && (u.Scheme != "https" || u.Host == "" || u.Opaque != ""):
		return prefix{}, fmt.Errorf("%q is not an https URL: vakt fetches keys over https only", s)
	case (u.Scheme == "https" || u.Scheme == "http") && (u.Host == "" || u.Opaque != ""):
		return prefix{}, fmt.Errorf("%q is an http(s) URI without a host", s)
	case u.User != nil:
		return prefix{}, fmt.Errorf("%q has user info; a prefix has none", s)
	case u.RawQuery != "" || u.ForceQuery:
		return prefix{}, fmt.Errorf("%q has a query; a prefix has none", s)
	case dotSegments(u):
		return prefix{}, fmt.Errorf(`%q has a "." or ".." path segment; write the path it stands for`, s)
	}
	canon := authz.CanonicalResource(u)
	return prefix{canon: canon, opaque: !strings.HasPrefix(canon[len(u.Scheme)+1:], "/")}, nil
}

// dotSegments reports whether u's path (decoded, '\' read as '/', as
// browsers read it) has a "." or ".." segment.
func dotSegments(u *url.URL) bool {
	p := u.Path
	if u.Opaque != "" {
		p = u.Opaque
	}
	for seg := range strings.FieldsFuncSeq(p, func(r rune) bool { return r == '/' || r == '\\' }) {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

// matches reports whether the canonical URI r is under p (see
// Grant.Resources).
func (p prefix) matches(r string) bool {
	if !strings.HasPrefix(r, p.canon) {
		return false
	}
	if len(r) == len(p.canon) {
		return true
	}
	return p.separator(p.canon[len(p.canon)-1]) || p.separator(r[len(p.canon)]) || r[len(p.canon)] == '?'
}

func (p prefix) separator(c byte) bool { return c == '/' || (p.opaque && c == ':') }

// grant is a Grant compiled for matching.
type grant struct {
	namespaces map[string]bool
	selector   *LabelSelector
	hosts      map[string]bool
	suffixes   []string // of wildcards: ".example.com"
	resources  []prefix
	jwksURIs   []prefix
}

// compileGrants compiles the grants Load accepted.
func compileGrants(gs []Grant) []grant {
	out := make([]grant, 0, len(gs))
	for i := range gs {
		g := &gs[i]
		cg := grant{namespaces: map[string]bool{}, selector: g.NamespaceSelector, hosts: map[string]bool{}}
		for _, ns := range g.Namespaces {
			cg.namespaces[ns] = true
		}
		for _, h := range g.Hosts {
			if checkHostPattern(h) != nil {
				continue // Load refuses it; a Config made otherwise grants nothing by it
			}
			if s, wild := strings.CutPrefix(h, "*"); wild {
				cg.suffixes = append(cg.suffixes, s)
			} else {
				cg.hosts[h] = true
			}
		}
		for _, r := range g.Resources {
			if p, err := parsePrefix(r, false); err == nil {
				cg.resources = append(cg.resources, p)
			}
		}
		for _, r := range g.JWKSURIs {
			if p, err := parsePrefix(r, true); err == nil {
				cg.jwksURIs = append(cg.jwksURIs, p)
			}
		}
		out = append(out, cg)
	}
	return out
}

// appliesTo reports whether the grant applies to namespace, whose labels
// are labels (kubernetes.io/metadata.name being its name, whatever labels
// says).
func (g *grant) appliesTo(namespace string, labels map[string]string) bool {
	if g.namespaces[namespace] {
		return true
	}
	if g.selector == nil {
		return false
	}
	if labels[NamespaceNameLabel] != namespace {
		l := make(map[string]string, len(labels)+1)
		for k, v := range labels {
			l[k] = v
		}
		l[NamespaceNameLabel] = namespace
		labels = l
	}
	return g.selector.Matches(labels)
}

// grantsHost reports whether the grant grants host, a lowercase host name.
func (g *grant) grantsHost(host string) bool {
	if !hostname.MatchString(host) {
		return false
	}
	if g.hosts[host] {
		return true
	}
	for _, s := range g.suffixes {
		if len(host) > len(s) && strings.HasSuffix(host, s) {
			return true
		}
	}
	return false
}

// grantsResource reports whether the grant grants the resource URI u: by a
// prefix, or, for an http(s) URI, by its host.
func (g *grant) grantsResource(u *url.URL) bool {
	if u.User != nil {
		return false
	}
	if (u.Scheme == "https" || u.Scheme == "http") && u.Opaque == "" && g.grantsHost(asciiLower(u.Hostname())) {
		return true
	}
	return matchesAny(g.resources, u)
}

// grantsJWKSURI reports whether the grant allows vakt to fetch u.
func (g *grant) grantsJWKSURI(u *url.URL) bool {
	return u.Scheme == "https" && u.User == nil && matchesAny(g.jwksURIs, u)
}

func matchesAny(ps []prefix, u *url.URL) bool {
	if len(ps) == 0 || u.Fragment != "" || dotSegments(u) {
		return false
	}
	r := authz.CanonicalResource(u)
	for _, p := range ps {
		if p.matches(r) {
			return true
		}
	}
	return false
}

// asciiLower is s with ASCII letters in lower case, and nothing else
// changed, as authz compares hosts (strings.ToLower would also take the
// Kelvin sign for k).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
