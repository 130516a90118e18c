// Package config reads vakt's YAML configuration and validates it into an
// immutable snapshot. Nothing modifies a Config after Load returns it; a
// reload loads a new one.
package config

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/vakt-dev/vakt/authz"
)

// Defaults for fields a configuration may leave out.
const (
	DefaultGRPCAddress = "127.0.0.1:9000"
	DefaultHTTPAddress = "127.0.0.1:8080"
	// DefaultAdminAddress is the admin listener's: /metrics, pprof, health.
	DefaultAdminAddress = "127.0.0.1:9090"
	// AdminOff as listen.admin opens no admin listener.
	AdminOff = "off"
	// DefaultTrustDomain is Istio's default SPIFFE trust domain.
	DefaultTrustDomain = "cluster.local"
	// AnyAudience, as an authentication entry's audience, accepts a
	// provider's tokens for any audience: said knowingly, and warned.
	AnyAudience = "any"
)

// Values of an application's pathParameters.
const (
	PathParametersReject = "reject"
	PathParametersStrip  = "strip"
)

// Reserved identity provider names: tokens vakt issued itself.
const (
	ProviderTokenX = "tokenx"
	ProviderVakt   = "vakt"
)

// Config is a validated configuration.
type Config struct {
	// Issuer is vakt's own issuer identifier, an absolute http(s) URL.
	Issuer string `yaml:"issuer"`
	// Cluster is the default cluster of applications and access rules.
	Cluster string `yaml:"cluster"`
	// TokenEndpointAliases are other URLs clients post token requests to
	// (http://vakt.vakt.svc.cluster.local:8080/token inside a cluster):
	// client assertions whose aud names one are accepted, as RFC 7523
	// lets a client name the token endpoint it uses.
	TokenEndpointAliases []string `yaml:"tokenEndpointAliases"`
	// TrustDomain is the SPIFFE trust domain of the mesh: Check finds an
	// application by a destination principal spiffe://<trustDomain>/ns/…
	// only (default cluster.local, as Istio's).
	TrustDomain       string             `yaml:"trustDomain"`
	Listen            Listen             `yaml:"listen"`
	IdentityProviders []IdentityProvider `yaml:"identityProviders"`
	Applications      []Application      `yaml:"applications"`
	Validation        Validation         `yaml:"validation"`
	Signing           Signing            `yaml:"signing"`
	Replay            Replay             `yaml:"replay"`
	Limits            Limits             `yaml:"limits"`
	Log               Log                `yaml:"log"`
	Shutdown          Shutdown           `yaml:"shutdown"`
	Kubernetes        Kubernetes         `yaml:"kubernetes"`

	// Warnings are what Load accepted but an operator should hear of, every
	// time it loads (an audience: any, say).
	Warnings []string `yaml:"-"`
	// Hash names the document loaded: the first 16 hex digits of its
	// SHA-256, so that a fleet shows which configuration each replica runs.
	Hash string `yaml:"-"`

	dir string // relative file names are resolved against it
}

// Signing configures the tokens vakt issues.
type Signing struct {
	// KeysFile is a private JWK Set (relative to the configuration file);
	// every key in it is published, the first one signs. Without it, vakt
	// generates one key of Algorithm at start.
	KeysFile string `yaml:"keysFile"`
	// Algorithm of a generated key: RS256 (default), ES256 or EdDSA.
	Algorithm string `yaml:"algorithm"`
	// TokenLifetime is how long issued tokens live (15m by default).
	TokenLifetime Duration `yaml:"tokenLifetime"`
}

// Replay configures where client assertion ids are remembered: in memory
// (the default, for one replica) or in Redis, shared by every replica.
type Replay struct {
	Redis *Redis `yaml:"redis"`
	// Memory bounds the in-memory store in bytes (default 64Mi, about
	// 400,000 ids).
	Memory ByteSize `yaml:"memory"`
	// MaxPerClient is how many unexpired ids one client may hold, so that
	// one client cannot crowd out the others (default: a tenth of the
	// in-memory store; 100,000 in Redis).
	MaxPerClient int `yaml:"maxPerClient"`
}

// Redis locates a Redis server.
type Redis struct {
	Address  string `yaml:"address"`
	Username string `yaml:"username"`
	// The password: in a file (a mounted Secret; a trailing newline is
	// dropped), in an environment variable, or inline (warned of). At
	// most one of the three.
	Password     string    `yaml:"password"`
	PasswordFile string    `yaml:"passwordFile"`
	PasswordEnv  string    `yaml:"passwordEnv"`
	DB           int       `yaml:"db"`
	TLS          *RedisTLS `yaml:"tls"`

	secret string
}

// Secret is the password, wherever it was given.
func (r *Redis) Secret() string { return r.secret }

// AdminAddress is the admin listener's address, "" when it is off.
func (l *Listen) AdminAddress() string {
	if l.Admin == AdminOff {
		return ""
	}
	return l.Admin
}

// Listen holds the listen addresses.
type Listen struct {
	GRPC string `yaml:"grpc"` // Check, Introspect, Exchange, health, reflection
	HTTP string `yaml:"http"` // introspection, /token, /jwks, metadata, /healthz
	// Admin serves /metrics, /debug/pprof/, /healthz, /readyz and
	// /buildinfo: on the loopback by default, so that the mesh never
	// reaches profiles and metrics by accident; "off" serves none of them.
	Admin string `yaml:"admin"`
	// Authz, when set, serves the HTTP authorization face (nginx
	// auth_request, Caddy and Traefik forward_auth, Envoy's http_service):
	// off by default, as it trusts the X-Original-* and X-Forwarded-*
	// headers proxies send, so only proxies may reach it.
	Authz string `yaml:"authz"`
	// TLS, when set, is the gRPC and HTTP listeners' (the admin listener
	// stays plaintext, on the loopback or behind a NetworkPolicy).
	TLS *TLS `yaml:"tls"`
}

// IdentityProvider is an external issuer whose tokens vakt accepts.
type IdentityProvider struct {
	Name         string   `yaml:"name"`
	Issuer       string   `yaml:"issuer"`
	WellKnownURL string   `yaml:"wellKnownUrl"`
	JWKSURI      string   `yaml:"jwksUri"`
	Audience     []string `yaml:"audience"`
	Algorithms   []string `yaml:"algorithms"`
	// Leeway is the clock skew allowed on exp, nbf and iat.
	Leeway Duration `yaml:"leeway"`
	// Typ, when set, is the typ header every token of the provider must
	// carry (RFC 8725 §3.11), e.g. at+jwt for RFC 9068 access tokens.
	Typ string `yaml:"typ"`
}

// Application is a workload that calls or is called, identified by
// cluster:namespace:name: an entry of the configuration file, or a
// vakt.dev Application resource (whose metadata gives the name and
// namespace, and whose spec is the ApplicationSpec).
type Application struct {
	Name            string `yaml:"name"`
	Namespace       string `yaml:"namespace"`
	ApplicationSpec `yaml:",inline"`

	// Keys is the parsed inline or file key set; nil otherwise.
	Keys *authz.KeySet `yaml:"-"`
	// KeysUntil says when keys of Keys stop being accepted, by kid: the
	// client keys vakt made for a resource and replaced, valid for
	// kubernetes.keyOverlap. Never from a file.
	KeysUntil map[string]time.Time `yaml:"-"`

	lines *claimLines // of a resource's hosts and resources, for Claim's errors
}

// ApplicationSpec is what a team declares of its application: one schema
// for the configuration file's entries and the Application resource's spec,
// checked by the same code with the same errors.
type ApplicationSpec struct {
	Cluster string `yaml:"cluster"` // the top-level cluster when empty
	// The application's public keys, at most one of: inline, a file (relative
	// to the configuration file) or a URL.
	JWKS         any          `yaml:"jwks"`
	JWKSFile     string       `yaml:"jwksFile"`
	JWKSURI      string       `yaml:"jwksUri"`
	AccessPolicy AccessPolicy `yaml:"accessPolicy"`
	// Hosts are the request hosts (without port) that name the application
	// in Check when Envoy's configuration does not, and in a token
	// exchange's resource (RFC 8707).
	Hosts []string `yaml:"hosts"`
	// Resources are absolute URIs that name the application in a token
	// exchange's resource, besides the URIs of its hosts.
	Resources []string `yaml:"resources"`
	// Routes, matched in order; the first match decides. With routes, a
	// request matching none is denied.
	Routes []Route `yaml:"routes"`
	// Authentication lists external identity providers whose tokens the
	// application accepts directly in Check (vakt's own tokens for it are
	// always accepted).
	Authentication []Authentication `yaml:"authentication"`
	// ForwardClaims copies claims into request headers on allow; header
	// names start with x-vakt-, so that a client can never send them itself.
	ForwardClaims []ForwardClaim `yaml:"forwardClaims"`
	// StripAuthorization removes the Authorization header on allow.
	StripAuthorization bool `yaml:"stripAuthorization"`
	// DynamicMetadata, when false, leaves the claims out of Check's allow
	// answer (Envoy's dynamic_metadata, for access logs and later filters):
	// a smaller answer. True when not set.
	DynamicMetadata *bool `yaml:"dynamicMetadata"`
	// PathParameters is what Check does with a path holding ';': reject
	// (the default) or strip, as servlet containers read ";…" parameters.
	PathParameters string `yaml:"pathParameters"`
}

// ID returns the application id, cluster:namespace:name.
func (a *Application) ID() string {
	return authz.AppID{Cluster: a.Cluster, Namespace: a.Namespace, Name: a.Name}.String()
}

// AccessPolicy says who may call an application.
type AccessPolicy struct {
	Inbound Inbound `yaml:"inbound"`
}

// Inbound lists the applications allowed to call.
type Inbound struct {
	Rules []Rule `yaml:"rules"`
}

// Rule allows one calling application. After Load, Namespace and Cluster
// are filled in: a rule with only application means the target's own
// namespace and cluster; with namespace, the target's cluster.
type Rule struct {
	Application string `yaml:"application"`
	Namespace   string `yaml:"namespace"`
	Cluster     string `yaml:"cluster"`
}

// Route is a set of requests to an application and what they need.
type Route struct {
	Methods    []string `yaml:"methods"`    // any when empty
	Path       string   `yaml:"path"`       // exact, or
	PathPrefix string   `yaml:"pathPrefix"` // prefix
	Scopes     []string `yaml:"scopes"`     // every one required
	Public     bool     `yaml:"public"`     // no token needed
}

// Authentication accepts an identity provider's tokens for an application.
type Authentication struct {
	IdentityProvider string `yaml:"identityProvider"`
	// Audience must be in the token's aud. Without it, the provider's own
	// audience applies; when neither has one, the entry is refused, unless
	// it says AnyAudience.
	Audience string `yaml:"audience"`
}

// ForwardClaim copies a claim into a request header.
type ForwardClaim struct {
	Claim  string `yaml:"claim"`
	Header string `yaml:"header"`
}

// ID returns the id of the application the rule allows.
func (r Rule) ID() string {
	return authz.AppID{Cluster: r.Cluster, Namespace: r.Namespace, Name: r.Application}.String()
}

// Limits bound the work vakt takes on at once, so that no flood of one kind
// of request, and no identity provider that hangs, starves the rest. They
// are read at start: a change needs a restart.
// Which decisions get a log line of their own.
const (
	LogDecisionsDeny = "deny" // refusals and outages (the default)
	LogDecisionsAll  = "all"  // allows too
	LogDecisionsNone = "none"
)

// Kubernetes is the Kubernetes-native mode: every replica watches the
// Application resources (and, with Jwkers, NAIS's Jwker resources) and
// serves them merged with the file's applications, reloading on every
// change.
type Kubernetes struct {
	Enabled bool `yaml:"enabled"`
	// Namespaces to watch; every namespace when empty.
	Namespaces []string `yaml:"namespaces"`
	// Kubeconfig, when set, is a kubeconfig file (relative to this file);
	// in a pod vakt uses its service account.
	Kubeconfig string `yaml:"kubeconfig"`
	// Jwkers reads jwkers.nais.io resources too (their CRD must be
	// installed).
	Jwkers bool `yaml:"jwkers"`
	// LeaseNamespace holds the Lease (vakt-status) the replicas elect the
	// one that writes the resources' status and makes their client keys
	// with: the pod's namespace (POD_NAMESPACE, or its service account's)
	// when empty.
	LeaseNamespace string `yaml:"leaseNamespace"`
	// KeyOverlap is how long a client key vakt made stays valid after it
	// was replaced (a rotation, or a Jwker's new secretName): time for the
	// application's pods to restart with the new Secret. 24h when not set.
	KeyOverlap Duration `yaml:"keyOverlap"`
	// ClientEndpoint is where the applications' pods reach vakt's HTTP
	// listener, scheme and authority only (http://vakt.vakt.svc.cluster.local:8080),
	// when that is not the issuer's own: the token endpoint, key set and
	// metadata URLs vakt writes into the Secrets it makes are there, and
	// client assertions may name its token endpoint as their audience.
	ClientEndpoint string `yaml:"clientEndpoint"`
	// Grants give namespaces leave to claim hosts and resource URIs, and to
	// have vakt fetch keys from a jwksUri: a resource claiming any of them
	// without a grant is refused. None by default. Unlike the other
	// fields, a change of grants applies at the next reload.
	Grants []Grant `yaml:"grants"`
	// NamespaceLimits bound what the resources of one namespace may
	// declare, and how fast they may change, so that no team's resources
	// cost the others.
	NamespaceLimits NamespaceLimits `yaml:"namespaceLimits"`
}

// NamespaceLimits bound one namespace's resources. The resources past a
// bound, newest first, are refused (reason LimitExceeded); a change past
// the rate waits (reason Slowed) while the version before it serves.
type NamespaceLimits struct {
	// Resources is how many Applications and Jwkers may serve (100).
	Resources int `yaml:"resources"`
	// Routes and Rules bound the routes and inbound rules of all of them
	// together (1000 each).
	Routes int `yaml:"routes"`
	Rules  int `yaml:"rules"`
	// ChangesPerMinute is how many new versions of its resources (a new
	// resource, or a new generation of one) a namespace may have applied
	// a minute, after a burst of ChangeBurst (60 and 10).
	ChangesPerMinute int `yaml:"changesPerMinute"`
	ChangeBurst      int `yaml:"changeBurst"`
}

// ClientEndpoints are the URLs vakt writes into the Secrets it makes:
// the issuer's endpoints as served at kubernetes.clientEndpoint, or at the
// issuer when that is not set.
func (c *Config) ClientEndpoints() Endpoints {
	return EndpointsAt(c.Issuer, c.Kubernetes.ClientEndpoint)
}

// TokenEndpointAudiences are the URLs, besides the issuer and its own
// token endpoint, that client assertions may name as their audience:
// tokenEndpointAliases, and the token endpoint at
// kubernetes.clientEndpoint, which the Secrets vakt makes name.
func (c *Config) TokenEndpointAudiences() []string {
	out := slices.Clone(c.TokenEndpointAliases)
	if c.Kubernetes.Enabled && c.Kubernetes.ClientEndpoint != "" {
		if t := c.ClientEndpoints().Token; !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}

// Shutdown is how vakt stops on SIGTERM: NOT_SERVING at once (gRPC health
// and /readyz), still answering for DrainDelay so that endpoints are
// removed before connections stop, then in-flight requests get Grace.
type Shutdown struct {
	// DrainDelay defaults to 5s; 0s stops accepting at once.
	DrainDelay Duration `yaml:"drainDelay"`
	// Grace defaults to 10s.
	Grace Duration `yaml:"grace"`
}

// Log is what vakt logs besides its own events.
type Log struct {
	// Decisions is which decisions (of Check, Exchange and Introspect)
	// get a line: deny (the default), all or none.
	Decisions string `yaml:"decisions"`
	// SampleAllows is the share of allows logged when Decisions is all,
	// from above 0 to 1 (the default, every one): a busy mesh can keep
	// every denial and a sample of what was let through.
	SampleAllows *float64 `yaml:"sampleAllows"`
}

// AllowShare is the share of allows the decision log keeps: SampleAllows,
// or 1.
func (l Log) AllowShare() float64 {
	if l.SampleAllows == nil {
		return 1
	}
	return *l.SampleAllows
}

type Limits struct {
	// Check is how many Checks may be in flight at once (default 4096):
	// past it, Check answers RESOURCE_EXHAUSTED. Introspect and Exchange
	// never take from it.
	Check int `yaml:"check"`
	// Other is how many Introspect and Exchange requests, gRPC and HTTP,
	// may be in flight at once (default 1024).
	Other int `yaml:"other"`
	// KeyWait is how long a request waits for an identity provider's keys
	// being fetched before it is answered as an outage (default 1s).
	KeyWait Duration `yaml:"keyWait"`
}

// Validation tunes the validation engine.
type Validation struct {
	// MaxTokenSize caps tokens, in bytes (default 16384).
	MaxTokenSize int `yaml:"maxTokenSize"`
	// CacheSize bounds the verified-token cache in entries, and Check's
	// answers cache beside it (default 100000 each; -1 disables both).
	CacheSize int `yaml:"cacheSize"`
	// CacheMemory bounds the two together in bytes, half each (default
	// 64Mi), each entry counted at what it costs.
	CacheMemory ByteSize `yaml:"cacheMemory"`
}

// LoadFile reads and validates a configuration file.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Load(data, filepath.Dir(path))
}

// Load decodes and validates a configuration. Relative file names in it are
// resolved against dir. Unknown fields, duplicate keys, bad durations or
// URLs, duplicate ids and names, and incomplete rules are rejected; the error
// names every offending field with its line, in the order of the file.
//
// The phases: a strict decode, then defaults, then reading the key files the
// configuration names, then validation, which changes nothing; last, rules
// get their namespace and cluster.
func Load(data []byte, dir string) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalWithOptions(data, &c, yaml.Strict()); err != nil {
		return nil, decodeError(err, data)
	}
	c.applyDefaults(dir)
	c.dir = dir
	c.resolveSecretPaths(dir)
	sum := sha256.Sum256(data)
	c.Hash = hex.EncodeToString(sum[:8])
	v := newValidator(data)
	v.config = &c
	c.loadKeys(v, dir)
	c.loadSecrets(v)
	c.validate(v)
	if err := v.result(); err != nil {
		return nil, err
	}
	c.resolveRules()
	c.Warnings = v.warnings
	return &c, nil
}
