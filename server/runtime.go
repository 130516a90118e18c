// Package server holds vakt's thin adapters: the gRPC services, the HTTP
// endpoints, health and wiring. It decides nothing itself: requests become
// plain Go values for the engine, and the engine's answers (an
// authz.Reason when refused) become responses through one table
// (reasons.go).
//
// Files are organised by feature, each with its gRPC and HTTP adapters:
// check.go, introspect.go, exchange.go (the authority's), agent.go (the
// agent mode), metadata.go; runtime.go holds what a request reads and its
// atomic swap, transport.go the listeners and the request readers.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// Runtime is everything a request to the authority reads, built from one
// configuration snapshot. It is never modified; a reload builds a new one.
type Runtime struct {
	Config    *config.Config
	Validator *authz.Validator
	Policy    *authz.Policy
	Signer    *exchange.Signer
	Authority *exchange.Authority
	Checker   *authz.Checker
	// answers keeps Check's answers per token and application, beside
	// the verified-token cache; nil when it is off.
	answers *answerCache
	// LoadedAt is when the runtime was built.
	LoadedAt time.Time

	remoteKeys []namedKeys // the identity providers' key sets, for metrics
	clientKeys []namedKeys // the applications' key sets from a jwksUri, for metrics
	// clientKeysByID are the same by application id (ClientKeyStats).
	clientKeysByID map[string]*authz.RemoteKeys
	// notReady is why the resources merged into the runtime keep it out of
	// rotation (not yet read); nil otherwise.
	notReady error
}

type namedKeys struct {
	provider string
	keys     *authz.RemoteKeys
}

// Ready reports whether the runtime can decide every request it may be
// asked: each identity provider's keys have arrived (fetched, or carried
// over from the runtime before a reload). The error names a provider
// still without keys. A provider that stays down keeps a new replica out
// of rotation, while the replicas that have its keys serve on.
func (rt *Runtime) Ready() error {
	if rt.notReady != nil {
		return rt.notReady
	}
	return keysReady(rt.remoteKeys)
}

func keysReady(keys []namedKeys) error {
	for _, nk := range keys {
		if nk.keys.Stats().LastSuccess.IsZero() {
			return fmt.Errorf("identity provider %s has no keys yet", nk.provider)
		}
	}
	return nil
}

// ClientKeyStats are the fetches of the key set of application id from
// its jwksUri; false when its keys come from nowhere else.
func (rt *Runtime) ClientKeyStats(id string) (authz.KeyStats, bool) {
	keys, ok := rt.clientKeysByID[id]
	if !ok {
		return authz.KeyStats{}, false
	}
	return keys.Stats(), true
}

// Current holds the runtime every request reads; a reload swaps it whole.
type Current struct{ p atomic.Pointer[Runtime] }

// Load returns the runtime in force.
func (c *Current) Load() *Runtime { return c.p.Load() }

// Store puts rt in force for every request that starts after it.
func (c *Current) Store(rt *Runtime) { c.p.Store(rt) }

// AuthorityServices are what `vakt serve` serves, each request on the
// runtime in force: gRPC Check, Introspect and Exchange; HTTP
// /api/v1/introspect, /token, /jwks, the metadata documents and /healthz;
// and the admin endpoints (AdminHandler).
func AuthorityServices(cur *Current, m *Metrics, log *slog.Logger) *Services {
	if log == nil {
		log = slog.Default()
	}
	m.watchConfig(cur)
	obs := newObserver(log, func() config.Log { return cur.Load().Config.Log })
	in := &introspector{validator: func() *authz.Validator { return cur.Load().Validator }, metrics: m, log: log, obs: obs}
	check := newAuthorizationService(cur, log, m, obs)
	s := newServices(log, m, obs, func(r grpc.ServiceRegistrar) {
		vaktv1.RegisterIntrospectionServiceServer(r, &introspectionService{in: in})
		vaktv1.RegisterTokenExchangeServiceServer(r, &exchangeService{cur: cur, x: exchangeRecorder{m, obs}})
		r.RegisterService(&authorizationDesc, check)
	})
	s.authz = &httpAuthz{check: check}
	s.readiness = func() error {
		rt := cur.Load()
		if rt == nil {
			return errors.New("no configuration loaded yet")
		}
		return rt.Ready()
	}
	s.mux.Handle("/api/v1/introspect", onlyMethod(http.MethodPost, s.limitedIntrospect(&introspectHandler{in: in})))
	s.mux.Handle("/", &issuerRoutes{
		cur:      cur,
		token:    s.limited(&tokenHandler{cur: cur, x: exchangeRecorder{m, obs}}),
		jwks:     jwksHandler(cur),
		metadata: metadataHandler(cur),
	})
	return s
}

// Options are what a Runtime needs besides the configuration.
type Options struct {
	Logger *slog.Logger
	// Signer signs the tokens vakt issues; its keys verify them ("tokenx").
	Signer *exchange.Signer
	// Replay remembers client assertion ids. It outlives configurations.
	Replay exchange.ReplayStore
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// KeySets, when set, keeps remote key sets across runtimes (reloads);
	// without it each runtime fetches its own.
	KeySets *KeySets
}

// NewRuntime builds the engine for cfg. Remote key sets start fetching in
// the background and stop when ctx ends; an identity provider that is down
// does not stop vakt from starting (its tokens are rejected with a clear
// error until its keys arrive).
func NewRuntime(ctx context.Context, cfg *config.Config, opts Options) (*Runtime, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	keySets := opts.KeySets
	if keySets == nil {
		keySets = NewKeySets(ctx, log, opts.Now)
	}
	var providers []*authz.Provider
	var remote, clientKeys []namedKeys
	clientKeysByID := map[string]*authz.RemoteKeys{}
	for _, ip := range cfg.IdentityProviders {
		keys, err := keySets.take(ctx, authz.RemoteKeysConfig{
			Name:         ip.Name,
			WellKnownURL: ip.WellKnownURL,
			JWKSURI:      ip.JWKSURI,
			Issuer:       ip.Issuer,
			Wait:         cfg.Limits.KeyWait.Std(),
		})
		if err != nil {
			return nil, fmt.Errorf("identity provider %s: %w", ip.Name, err)
		}
		remote = append(remote, namedKeys{ip.Name, keys})
		// The same provider as before when nothing of it changed: its
		// tokens stay in the cache.
		p, err := keySets.provider(authz.ProviderConfig{
			Name:       ip.Name,
			Issuer:     ip.Issuer,
			Audiences:  ip.Audience,
			Algorithms: ip.Algorithms,
			Type:       ip.Typ,
			Leeway:     ip.Leeway.Std(),
			Keys:       keys,
		})
		if err != nil {
			return nil, err
		}
		providers = append(providers, p)
	}

	if opts.Signer == nil || opts.Replay == nil {
		return nil, fmt.Errorf("a runtime needs a signer and a replay store")
	}
	ownConfig, err := ownProvider(cfg, opts.Signer.Keys())
	if err != nil {
		return nil, err
	}
	own, err := keySets.provider(ownConfig)
	if err != nil {
		return nil, err
	}
	providers = append(providers, own)

	apps := make([]authz.ApplicationPolicy, 0, len(cfg.Applications))
	clients := make(map[string]authz.KeySource)
	for i := range cfg.Applications {
		a := &cfg.Applications[i]
		ap := authz.ApplicationPolicy{ID: a.ID(), Hosts: a.Hosts, Resources: a.Resources, StripAuthorization: a.StripAuthorization}
		ap.NoDynamicMetadata = a.DynamicMetadata != nil && !*a.DynamicMetadata
		if a.PathParameters == config.PathParametersStrip {
			ap.PathParameters = authz.StripPathParameters
		}
		for _, r := range a.AccessPolicy.Inbound.Rules {
			ap.Inbound = append(ap.Inbound, r.ID())
		}
		for _, r := range a.Routes {
			ap.Routes = append(ap.Routes, authz.Route{Methods: r.Methods, Path: r.Path, PathPrefix: r.PathPrefix, Scopes: r.Scopes, Public: r.Public})
		}
		for _, au := range a.Authentication {
			aud := au.Audience
			if aud == config.AnyAudience {
				aud = "" // any: config refused an empty one, and warned of this
			}
			ap.Authentication = append(ap.Authentication, authz.Authentication{Provider: au.IdentityProvider, Audience: aud})
		}
		for _, fc := range a.ForwardClaims {
			ap.ForwardClaims = append(ap.ForwardClaims, authz.ClaimHeader{Claim: fc.Claim, Header: fc.Header})
		}
		apps = append(apps, ap)
		switch {
		case a.Keys != nil && a.Keys.Len() > 0 && len(a.KeysUntil) > 0:
			clients[a.ID()] = authz.ExpiringKeys{Set: a.Keys, Until: a.KeysUntil, Now: opts.Now}
		case a.Keys != nil && a.Keys.Len() > 0:
			clients[a.ID()] = authz.StaticKeys{Set: a.Keys}
		case a.JWKSURI != "":
			// An application's keys come from its jwksUri and nowhere else:
			// a team names it, within its grants.
			keys, err := keySets.take(ctx, authz.RemoteKeysConfig{Name: a.ID(), JWKSURI: a.JWKSURI, Issuer: a.ID(), Wait: cfg.Limits.KeyWait.Std(), NoRedirects: true})
			if err != nil {
				return nil, fmt.Errorf("application %s: %w", a.ID(), err)
			}
			clients[a.ID()] = keys
			clientKeys = append(clientKeys, namedKeys{a.ID(), keys})
			clientKeysByID[a.ID()] = keys
		}
	}
	// Applications that did not change are the ones before, with the
	// answers Check derived for them.
	policy, err := authz.NewPolicyFrom(keySets.lastPolicy(), apps)
	if err != nil {
		return nil, err
	}
	tokens, answers := keySets.caches(cfg.Validation.CacheSize, int64(cfg.Validation.CacheMemory))
	v, err := authz.NewValidator(authz.ValidatorConfig{
		Providers:    providers,
		Aliases:      map[string]string{config.ProviderVakt: config.ProviderTokenX},
		MaxTokenSize: cfg.Validation.MaxTokenSize,
		Cache:        tokens,
		CacheSize:    cfg.Validation.CacheSize, // negative, when tokens is nil: off
		// vakt's own tokens name a registered application: this policy's.
		Registered: policy.Registered,
		Now:        opts.Now,
	})
	if err != nil {
		return nil, err
	}
	authority, err := exchange.NewAuthority(exchange.AuthorityConfig{
		Issuer:               cfg.Issuer,
		TokenEndpointAliases: cfg.TokenEndpointAudiences(),
		Subjects:             v,
		OwnProvider:          config.ProviderTokenX,
		Clients:              clients,
		Policy:               policy,
		Signer:               opts.Signer,
		Replay:               opts.Replay,
		TokenLifetime:        cfg.Signing.TokenLifetime.Std(),
		Now:                  opts.Now,
		Logger:               log,
	})
	if err != nil {
		return nil, err
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	// Built whole: the next runtime is built from this one's cache,
	// providers and policy, and providers it no longer has are retired.
	keySets.settle(tokens, answers, providers, policy)
	return &Runtime{answers: answers,
		LoadedAt:   now(),
		remoteKeys: remote, clientKeys: clientKeys, clientKeysByID: clientKeysByID,
		Config: cfg, Validator: v, Policy: policy, Signer: opts.Signer, Authority: authority,
		Checker: &authz.Checker{Validator: v, Own: config.ProviderTokenX},
	}, nil
}

// ownProvider configures the provider of the tokens vakt issued: vakt's
// issuer, its signing keys, and an audience that must be a registered
// application. The applications are not the provider's but each
// validator's (ApplicationAudience, ValidatorConfig.Registered), so that
// the provider, and the tokens it verified, outlive policy changes; its
// keys are a static set that compares by its keys, so that a reload
// reading the same keys file keeps it too.
func ownProvider(cfg *config.Config, signing []*exchange.SigningKey) (authz.ProviderConfig, error) {
	if len(signing) == 0 {
		return authz.ProviderConfig{}, fmt.Errorf("no signing keys")
	}
	keys := make([]*authz.Key, 0, len(signing))
	algs := make([]string, 0, len(signing))
	for _, sk := range signing {
		k, err := sk.VerificationKey()
		if err != nil {
			return authz.ProviderConfig{}, fmt.Errorf("signing key %s: %w", sk.ID, err)
		}
		keys = append(keys, k)
		algs = append(algs, sk.Alg)
	}
	set, err := authz.NewKeySet(keys...)
	if err != nil {
		return authz.ProviderConfig{}, err
	}
	return authz.ProviderConfig{
		Name:   config.ProviderTokenX,
		Issuer: cfg.Issuer,
		// aud must be a registered application, checked after the
		// signature, so that a forged token says nothing of which exist.
		ApplicationAudience: true,
		Algorithms:          algs,
		Keys:                authz.StaticKeys{Set: set},
		Type:                exchange.IssuedTokenType, // RFC 9068 §4
		Own:                 true,
	}, nil
}
