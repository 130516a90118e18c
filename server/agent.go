package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/vakt-dev/vakt/agent"
	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// AgentRuntime is what `vakt agent` serves from: the validator of tokens
// issued to its application ("tokenx", alias "vakt") and of ID-porten's, and
// the agent that exchanges through the upstream token endpoint. It is built
// once from the environment and never reloaded.
type AgentRuntime struct {
	Validator *authz.Validator
	Agent     *agent.Agent
	// ClientID is the application's: the client of every exchange.
	ClientID string
	// Log is what the agent's decision log holds (log.decisions; deny by
	// default).
	Log config.Log

	keys []namedKeys // the identity providers' key sets, for readiness
	// ctx ends the key sets' background fetches, which fetching joins.
	ctx      context.Context
	fetching sync.WaitGroup
}

// NewAgentRuntime builds the agent's runtime from its environment. Remote
// key sets fetch in the background until ctx ends; Wait joins them. With
// tracing (nil for none), key set fetches and upstream exchanges are spans,
// and an upstream exchange carries its trace to the authority.
func NewAgentRuntime(ctx context.Context, env *agent.Env, log *slog.Logger, tracing *Tracing) (*AgentRuntime, error) {
	// NAIS gives both the well-known URL and the jwks_uri its document
	// names (prefix + WELL_KNOWN_URL and JWKS_URI). With both, discovery is
	// used and must name that jwks_uri; the check is at the first discovery
	// that succeeds, so that the agent starts while a provider is down.
	var keys []namedKeys
	remote := func(name, prefix, issuer, jwksURI, wellKnown string) (*authz.RemoteKeys, error) {
		client := tracing.HTTPClient(&http.Client{Timeout: authz.FetchTimeout}, "jwks fetch", attribute.String("vakt.provider", name))
		cfg := authz.RemoteKeysConfig{Name: name, Issuer: issuer, JWKSURI: jwksURI, WellKnownURL: wellKnown, Logger: log, Client: client}
		if wellKnown != "" {
			cfg.JWKSURI, cfg.ExpectJWKSURI = "", jwksURI
			cfg.ExpectSource = prefix + "WELL_KNOWN_URL and " + prefix + "JWKS_URI"
		}
		k, err := authz.NewRemoteKeys(cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		keys = append(keys, namedKeys{name, k})
		return k, nil
	}
	tkeys, err := remote(config.ProviderTokenX, "TOKEN_X_", env.Issuer, env.JWKSURI, env.WellKnownURL)
	if err != nil {
		return nil, err
	}
	tokenx, err := authz.NewProvider(authz.ProviderConfig{
		Name: config.ProviderTokenX, Issuer: env.Issuer, Audiences: []string{env.ClientID}, RequireAudience: true, Keys: tkeys,
	})
	if err != nil {
		return nil, err
	}
	providers := []*authz.Provider{tokenx}
	if ip := env.IDPorten; ip != nil {
		ikeys, err := remote("idporten", "IDPORTEN_", ip.Issuer, ip.JWKSURI, ip.WellKnownURL)
		if err != nil {
			return nil, err
		}
		pc := authz.ProviderConfig{Name: "idporten", Issuer: ip.Issuer, Keys: ikeys}
		if ip.Audience != "" {
			pc.Audiences = []string{ip.Audience}
		}
		p, err := authz.NewProvider(pc)
		if err != nil {
			return nil, err
		}
		providers = append(providers, p)
	}
	v, err := authz.NewValidator(authz.ValidatorConfig{Providers: providers, Aliases: map[string]string{config.ProviderVakt: config.ProviderTokenX}})
	if err != nil {
		return nil, err
	}
	var roots *x509.CertPool
	if env.UpstreamCAFile != "" {
		pem, err := os.ReadFile(env.UpstreamCAFile)
		if err != nil {
			return nil, fmt.Errorf("--upstream-ca: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--upstream-ca: %s holds no PEM certificate", env.UpstreamCAFile)
		}
	}
	up := &agent.Upstream{
		Endpoint:  env.TokenEndpoint,
		Assertion: &agent.AssertionBuilder{ClientID: env.ClientID, TokenEndpoint: env.TokenEndpoint, Key: env.Key, Now: time.Now},
		Client:    tracing.PropagatingHTTPClient(agent.NewHTTPClientWithCAs(roots), "token exchange upstream"),
		Retries:   2,
		Backoff:   100 * time.Millisecond,
		Timeout:   10 * time.Second,
		Logger:    log,
	}
	rt := &AgentRuntime{Validator: v, Agent: agent.New(agent.Config{Upstream: up}), ClientID: env.ClientID, Log: config.Log{Decisions: config.LogDecisionsDeny}, keys: keys, ctx: ctx}
	// Built whole: only now do the key sets start fetching, so that a
	// runtime refused leaves nothing running.
	for _, k := range keys {
		rt.fetching.Go(func() { k.keys.Run(ctx) })
	}
	return rt, nil
}

// Wait returns once the context NewAgentRuntime was given has ended and the
// key sets have stopped fetching.
func (rt *AgentRuntime) Wait() {
	<-rt.ctx.Done()
	rt.fetching.Wait()
}

// Ready reports whether each identity provider's keys have arrived.
func (rt *AgentRuntime) Ready() error { return keysReady(rt.keys) }

// AgentServices are what `vakt agent` serves: gRPC Introspect and Exchange
// (no Check: that is the authority's), and what NAIS applications call over
// HTTP: POST /api/v1/introspect, POST /api/v1/token/exchange and /healthz;
// and the admin endpoints (AdminHandler).
func AgentServices(rt *AgentRuntime, m *Metrics, log *slog.Logger) *Services {
	if log == nil {
		log = slog.Default()
	}
	obs := newObserver(log, func() config.Log { return rt.Log })
	in := &introspector{validator: func() *authz.Validator { return rt.Validator }, metrics: m, log: log, obs: obs}
	x := agentExchanger{rt: rt, x: exchangeRecorder{m, obs}}
	s := newServices(log, m, obs, func(r grpc.ServiceRegistrar) {
		vaktv1.RegisterIntrospectionServiceServer(r, &introspectionService{in: in})
		vaktv1.RegisterTokenExchangeServiceServer(r, &agentExchangeService{x: x})
	})
	s.mux.Handle("POST /api/v1/introspect", s.limitedIntrospect(&introspectHandler{in: in}))
	s.mux.Handle("POST /api/v1/token/exchange", s.limited(&agentExchangeHandler{x: x}))
	s.readiness = rt.Ready
	return s
}

// agentExchanger exchanges through the upstream, and records each
// exchange as the authority does: its client is the agent's application,
// its target the audience asked for.
type agentExchanger struct {
	rt *AgentRuntime
	x  exchangeRecorder
}

func (a agentExchanger) exchange(ctx context.Context, span trace.Span, start time.Time, subjectToken, audience string, skipCache bool) (*exchange.Response, *exchange.Error) {
	res, err := a.rt.Agent.Exchange(ctx, subjectToken, audience, skipCache)
	o := exchange.Outcome{Client: a.rt.ClientID, Target: truncate(audience, 200)}
	if err != nil {
		o.Err = exchange.AsError(err)
	}
	if e := a.x.done(ctx, span, start, &o); e != nil {
		return nil, e
	}
	return res, nil
}

// agentExchangeService is vakt.v1.TokenExchangeService on the agent: the
// subject token and audience (and skip_cache) are what it reads; it makes
// the client assertion itself.
type agentExchangeService struct {
	vaktv1.UnimplementedTokenExchangeServiceServer
	x agentExchanger
}

var _ vaktv1.TokenExchangeServiceServer = (*agentExchangeService)(nil)

func (s *agentExchangeService) Exchange(ctx context.Context, req *vaktv1.ExchangeRequest) (*vaktv1.ExchangeResponse, error) {
	start := time.Now()
	ctx, span := s.x.x.obs.startGRPC(ctx, vaktv1.TokenExchangeService_Exchange_FullMethodName)
	defer endOnPanic(span)
	res, e := s.x.exchange(ctx, span, start, req.GetSubjectToken(), req.GetAudience(), req.GetSkipCache())
	if e != nil {
		return nil, oauthGRPCError(e)
	}
	return exchangeResponse(res), nil
}

// agentExchangeHandler is POST /api/v1/token/exchange, as NAIS applications
// call it: identity_provider (tokenx), target, user_token, skip_cache, in
// JSON or a form; the answer is access_token, token_type and expires_in.
type agentExchangeHandler struct{ x agentExchanger }

var _ http.Handler = (*agentExchangeHandler)(nil)

func (h *agentExchangeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx, span := h.x.x.obs.startHTTP(r)
	defer endOnPanic(span)
	fields, rerr := readFields(w, r, "identity_provider", "target", "user_token", "skip_cache")
	if rerr == nil {
		if p := fields["identity_provider"]; p != config.ProviderTokenX && p != config.ProviderVakt {
			rerr = badRequest(`identity_provider must be "tokenx"`)
		}
	}
	if rerr != nil {
		h.x.x.done(ctx, span, start, &exchange.Outcome{Client: h.x.rt.ClientID, Err: exchange.Refuse(authz.ReasonRequestInvalid, rerr.description, nil)})
		writeRequestError(w, rerr)
		return
	}
	skip := fields["skip_cache"] == "true"
	res, e := h.x.exchange(ctx, span, start, fields["user_token"], fields["target"], skip)
	if e != nil {
		writeOAuthError(w, e, 0)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": res.AccessToken,
		"token_type":   res.TokenType,
		"expires_in":   res.ExpiresIn,
	})
}
