package config

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/vakt-dev/vakt/authz"
)

// FieldError is one problem in a configuration.
type FieldError struct {
	Path string // e.g. applications[1].accessPolicy.inbound.rules[0].application
	Line int    // 0 when unknown
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %s: %s", e.Line, e.Path, e.Msg)
	}
	return e.Path + ": " + e.Msg
}

// Errors is every problem found in a configuration, one per line.
type Errors []*FieldError

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Names of applications, namespaces and clusters: RFC 1123 labels, as in
// Kubernetes.
var label = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// validator collects FieldErrors, with lines found in the YAML, and
// warnings.
type validator struct {
	// data is the document; file is it parsed, the first time a line is
	// asked for (ast): a document without errors is parsed once, to
	// decode it, not a second time for lines it never needs.
	data     []byte
	parsed   bool
	file     *ast.File
	config   *Config
	errs     Errors
	warnings []string
	// strip is what paths have that the YAML does not: "spec." for a
	// resource's spec, whose own document has no spec key.
	strip string
}

func (v *validator) warn(format string, args ...any) {
	v.warnings = append(v.warnings, fmt.Sprintf(format, args...))
}

func newValidator(data []byte) *validator { return &validator{data: data} }

// ast is the document, parsed the first time it is asked for; nil when it
// does not parse.
func (v *validator) ast() *ast.File {
	if !v.parsed {
		v.parsed = true
		if f, err := parser.ParseBytes(v.data, 0); err == nil {
			v.file = f
		}
	}
	return v.file
}

func (v *validator) fail(path, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: path, Line: v.line(path), Msg: fmt.Sprintf(format, args...)})
}

// result is every error in the order of the file, whichever phase found it;
// errors without a line (a missing top-level field) come first.
func (v *validator) result() error {
	if len(v.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(v.errs, func(a, b *FieldError) int { return cmp.Compare(a.Line, b.Line) })
	return v.errs
}

// line finds the line of path in the YAML, or of its nearest present parent.
func (v *validator) line(path string) int {
	for p := strings.TrimPrefix(path, v.strip); p != "" && v.ast() != nil; {
		if yp, err := yaml.PathString("$." + p); err == nil {
			if n, err := yp.FilterFile(v.ast()); err == nil && n != nil {
				if tok := n.GetToken(); tok != nil && tok.Position != nil {
					return tok.Position.Line
				}
			}
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

// seqLines are the lines of the n elements of the top-level sequence key,
// found at once (a line per element would walk the document n times); 0
// where unknown.
func (v *validator) seqLines(key string, n int) []int {
	if n == 0 {
		return nil
	}
	lines := make([]int, n)
	if v.ast() == nil {
		return lines
	}
	yp, err := yaml.PathString("$." + key)
	if err != nil {
		return lines
	}
	node, err := yp.FilterFile(v.ast())
	if err != nil {
		return lines
	}
	seq, ok := node.(*ast.SequenceNode)
	if !ok {
		return lines
	}
	for i, e := range seq.Values {
		if i < n {
			if tok := e.GetToken(); tok != nil && tok.Position != nil {
				lines[i] = tok.Position.Line
			}
		}
	}
	return lines
}

// validate checks a configuration after applyDefaults and loadKeys. It
// changes nothing, and checks in the order of Config's fields.
func (c *Config) validate(v *validator) {
	c.validateServer(v)
	c.validateSigning(v)
	providers := c.validateProviders(v)
	c.validateApplications(v, providers)
}

// validateServer checks the issuer, cluster, listen addresses and
// validation limits.
func (c *Config) validateServer(v *validator) {
	if err := checkIssuer(c.Issuer); err != nil {
		v.fail("issuer", "%v", err)
	}
	for i, a := range c.TokenEndpointAliases {
		if err := checkURL(a); err != nil {
			v.fail(fmt.Sprintf("tokenEndpointAliases[%d]", i), "%v", err)
		} else if u, _ := url.Parse(a); u.RawQuery != "" || u.ForceQuery {
			v.fail(fmt.Sprintf("tokenEndpointAliases[%d]", i), "%q has a query; a token endpoint has none", a)
		}
	}
	if c.Cluster == "" {
		v.fail("cluster", "is required")
	} else if !label.MatchString(c.Cluster) {
		v.fail("cluster", "%q is not a valid name (lowercase letters, digits and '-')", c.Cluster)
	}
	if !trustDomain.MatchString(c.TrustDomain) {
		v.fail("trustDomain", "%q is not a SPIFFE trust domain (lowercase letters, digits, '.', '-' and '_')", c.TrustDomain)
	}
	listens := []struct{ path, addr string }{
		{"listen.grpc", c.Listen.GRPC},
		{"listen.http", c.Listen.HTTP},
		{"listen.admin", c.Listen.Admin},
	}
	if c.Listen.Admin == AdminOff {
		listens = listens[:2]
	}
	if c.Listen.Authz != "" {
		listens = append(listens, struct{ path, addr string }{"listen.authz", c.Listen.Authz})
	}
	for i, l := range listens {
		host, port, err := net.SplitHostPort(l.addr)
		if err != nil {
			v.fail(l.path, "%q is not host:port", l.addr)
			continue
		}
		for _, o := range listens[:i] {
			ohost, oport, err := net.SplitHostPort(o.addr)
			// One port on one host, or on all hosts (":8080",
			// "0.0.0.0:8080") and any: the second cannot bind.
			if err == nil && port == oport && port != "0" && (host == ohost || wildcard(host) || wildcard(ohost)) {
				v.fail(l.path, "%q is also %s (%q): each listener needs its own port", l.addr, o.path, o.addr)
			}
		}
	}
	switch c.Log.Decisions {
	case LogDecisionsDeny, LogDecisionsAll, LogDecisionsNone:
	default:
		v.fail("log.decisions", "%q is not deny, all or none", c.Log.Decisions)
	}
	if s := c.Log.SampleAllows; s != nil {
		switch {
		case !(*s > 0 && *s <= 1):
			v.fail("log.sampleAllows", "must be above 0 and at most 1")
		case c.Log.Decisions != LogDecisionsAll:
			v.warn("log.sampleAllows has no effect: log.decisions is %s, which logs no allow", c.Log.Decisions)
		}
	}
	if ns := c.Kubernetes.LeaseNamespace; ns != "" && !label.MatchString(ns) {
		v.fail("kubernetes.leaseNamespace", "%q is not a namespace name", ns)
	}
	for i, ns := range c.Kubernetes.Namespaces {
		if !label.MatchString(ns) {
			v.fail(fmt.Sprintf("kubernetes.namespaces[%d]", i), "%q is not a namespace name", ns)
		}
	}
	if e := c.Kubernetes.ClientEndpoint; e != "" {
		if err := checkURL(e); err != nil {
			v.fail("kubernetes.clientEndpoint", "%v", err)
		} else if u, _ := url.Parse(e); (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.ForceQuery {
			v.fail("kubernetes.clientEndpoint", "%q has a path or a query: give the scheme and authority only (the issuer's path is added)", e)
		}
	}
	if d := c.Kubernetes.KeyOverlap; d.set && (d.d < time.Minute || d.d > 90*24*time.Hour) {
		v.fail("kubernetes.keyOverlap", "must be between 1m and 2160h (90 days)")
	}
	c.validateGrants(v)
	nl := c.Kubernetes.NamespaceLimits
	for _, f := range []struct {
		name string
		n    int
	}{{"resources", nl.Resources}, {"routes", nl.Routes}, {"rules", nl.Rules}, {"changesPerMinute", nl.ChangesPerMinute}, {"changeBurst", nl.ChangeBurst}} {
		if f.n < 0 || f.n > 1_000_000 {
			v.fail("kubernetes.namespaceLimits."+f.name, "must be between 1 and 1000000 (0: the default)")
		}
	}
	if !c.Kubernetes.Enabled && (len(c.Kubernetes.Namespaces) > 0 || c.Kubernetes.Kubeconfig != "" || c.Kubernetes.Jwkers || len(c.Kubernetes.Grants) > 0 || c.Kubernetes.ClientEndpoint != "") {
		v.warn("kubernetes has settings but is not enabled: no resource is read")
	}
	if c.Limits.Check < 0 || c.Limits.Other < 0 {
		v.fail("limits", "check and other must not be negative")
	}
	if d := c.Shutdown.DrainDelay.Std(); d < 0 || d > 5*time.Minute {
		v.fail("shutdown.drainDelay", "must be between 0s and 5m")
	}
	if d := c.Shutdown.Grace.Std(); d < time.Second || d > 10*time.Minute {
		v.fail("shutdown.grace", "must be between 1s and 10m")
	}
	if d := c.Limits.KeyWait.Std(); d < 0 || d > time.Minute {
		v.fail("limits.keyWait", "must be between 0s and 1m")
	}
	if c.Validation.MaxTokenSize < 0 {
		v.fail("validation.maxTokenSize", "must not be negative")
	}
	if c.Validation.CacheSize < -1 {
		v.fail("validation.cacheSize", "must be -1 (off), 0 (default) or a size")
	}
}

// validateSigning checks signing and replay.
func (c *Config) validateSigning(v *validator) {
	switch c.Signing.Algorithm {
	case "RS256", "ES256", "EdDSA":
	default:
		v.fail("signing.algorithm", "%q is not RS256, ES256 or EdDSA", c.Signing.Algorithm)
	}
	if d := c.Signing.TokenLifetime.Std(); d < time.Minute || d > 24*time.Hour {
		v.fail("signing.tokenLifetime", "must be between 1m and 24h")
	}
	if c.Replay.MaxPerClient < 0 {
		v.fail("replay.maxPerClient", "must not be negative")
	}
	if r := c.Replay.Redis; r != nil {
		if _, _, err := net.SplitHostPort(r.Address); err != nil {
			v.fail("replay.redis.address", "%q is not host:port", r.Address)
		}
		if r.DB < 0 {
			v.fail("replay.redis.db", "must not be negative")
		}
	}
}

// validateProviders checks the identity providers and returns the index of
// each valid name, for applications' authentication to refer to.
func (c *Config) validateProviders(v *validator) map[string]int {
	names := map[string]int{}
	issuers := map[string]string{c.Issuer: "vakt itself"}
	for i := range c.IdentityProviders {
		p := &c.IdentityProviders[i]
		at := fmt.Sprintf("identityProviders[%d]", i)
		switch {
		case p.Name == "":
			v.fail(at+".name", "is required")
		case p.Name == ProviderTokenX || p.Name == ProviderVakt:
			v.fail(at+".name", "%q is reserved for tokens vakt issues", p.Name)
		default:
			if j, dup := names[p.Name]; dup {
				v.fail(at+".name", "%q is already the name of identityProviders[%d]", p.Name, j)
			}
			names[p.Name] = i
		}
		if err := checkURL(p.Issuer); err != nil {
			v.fail(at+".issuer", "%v", err)
		} else if other, dup := issuers[p.Issuer]; dup {
			v.fail(at+".issuer", "%q is already the issuer of %s", p.Issuer, other)
		} else {
			issuers[p.Issuer] = "identity provider " + p.Name
		}
		v.provider(at, p)
	}
	return names
}

// provider checks what concerns one identity provider alone.
func (v *validator) provider(at string, p *IdentityProvider) {
	switch {
	case p.WellKnownURL == "" && p.JWKSURI == "":
		v.fail(at, "needs wellKnownUrl or jwksUri")
	case p.WellKnownURL != "" && p.JWKSURI != "":
		v.fail(at, "has both wellKnownUrl and jwksUri; give one")
	case p.WellKnownURL != "":
		if err := checkURL(p.WellKnownURL); err != nil {
			v.fail(at+".wellKnownUrl", "%v", err)
		}
	default:
		if err := checkURL(p.JWKSURI); err != nil {
			v.fail(at+".jwksUri", "%v", err)
		}
	}
	for j, a := range p.Audience {
		if a == "" {
			v.fail(fmt.Sprintf("%s.audience[%d]", at, j), "is empty")
		}
	}
	for j, a := range p.Algorithms {
		if !authz.SupportedAlgorithm(a) {
			v.fail(fmt.Sprintf("%s.algorithms[%d]", at, j), "%q is not supported (one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA)", a)
		}
	}
	if d := p.Leeway.Std(); d < 0 || d > 10*time.Minute {
		v.fail(at+".leeway", "must be between 0s and 10m")
	}
	if p.Typ != "" && !typValue.MatchString(p.Typ) {
		v.fail(at+".typ", "%q is not a media type such as at+jwt", p.Typ)
	}
}

// validateApplications checks the applications, and that no two claim one
// id, host or resource URI.
func (c *Config) validateApplications(v *validator, providers map[string]int) {
	claims := newClaimSet()
	for i := range c.Applications {
		a := &c.Applications[i]
		at := fmt.Sprintf("applications[%d]", i)
		v.application(at, at+".name", at+".namespace", a, providers)
		for _, cl := range claims.clashes(a, at, nil) {
			v.fail(cl.Path, "%s", cl.msg)
		}
		claims.take(a, owner{id: a.ID(), at: at, file: true})
	}
}

// application checks one application alone, a file entry (at
// applications[i]) or a resource's (at spec, its name and namespace in
// metadata): not its claims against other applications'.
func (v *validator) application(at, namePath, namespacePath string, a *Application, providers map[string]int) {
	v.name(namePath, a.Name, true)
	v.name(namespacePath, a.Namespace, true)
	v.name(at+".cluster", a.Cluster, false)
	switch {
	case keySources(a) > 1:
		v.fail(at, "give at most one of jwks, jwksFile and jwksUri")
	case a.JWKSURI != "":
		if err := checkURL(a.JWKSURI); err != nil {
			v.fail(at+".jwksUri", "%v", err)
		}
	}
	v.check(at, a, providers)
	v.rules(at, a.AccessPolicy.Inbound.Rules)
}

// rules checks access rules as written, before resolveRules fills them in.
func (v *validator) rules(at string, rules []Rule) {
	for j, r := range rules {
		rat := fmt.Sprintf("%s.accessPolicy.inbound.rules[%d]", at, j)
		v.name(rat+".application", r.Application, true)
		if r.Cluster != "" && r.Namespace == "" {
			v.fail(rat+".namespace", "is required when cluster is given")
		}
		v.name(rat+".namespace", r.Namespace, false)
		v.name(rat+".cluster", r.Cluster, false)
	}
}

var (
	hostname    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)
	trustDomain = regexp.MustCompile(`^[a-z0-9._-]{1,255}$`)
	typValue    = regexp.MustCompile(`^[A-Za-z0-9!#$&^_.+-]+(/[A-Za-z0-9!#$&^_.+-]+)?$`)
	method      = regexp.MustCompile(`^[A-Z]+$`)
	headerName  = regexp.MustCompile(`^x-vakt-[a-z0-9-]+$`)
	scopeString = regexp.MustCompile(`^[\x21\x23-\x5b\x5d-\x7e]+$`) // RFC 6749 scope-token
)

// check validates what Check reads: hosts, routes, authentication and
// forwarded claims.
func (v *validator) check(at string, a *Application, providers map[string]int) {
	hosts := make(map[string]int, len(a.Hosts))
	for j, h := range a.Hosts {
		p := fmt.Sprintf("%s.hosts[%d]", at, j)
		if !hostname.MatchString(h) {
			v.fail(p, "%q is not a lowercase host name without port", h)
		} else if k, dup := hosts[h]; dup {
			v.fail(p, "%q is also %s.hosts[%d]: list a host once", h, at, k)
		} else {
			hosts[h] = j
		}
	}
	resources := make(map[string]int, len(a.Resources))
	for j, r := range a.Resources {
		p := fmt.Sprintf("%s.resources[%d]", at, j)
		// Compared as the policy compares them: "https://x" and
		// "https://X:443/" are one resource.
		key, _, ok := webResource(r)
		if !ok {
			v.fail(p, "%q is not an absolute URI without a fragment", r)
		} else if k, dup := resources[key]; dup {
			v.fail(p, "%q is also %s.resources[%d] (%q): list a resource once", r, at, k, a.Resources[k])
		} else {
			resources[key] = j
		}
	}
	for j, r := range a.Routes {
		p := fmt.Sprintf("%s.routes[%d]", at, j)
		switch {
		case (r.Path == "") == (r.PathPrefix == ""):
			v.fail(p, "give exactly one of path and pathPrefix")
		case r.Path != "" && r.Path[0] != '/':
			v.fail(p+".path", "%q must start with /", r.Path)
		case r.PathPrefix != "" && r.PathPrefix[0] != '/':
			v.fail(p+".pathPrefix", "%q must start with /", r.PathPrefix)
		}
		for _, pth := range []string{r.Path, r.PathPrefix} {
			if pth != "" {
				if n, err := authz.NormalizePath(pth, authz.RejectPathParameters); err != nil || n != pth {
					v.fail(p, "%q is not a normalized path (no query, encoding, dot segments or backslashes)", pth)
				}
			}
		}
		for k, m := range r.Methods {
			if !method.MatchString(m) {
				v.fail(fmt.Sprintf("%s.methods[%d]", p, k), "%q is not an upper-case HTTP method", m)
			}
		}
		if r.Public && len(r.Scopes) > 0 {
			v.fail(p, "a public route needs no token, so it cannot require scopes")
		}
		for k, sc := range r.Scopes {
			if !scopeString.MatchString(sc) {
				v.fail(fmt.Sprintf("%s.scopes[%d]", p, k), "%q is not a scope (no spaces, quotes or backslashes)", sc)
			}
		}
	}
	for j, au := range a.Authentication {
		p := fmt.Sprintf("%s.authentication[%d]", at, j)
		i, ok := providers[au.IdentityProvider]
		if !ok {
			v.fail(p+".identityProvider", "%q is not a configured identity provider (vakt's own tokens need no entry)", au.IdentityProvider)
			continue
		}
		switch {
		case au.Audience == AnyAudience:
			v.warn("%s: %s accepts %s's tokens for any audience (audience: any): a token meant for any other API of that provider is accepted too", p, a.ID(), au.IdentityProvider)
		case au.Audience == "" && len(v.config.IdentityProviders[i].Audience) == 0:
			v.fail(p+".audience", "is required: identity provider %s has no audience either, so a token it issued for any API would be accepted; name this application's audience, or write audience: any to accept that knowingly", au.IdentityProvider)
		}
	}
	switch a.PathParameters {
	case "", PathParametersReject, PathParametersStrip:
	default:
		v.fail(at+".pathParameters", "%q is not reject or strip", a.PathParameters)
	}
	seen := map[string]bool{}
	for j, fc := range a.ForwardClaims {
		p := fmt.Sprintf("%s.forwardClaims[%d]", at, j)
		switch {
		case fc.Claim == "":
			v.fail(p+".claim", "is required")
		case !headerName.MatchString(fc.Header):
			v.fail(p+".header", "%q must be a lowercase header name starting with x-vakt-", fc.Header)
		case authz.IsIdentityHeader(fc.Header) || seen[fc.Header]:
			v.fail(p+".header", "%q is already set by vakt or another claim", fc.Header)
		}
		seen[fc.Header] = true
	}
}

func (v *validator) name(path, s string, required bool) {
	switch {
	case s == "" && required:
		v.fail(path, "is required")
	case s != "" && !label.MatchString(s):
		v.fail(path, "%q is not a valid name (lowercase letters, digits and '-', at most 63)", s)
	}
}

// checkIssuer accepts vakt's own issuer as RFC 8414 §2 has it: an https URL
// with no query or fragment (a path is allowed); plain http only on a
// loopback host, for development.
func checkIssuer(s string) error {
	if err := checkURL(s); err != nil {
		return err
	}
	u, _ := url.Parse(s)
	if u.RawQuery != "" || u.ForceQuery {
		return fmt.Errorf("%q has a query; an issuer has none (RFC 8414 §2)", s)
	}
	if u.Scheme == "http" && !loopback(u.Hostname()) {
		return fmt.Errorf("%q is not https; plain http is for loopback addresses only (RFC 8414 §2)", s)
	}
	if u.EscapedPath() != u.Path || strings.ContainsAny(u.Path, "%") {
		return fmt.Errorf("%q has a path that needs percent-encoding; write an issuer of plain characters", s)
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkURL accepts an absolute http or https URL without fragment.
func checkURL(s string) error {
	if s == "" {
		return errors.New("is required")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q is not an absolute http(s) URL", s)
	}
	return nil
}

// wildcard reports whether a listen host is every address.
func wildcard(host string) bool { return host == "" || host == "0.0.0.0" || host == "::" }
