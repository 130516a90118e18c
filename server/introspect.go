package server

import (
	"context"
	"errors"
	"strconv"

	"github.com/vakt-dev/vakt/authz"
)

// Request errors of Introspect: the request itself is unusable, which is not
// an answer about a token.
var (
	errNoToken    = errors.New("token is required")
	errNoProvider = errors.New("identity_provider is required")
)

// introspection is the answer about one token, shared by gRPC and HTTP.
type introspection struct {
	Active bool
	Error  string         // why not active
	Claims map[string]any // when active; read-only (shared with the cache)
}

// introspect validates token for provider. It returns an error only for an
// unusable request; every verdict on the token itself is an introspection.
func (rt *Runtime) introspect(ctx context.Context, provider, token string) (introspection, error) {
	switch {
	case provider == "":
		return introspection{}, errNoProvider
	case token == "":
		return introspection{}, errNoToken
	}
	c, err := rt.Validator.Validate(ctx, provider, token)
	if err != nil {
		return introspection{Error: tokenErrorMessage(err, provider)}, nil
	}
	return introspection{Active: true, Claims: c.Raw}, nil
}

// tokenErrorMessage is the human-readable reason a token was rejected. The
// engine's messages are written for people already; an unknown provider is
// named so the caller sees their typo.
func tokenErrorMessage(err error, provider string) string {
	if errors.Is(err, authz.ErrUnknownProvider) {
		if len(provider) > 64 {
			provider = provider[:64] + "…"
		}
		return "identity provider " + strconv.Quote(provider) + " is not configured"
	}
	return err.Error()
}
