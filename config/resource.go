package config

import (
	"fmt"
	"net/url"
	"reflect"
	"strings"

	"github.com/goccy/go-yaml"

	"github.com/vakt-dev/vakt/authz"
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

// ResourceIndex is what resources are checked against: the
// configuration's identity providers, and the ids, hosts and resource URIs
// the file's applications and the resources accepted so far hold. Build
// one per merge (NewResourceIndex) and check each resource in it: a
// resource accepted takes its claims, one refused takes none.
type ResourceIndex struct {
	c         *Config
	providers map[string]int
	ids       map[string]string
	hosts     map[string]string
	resources map[string]string // canonical resource URI → id
	resHosts  map[string]string // hosts of http(s) resource URIs → id
}

// NewResourceIndex indexes c's applications for ResourceApplicationIn.
func (c *Config) NewResourceIndex() *ResourceIndex {
	x := &ResourceIndex{c: c, providers: make(map[string]int, len(c.IdentityProviders)),
		ids: map[string]string{}, hosts: map[string]string{}, resources: map[string]string{}, resHosts: map[string]string{}}
	for i := range c.IdentityProviders {
		x.providers[c.IdentityProviders[i].Name] = i
	}
	// The file's applications passed validation: checking them again in
	// a validator of their own fills the maps as Load did.
	v := x.validator(nil)
	for i := range c.Applications {
		a := &c.Applications[i]
		at := a.ID()
		v.application(at, at, at, a, x.providers, x.ids, x.hosts)
	}
	return x
}

func (x *ResourceIndex) validator(spec []byte) *validator {
	v := newValidator(spec)
	v.config = x.c
	v.resources, v.resourceHosts = x.resources, x.resHosts
	return v
}

// MaxResourceSpec bounds the spec of a resource vakt reads.
const MaxResourceSpec = 256 << 10

// ResourceApplication is ResourceApplicationIn an index of c alone.
func (c *Config) ResourceApplication(name, namespace string, spec []byte) (*Application, *ResourceSpec, error) {
	return c.NewResourceIndex().ResourceApplicationIn(name, namespace, spec)
}

// ResourceApplicationIn reads the Application resource name in namespace,
// whose spec (YAML or JSON, as the API server serves it) is spec, against
// the index: the identity providers it may name, and the ids, hosts and
// resource URIs it may not take. Accepted, its claims join the index.
//
// The spec is checked by the same code as a configuration file's entry,
// with the same errors; they name spec.<field> (metadata.name for the
// name) with its line in spec. A resource is of the cluster vakt is in
// (spec.cluster may only name it), has no file beside it (jwksFile is
// refused: jwks or jwksUri give its keys, or secretName has vakt make
// them), and fetches its keys over https only. The application is returned
// as Load returns a file's: keys parsed, rules resolved to full ids.
func (x *ResourceIndex) ResourceApplicationIn(name, namespace string, spec []byte) (*Application, *ResourceSpec, error) {
	c := x.c
	if len(spec) > MaxResourceSpec {
		return nil, nil, fmt.Errorf("spec: %d bytes, more than the %d a resource may have", len(spec), MaxResourceSpec)
	}
	var rs ResourceSpec
	if err := yaml.UnmarshalWithOptions(spec, &rs, yaml.Strict()); err != nil {
		return nil, nil, prefixed(decodeErrorOf(err, spec, reflect.TypeFor[ResourceSpec]()))
	}
	a := &Application{Name: name, Namespace: namespace, ApplicationSpec: rs.ApplicationSpec}
	v := x.validator(spec)
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
	// Claims are taken as the check goes; a refusal gives back the ones
	// this resource took.
	before := x.snapshot(a)
	v.application("spec", "metadata.name", "metadata.namespace", a, x.providers, x.ids, x.hosts)
	if err := v.result(); err != nil {
		x.restore(a, before)
		return nil, nil, err
	}
	a.resolveRules()
	return a, &rs, nil
}

// claims is which of an application's would-be claims were free before
// it was checked.
type claims struct {
	id                         bool
	hosts, resources, resHosts []string
}

func (x *ResourceIndex) snapshot(a *Application) claims {
	var cl claims
	_, taken := x.ids[a.ID()]
	cl.id = !taken
	for _, h := range a.Hosts {
		if _, taken := x.hosts[h]; !taken {
			cl.hosts = append(cl.hosts, h)
		}
	}
	for _, r := range a.Resources {
		u, err := url.Parse(r)
		if err != nil {
			continue
		}
		if k := authz.CanonicalResource(u); x.resources[k] == "" {
			cl.resources = append(cl.resources, k)
		}
		if h := strings.ToLower(u.Hostname()); x.resHosts[h] == "" {
			cl.resHosts = append(cl.resHosts, h)
		}
	}
	return cl
}

func (x *ResourceIndex) restore(a *Application, cl claims) {
	if cl.id {
		delete(x.ids, a.ID())
	}
	for _, h := range cl.hosts {
		delete(x.hosts, h)
	}
	for _, k := range cl.resources {
		delete(x.resources, k)
	}
	for _, h := range cl.resHosts {
		delete(x.resHosts, h)
	}
}

// prefixed says of a decoding error that it is the spec's.
func prefixed(err error) error {
	return fmt.Errorf("spec: %w", err)
}
