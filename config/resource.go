package config

import (
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strings"

	"github.com/goccy/go-yaml"
)

// The Kubernetes resource an application may be declared by, in its
// team's own namespace: vakt.dev/v1alpha1, kind Application.
const (
	ResourceGroup   = "vakt.dev"
	ResourceVersion = "v1alpha1"
	KindApplication = "Application"
)

// ResourceSpec is the spec of an Application resource: the ApplicationSpec
// a configuration file's entry has (its name and namespace are the
// resource's), and SecretName.
type ResourceSpec struct {
	ApplicationSpec `yaml:",inline"`
	// SecretName, when set, asks vakt to generate the application's client
	// key into this Secret of the resource's namespace, with the TOKEN_X_*
	// variables NAIS injects.
	SecretName string `yaml:"secretName"`
}

// ResourceIndex is what resources are checked against, in two steps.
// CheckApplication and CheckJwker check one resource alone against the
// configuration: its fields, the identity providers it names, and the
// grants of its namespace. They change nothing, and are safe for
// concurrent use. Claim then takes an accepted application's id, hosts and
// resource URIs, unless an application claimed before it holds one: the
// file's applications first (NewResourceIndex claims them), then each
// application in the order of the calls. Build one index per merge, check
// each resource, and claim those accepted in the order ownership goes by
// (oldest first).
type ResourceIndex struct {
	c         *Config
	providers map[string]int
	grants    []grant
	claims    *claimSet
}

// NewResourceIndex indexes c's identity providers and grants, and claims
// its applications' ids, hosts and resource URIs: a resource never takes
// one from the configuration file.
func (c *Config) NewResourceIndex() *ResourceIndex {
	x := &ResourceIndex{c: c, providers: make(map[string]int, len(c.IdentityProviders)),
		grants: compileGrants(c.Kubernetes.Grants), claims: newClaimSet()}
	x.claims.noteFile = true
	for i := range c.IdentityProviders {
		x.providers[c.IdentityProviders[i].Name] = i
	}
	// The file's applications passed validation: none clashes.
	for i := range c.Applications {
		a := &c.Applications[i]
		x.claims.take(a, owner{id: a.ID(), at: a.ID(), file: true})
	}
	return x
}

// GrantsKey names which of the configuration's grants apply to a
// namespace with labels: what CheckApplication and CheckJwker read of the
// namespace besides its name. Two label sets with the same key check
// alike, so a change of labels that changes no grant needs no new check.
func (x *ResourceIndex) GrantsKey(namespace string, labels map[string]string) string {
	var b strings.Builder
	for i := range x.grants {
		if x.grants[i].appliesTo(namespace, labels) {
			fmt.Fprintf(&b, "%d,", i)
		}
	}
	return b.String()
}

// MaxResourceSpec bounds the spec of a resource vakt reads.
const MaxResourceSpec = 256 << 10

// ResourceApplication is AcceptApplication in an index of c alone, for a
// namespace without labels (but its name's, kubernetes.io/metadata.name):
// checked, then claimed against the file's applications.
func (c *Config) ResourceApplication(name, namespace string, spec []byte) (*Application, *ResourceSpec, error) {
	return c.NewResourceIndex().AcceptApplication(name, namespace, nil, spec)
}

// AcceptApplication is CheckApplication, then Claim: the application, if
// it passes both. A refusal is CheckApplication's Errors or Claim's
// *ConflictError.
func (x *ResourceIndex) AcceptApplication(name, namespace string, labels map[string]string, spec []byte) (*Application, *ResourceSpec, error) {
	a, rs, err := x.CheckApplication(name, namespace, labels, spec)
	if err != nil {
		return nil, nil, err
	}
	if err := x.Claim(a); err != nil {
		return nil, nil, err
	}
	return a, rs, nil
}

// ResourceApplicationIn is AcceptApplication for a namespace without
// labels.
//
// Deprecated: use CheckApplication with the namespace's labels, then
// Claim in the order ownership goes by.
func (x *ResourceIndex) ResourceApplicationIn(name, namespace string, spec []byte) (*Application, *ResourceSpec, error) {
	return x.AcceptApplication(name, namespace, nil, spec)
}

// CheckApplication reads the Application resource name in namespace,
// whose labels are labels and whose spec (YAML or JSON, as the API server
// serves it) is spec, against the configuration alone: not against other
// applications' claims (Claim's part). It changes nothing. labels are the
// namespace's as the API server has them (nil: none); its name is its
// label kubernetes.io/metadata.name whatever they say.
//
// The spec is checked by the same code as a configuration file's entry,
// with the same errors (Errors); they name spec.<field> (metadata.name for
// the name) with its line in spec. A resource is of the cluster vakt is in
// (spec.cluster may only name it), has no file beside it (jwksFile is
// refused: jwks or jwksUri give its keys, or secretName has vakt make
// them), and lists a host, a resource URI or a jwksUri only where a grant
// applying to its namespace (kubernetes.grants, by name or by labels)
// grants it. A host or resource URI listed twice is refused. The
// application is returned as Load returns a file's: keys parsed, rules
// resolved to full ids.
func (x *ResourceIndex) CheckApplication(name, namespace string, labels map[string]string, spec []byte) (*Application, *ResourceSpec, error) {
	c := x.c
	if len(spec) > MaxResourceSpec {
		return nil, nil, fmt.Errorf("spec: %d bytes, more than the %d a resource may have", len(spec), MaxResourceSpec)
	}
	var rs ResourceSpec
	if err := yaml.UnmarshalWithOptions(spec, &rs, yaml.Strict()); err != nil {
		return nil, nil, prefixed(decodeErrorOf(err, spec, reflect.TypeFor[ResourceSpec]()))
	}
	a := &Application{Name: name, Namespace: namespace, ApplicationSpec: rs.ApplicationSpec}
	v := newValidator(spec)
	v.config = c
	v.strip = "spec."
	// The resource's cluster is the one it is in: a team may not declare
	// another cluster's application (its namesake there) by naming it.
	if a.Cluster != "" && a.Cluster != c.Cluster {
		v.fail("spec.cluster", "%q is not this cluster (%s): a resource declares an application of the cluster it is in", a.Cluster, c.Cluster)
	}
	a.Cluster = c.Cluster
	switch {
	case a.JWKSFile != "":
		v.fail("spec.jwksFile", "a resource has no file beside it: give jwks or jwksUri, or secretName for vakt to make the key")
	case a.JWKS != nil && keySources(a) == 1:
		set, err := keySetFromYAML(a.JWKS)
		if err != nil {
			v.fail("spec.jwks", "%v", err)
		}
		a.Keys = set
	case a.JWKSURI != "" && !strings.HasPrefix(a.JWKSURI, "https://"):
		// vakt fetches what a team names: over https, never plain http
		// into the cluster's network.
		v.fail("spec.jwksUri", "%q is not https", a.JWKSURI)
	}
	if rs.SecretName != "" {
		if !hostname.MatchString(rs.SecretName) || len(rs.SecretName) > 253 {
			v.fail("spec.secretName", "%q is not a Secret name (lowercase letters, digits, '-' and '.')", rs.SecretName)
		}
		if keySources(a) > 0 {
			v.fail("spec.secretName", "vakt makes the key of an application with secretName: give no jwks or jwksUri")
		}
	}
	v.application("spec", "metadata.name", "metadata.namespace", a, x.providers)
	x.checkGrants(v, a, labels)
	if err := v.result(); err != nil {
		return nil, nil, err
	}
	a.lines = newClaimLines(spec, a)
	a.resolveRules()
	return a, &rs, nil
}

// checkGrants refuses what a lists, valid, that no grant of its namespace
// grants.
func (x *ResourceIndex) checkGrants(v *validator, a *Application, labels map[string]string) {
	if len(a.Hosts) == 0 && len(a.Resources) == 0 && a.JWKSURI == "" {
		return
	}
	var gs []*grant
	for i := range x.grants {
		if g := &x.grants[i]; g.appliesTo(a.Namespace, labels) {
			gs = append(gs, g)
		}
	}
	const ask = "ask the cluster administrator for a kubernetes.grants entry"
	for j, h := range a.Hosts {
		if hostname.MatchString(h) && !slices.ContainsFunc(gs, func(g *grant) bool { return g.grantsHost(h) }) {
			v.fail(fmt.Sprintf("spec.hosts[%d]", j), "%q is not granted to namespace %s: %s", h, a.Namespace, ask)
		}
	}
	for j, r := range a.Resources {
		u, err := url.Parse(r)
		if err != nil || !u.IsAbs() || u.Fragment != "" || slices.ContainsFunc(gs, func(g *grant) bool { return g.grantsResource(u) }) {
			continue
		}
		p := fmt.Sprintf("spec.resources[%d]", j)
		switch {
		case u.User != nil:
			v.fail(p, "%q has user info, which names no resource", r)
		case dotSegments(u):
			v.fail(p, "%q is not granted to namespace %s (a URI with a \".\" or \"..\" path segment matches no granted prefix): write the path it stands for, or %s", r, a.Namespace, ask)
		default:
			v.fail(p, "%q is not granted to namespace %s: %s", r, a.Namespace, ask)
		}
	}
	if a.JWKSURI != "" && strings.HasPrefix(a.JWKSURI, "https://") && checkURL(a.JWKSURI) == nil {
		u, _ := url.Parse(a.JWKSURI)
		if !slices.ContainsFunc(gs, func(g *grant) bool { return g.grantsJWKSURI(u) }) {
			v.fail("spec.jwksUri", "%q is not allowed for namespace %s: vakt fetches no URL a team chose unless kubernetes.grants allows it (jwksUris); the keys come from secretName, which vakt makes them in, or inline jwks", a.JWKSURI, a.Namespace)
		}
	}
}

// prefixed says of a decoding error that it is the spec's.
func prefixed(err error) error {
	return fmt.Errorf("spec: %w", err)
}
