package config

import (
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/parser"
)

// NAIS's Jwker resource (github.com/nais/liberator, pkg/apis/nais.io/v1,
// jwker_types.go), which naiserator makes from an application's nais.yaml
// when tokenx is enabled: vakt reads it as an Application, so that a NAIS
// cluster can put vakt in tokendings' place without changing a manifest.
const (
	JwkerGroup   = "nais.io"
	JwkerVersion = "v1"
	KindJwker    = "Jwker"
)

// jwkerSpec is a Jwker's spec, as the jwkers.nais.io CRD has it: every
// field it may hold, so that decoding strictly refuses only what the CRD
// would.
type jwkerSpec struct {
	AccessPolicy *jwkerAccessPolicy `yaml:"accessPolicy"`
	SecretName   string             `yaml:"secretName"`
}

type jwkerAccessPolicy struct {
	Inbound  *jwkerInbound  `yaml:"inbound"`
	Outbound *jwkerOutbound `yaml:"outbound"`
}

type jwkerInbound struct {
	Rules []jwkerInboundRule `yaml:"rules"`
}

type jwkerInboundRule struct {
	Application string `yaml:"application"`
	Namespace   string `yaml:"namespace"`
	Cluster     string `yaml:"cluster"`
	// Permissions are Azure AD's (custom scopes and roles): "currently
	// only applicable for Azure AD clients", says the CRD. Tokendings
	// ignores them; so does vakt.
	Permissions *struct {
		Scopes []string `yaml:"scopes"`
		Roles  []string `yaml:"roles"`
	} `yaml:"permissions"`
}

type jwkerOutbound struct {
	Rules []struct {
		Application string `yaml:"application"`
		Namespace   string `yaml:"namespace"`
		Cluster     string `yaml:"cluster"`
	} `yaml:"rules"`
	External []struct {
		Host  string `yaml:"host"`
		IPv4  string `yaml:"ipv4"`
		Ports []struct {
			Port uint32 `yaml:"port"`
		} `yaml:"ports"`
	} `yaml:"external"`
}

// JwkerAnyApplication is the application name NAIS's access policies use
// for every application of a namespace.
const JwkerAnyApplication = "*"

// JwkerApplication is AcceptJwker in an index of c alone, for a namespace
// without labels (but its name's, kubernetes.io/metadata.name).
func (c *Config) JwkerApplication(name, namespace string, spec []byte) (*Application, string, error) {
	return c.NewResourceIndex().AcceptJwker(name, namespace, nil, spec)
}

// AcceptJwker is CheckJwker, then Claim: the application and its Secret's
// name, if it passes both. A refusal is CheckJwker's Errors or Claim's
// *ConflictError.
func (x *ResourceIndex) AcceptJwker(name, namespace string, labels map[string]string, spec []byte) (*Application, string, error) {
	a, secretName, err := x.CheckJwker(name, namespace, labels, spec)
	if err != nil {
		return nil, "", err
	}
	if err := x.Claim(a); err != nil {
		return nil, "", err
	}
	return a, secretName, nil
}

// JwkerApplicationIn is AcceptJwker for a namespace without labels.
//
// Deprecated: use CheckJwker with the namespace's labels, then Claim in
// the order ownership goes by.
func (x *ResourceIndex) JwkerApplicationIn(name, namespace string, spec []byte) (*Application, string, error) {
	return x.AcceptJwker(name, namespace, nil, spec)
}

// CheckJwker reads the Jwker resource name in namespace, whose labels are
// labels and whose spec (YAML or JSON, as the API server serves it) is
// spec, as the Application resource it stands for, against the
// configuration alone (see CheckApplication; a Jwker claims only its id,
// which Claim takes). It returns the application with the Secret vakt is
// to make its client key in (spec.secretName, which a Jwker must have:
// jwker always makes the key). It changes nothing.
//
// The spec is decoded strictly (a field the jwkers.nais.io CRD does not
// have is refused), then its inbound rules and secretName are validated as
// an Application resource's spec, by CheckApplication: the same checks,
// with the same words, naming the Jwker's own fields and lines.
//
// What vakt does not read, and why:
//   - accessPolicy.outbound: it says whom the application calls, which
//     NAIS uses for network policies and tokendings records but never
//     enforces on a token exchange; vakt enforces inbound rules, on the
//     target's side, as tokendings does (the target's accessPolicyInbound
//     must name the caller).
//   - inbound rules' permissions: Azure AD's alone.
//   - inbound rules for application "*": NAIS uses them to open a
//     namespace to network traffic; jwker passes "cluster:namespace:*" to
//     tokendings, which compares client ids exactly, so such a rule grants
//     no token. vakt grants none either, rather than refuse the Jwker.
func (x *ResourceIndex) CheckJwker(name, namespace string, labels map[string]string, spec []byte) (*Application, string, error) {
	if len(spec) > MaxResourceSpec {
		return nil, "", fmt.Errorf("spec: %d bytes, more than the %d a resource may have", len(spec), MaxResourceSpec)
	}
	var js jwkerSpec
	if err := yaml.UnmarshalWithOptions(spec, &js, yaml.Strict()); err != nil {
		return nil, "", prefixed(jwkerDecodeError(err, spec))
	}
	// The rules vakt reads, and the index each had in the Jwker.
	var rs ResourceSpec
	var index []int
	if ap := js.AccessPolicy; ap != nil && ap.Inbound != nil {
		for i, r := range ap.Inbound.Rules {
			if r.Application == JwkerAnyApplication {
				continue
			}
			rs.AccessPolicy.Inbound.Rules = append(rs.AccessPolicy.Inbound.Rules, Rule{Application: r.Application, Namespace: r.Namespace, Cluster: r.Cluster})
			index = append(index, i)
		}
	}
	rs.SecretName = js.SecretName
	converted, err := yaml.Marshal(&rs)
	if err != nil {
		return nil, "", err
	}
	a, _, err := x.CheckApplication(name, namespace, labels, converted)
	var errs Errors
	if err != nil && !errors.As(err, &errs) {
		// The converted spec is vakt's own: it always decodes.
		return nil, "", fmt.Errorf("spec: %w", err)
	}
	// The errors name the converted spec's rules and lines: name the
	// Jwker's.
	orig := newValidator(spec)
	orig.strip = "spec."
	for _, e := range errs {
		e.Path = jwkerRulePath(e.Path, index)
		e.Line = orig.line(e.Path)
	}
	if js.SecretName == "" {
		errs = append(errs, &FieldError{Path: "spec.secretName", Line: orig.line("spec.secretName"), Msg: "is required: a Jwker's client key is made by vakt, into this Secret"})
	}
	if len(errs) > 0 {
		slices.SortStableFunc(errs, func(a, b *FieldError) int { return cmp.Compare(a.Line, b.Line) })
		return nil, "", errs
	}
	return a, js.SecretName, nil
}

var convertedRule = regexp.MustCompile(`^spec\.accessPolicy\.inbound\.rules\[(\d+)\]`)

// jwkerRulePath turns a path into the converted spec's rules into the
// Jwker's: index[i] is the Jwker's index of converted rule i.
func jwkerRulePath(path string, index []int) string {
	m := convertedRule.FindStringSubmatchIndex(path)
	if m == nil {
		return path
	}
	i, err := strconv.Atoi(path[m[2]:m[3]])
	if err != nil || i >= len(index) {
		return path
	}
	return fmt.Sprintf("spec.accessPolicy.inbound.rules[%d]", index[i]) + path[m[1]:]
}

// jwkerDecodeError is decodeError for a Jwker's spec: an unknown field is
// found, in source order, among the Jwker's fields.
func jwkerDecodeError(err error, data []byte) error {
	var uf *yaml.UnknownFieldError
	if errors.As(err, &uf) {
		if f, perr := parser.ParseBytes(data, 0); perr == nil && len(f.Docs) > 0 {
			if tok := unknownField(f.Docs[0].Body, reflect.TypeFor[jwkerSpec]()); tok != nil {
				return fmt.Errorf(`line %d: unknown field "%s"`, tok.Position.Line, tok.Value)
			}
		}
	}
	return decodeError(err, data)
}
