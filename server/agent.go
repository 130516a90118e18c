package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
)

// NewAgentRuntime builds the runtime of `vakt agent`: token exchange through
// an upstream token endpoint with a cache, and introspection of tokens
// issued to this application ("tokenx", alias "vakt") and of ID-porten's.
func NewAgentRuntime(ctx context.Context, env *exchange.AgentEnv, log *slog.Logger) (*Runtime, error) {
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
	up := &exchange.Upstream{
		Endpoint:  env.TokenEndpoint,
		Assertion: &exchange.AssertionBuilder{ClientID: env.ClientID, TokenEndpoint: env.TokenEndpoint, Key: env.Key, Now: time.Now},
		Client:    exchange.NewHTTPClient(),
		Retries:   2,
		Backoff:   100 * time.Millisecond,
		Timeout:   10 * time.Second,
		Logger:    log,
	}
	return &Runtime{Validator: v, Agent: exchange.NewAgent(exchange.AgentConfig{Upstream: up})}, nil
}

// agentExchangeHandler is POST /api/v1/token/exchange, as NAIS applications
// call it: identity_provider (tokenx), target, user_token, skip_cache, in
// JSON or a form; the answer is access_token, token_type and expires_in.
type agentExchangeHandler struct {
	cur     *Current
	metrics *Metrics
}

func (h *agentExchangeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fields, rerr := readFields(w, r, "identity_provider", "target", "user_token", "skip_cache")
	if rerr != nil {
		writeJSON(w, rerr.status, map[string]string{"error": rerr.code, "error_description": rerr.description})
		return
	}
	if p := fields["identity_provider"]; p != config.ProviderTokenX && p != config.ProviderVakt {
		writeOAuthError(w, &exchange.Error{Code: exchange.CodeInvalidRequest, Description: `identity_provider must be "tokenx"`})
		return
	}
	skip := fields["skip_cache"] == "true"
	res, err := h.metrics.agentExchange(r.Context(), h.cur, fields["user_token"], fields["target"], skip)
	if err != nil {
		writeOAuthError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": res.AccessToken,
		"token_type":   res.TokenType,
		"expires_in":   res.ExpiresIn,
	})
}
