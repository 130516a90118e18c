package config

import (
	"fmt"
	"reflect"

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

// ResourceApplication reads the Application resource name in namespace,
// whose spec (YAML or JSON, as the API server serves it) is spec, against
// c: the identity providers it may name, the default cluster, and the
// applications c has, whose ids, hosts and resources it may not take.
//
// The spec is checked by the same code as a configuration file's entry,
// with the same errors; they name spec.<field> (metadata.name for the
// name) with its line in spec. A resource has no file beside it: jwksFile
// is refused (jwks or jwksUri give its keys, or secretName has vakt make
// them). The application is returned as Load returns a file's: keys
// parsed, rules resolved to full ids.
func (c *Config) ResourceApplication(name, namespace string, spec []byte) (*Application, *ResourceSpec, error) {
	var rs ResourceSpec
	if err := yaml.UnmarshalWithOptions(spec, &rs, yaml.Strict()); err != nil {
		return nil, nil, prefixed(decodeErrorOf(err, spec, reflect.TypeFor[ResourceSpec]()))
	}
	a := &Application{Name: name, Namespace: namespace, ApplicationSpec: rs.ApplicationSpec}
	v := newValidator(spec)
	v.strip = "spec."
	v.config = c
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
	}
	if rs.SecretName != "" {
		if !hostname.MatchString(rs.SecretName) || len(rs.SecretName) > 253 {
			v.fail("spec.secretName", "%q is not a Secret name (lowercase letters, digits, '-' and '.')", rs.SecretName)
		}
		if keySources(a) > 0 {
			v.fail("spec.secretName", "vakt makes the key of an application with secretName: give no jwks or jwksUri")
		}
	}
	providers := make(map[string]int, len(c.IdentityProviders))
	for i := range c.IdentityProviders {
		providers[c.IdentityProviders[i].Name] = i
	}
	ids := make(map[string]string, len(c.Applications))
	hosts := map[string]string{}
	for i := range c.Applications {
		b := &c.Applications[i]
		ids[b.ID()] = b.ID()
		for _, h := range b.Hosts {
			hosts[h] = b.ID()
		}
		for _, r := range b.Resources {
			v.resources[r] = b.ID()
		}
	}
	v.application("spec", "metadata.name", "metadata.namespace", a, providers, ids, hosts)
	if err := v.result(); err != nil {
		return nil, nil, err
	}
	for j := range a.AccessPolicy.Inbound.Rules {
		r := &a.AccessPolicy.Inbound.Rules[j]
		if r.Namespace == "" {
			r.Namespace = a.Namespace
		}
		if r.Cluster == "" {
			r.Cluster = a.Cluster
		}
	}
	return a, &rs, nil
}

// prefixed says of a decoding error that it is the spec's.
func prefixed(err error) error {
	return fmt.Errorf("spec: %w", err)
}
