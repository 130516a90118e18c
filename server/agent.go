package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"google.golang.org/grpc"

	"github.com/vakt-dev/vakt/agent"
	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// AgentRuntime is what `vakt agent` serves from: the validator of tokens
// issued to its application ("tokenx", alias "vakt") and of ID-porten's, and
// the agent that exchanges through the upstream token endpoint. It is built
// once from the environment and never reloaded.
type AgentRuntime struct {
	Validator *authz.Validator
	Agent     *agent.Agent
}

// NewAgentRuntime builds the agent's runtime from its environment. Remote
// key sets fetch in the background until ctx ends.
func NewAgentRuntime(ctx context.Context, env *agent.Env, log *slog.Logger) (*AgentRuntime, error) {
	remote := func(name, issuer, jwksURI, wellKnown string) (*authz.RemoteKeys, error) {
		k, err := authz.NewRemoteKeys(authz.RemoteKeysConfig{Name: name, Issuer: issuer, JWKSURI: jwksURI, WellKnownURL: wellKnown, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		go k.Run(ctx)
		return k, nil
	}
	tkeys, err := remote(config.ProviderTokenX, env.Issuer, env.JWKSURI, env.WellKnownURL)
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
		ikeys, err := remote("idporten", ip.Issuer, ip.JWKSURI, ip.WellKnownURL)
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
	up := &agent.Upstream{
		Endpoint:  env.TokenEndpoint,
		Assertion: &agent.AssertionBuilder{ClientID: env.ClientID, TokenEndpoint: env.TokenEndpoint, Key: env.Key, Now: time.Now},
		Client:    agent.NewHTTPClient(),
		Retries:   2,
		Backoff:   100 * time.Millisecond,
		Timeout:   10 * time.Second,
		Logger:    log,
	}
	return &AgentRuntime{Validator: v, Agent: agent.New(agent.Config{Upstream: up})}, nil
}

// AgentServices are what `vakt agent` serves: gRPC Introspect and Exchange
// (no Check: that is the authority's), and what NAIS applications call over
// HTTP: POST /api/v1/introspect, POST /api/v1/token/exchange and /healthz;
// and the admin endpoints (AdminHandler).
func AgentServices(rt *AgentRuntime, m *Metrics, log *slog.Logger) *Services {
	if log == nil {
		log = slog.Default()
	}
	in := &introspector{validator: func() *authz.Validator { return rt.Validator }, metrics: m, log: log}
	s := newServices(log, m, func(r grpc.ServiceRegistrar) {
		vaktv1.RegisterIntrospectionServiceServer(r, &introspectionService{in: in})
		vaktv1.RegisterTokenExchangeServiceServer(r, &agentExchangeService{agent: rt.Agent, metrics: m})
	})
	s.mux.Handle("POST /api/v1/introspect", s.limitedIntrospect(&introspectHandler{in: in}))
	s.mux.Handle("POST /api/v1/token/exchange", s.limited(&agentExchangeHandler{agent: rt.Agent, metrics: m}))
	return s
}

// agentExchangeService is vakt.v1.TokenExchangeService on the agent: the
// subject token and audience (and skip_cache) are what it reads; it makes
// the client assertion itself.
type agentExchangeService struct {
	vaktv1.UnimplementedTokenExchangeServiceServer
	agent   *agent.Agent
	metrics *Metrics
}

var _ vaktv1.TokenExchangeServiceServer = (*agentExchangeService)(nil)

func (s *agentExchangeService) Exchange(ctx context.Context, req *vaktv1.ExchangeRequest) (*vaktv1.ExchangeResponse, error) {
	start := time.Now()
	res, err := s.agent.Exchange(ctx, req.GetSubjectToken(), req.GetAudience(), req.GetSkipCache())
	if e := s.metrics.observeExchange(start, err); e != nil {
		return nil, oauthGRPCError(e)
	}
	return exchangeResponse(res), nil
}

// agentExchangeHandler is POST /api/v1/token/exchange, as NAIS applications
// call it: identity_provider (tokenx), target, user_token, skip_cache, in
// JSON or a form; the answer is access_token, token_type and expires_in.
type agentExchangeHandler struct {
	agent   *agent.Agent
	metrics *Metrics
}

var _ http.Handler = (*agentExchangeHandler)(nil)

func (h *agentExchangeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	fields, rerr := readFields(w, r, "identity_provider", "target", "user_token", "skip_cache")
	if rerr != nil {
		writeRequestError(w, rerr)
		return
	}
	if p := fields["identity_provider"]; p != config.ProviderTokenX && p != config.ProviderVakt {
		writeRequestError(w, badRequest(`identity_provider must be "tokenx"`))
		return
	}
	skip := fields["skip_cache"] == "true"
	res, err := h.agent.Exchange(r.Context(), fields["user_token"], fields["target"], skip)
	if e := h.metrics.observeExchange(start, err); e != nil {
		writeOAuthError(w, e, 0)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": res.AccessToken,
		"token_type":   res.TokenType,
		"expires_in":   res.ExpiresIn,
	})
}
