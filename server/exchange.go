package server

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// maxTokenRequestBody caps the body of POST /token.
const maxTokenRequestBody = 64 << 10

type exchangeService struct {
	vaktv1.UnimplementedTokenExchangeServiceServer
	cur     *Current
	metrics *Metrics
}

func (s *exchangeService) Exchange(ctx context.Context, req *vaktv1.ExchangeRequest) (*vaktv1.ExchangeResponse, error) {
	if s.cur.Load().Agent != nil {
		res, err := s.metrics.agentExchange(ctx, s.cur, req.GetSubjectToken(), req.GetAudience(), req.GetSkipCache())
		if err != nil {
			return nil, oauthGRPCError(err)
		}
		return &vaktv1.ExchangeResponse{AccessToken: res.AccessToken, IssuedTokenType: res.IssuedTokenType, TokenType: res.TokenType, ExpiresIn: res.ExpiresIn}, nil
	}
	res, err := s.metrics.exchange(ctx, s.cur, exchange.Request{
		GrantType:           req.GetGrantType(),
		ClientAssertionType: req.GetClientAssertionType(),
		ClientAssertion:     req.GetClientAssertion(),
		SubjectTokenType:    req.GetSubjectTokenType(),
		SubjectToken:        req.GetSubjectToken(),
		Audience:            req.GetAudience(),
	})
	if err != nil {
		return nil, oauthGRPCError(err)
	}
	return &vaktv1.ExchangeResponse{
		AccessToken:     res.AccessToken,
		IssuedTokenType: res.IssuedTokenType,
		TokenType:       res.TokenType,
		ExpiresIn:       res.ExpiresIn,
	}, nil
}

// tokenHandler is POST /token: RFC 8693 §2.1, form-encoded.
type tokenHandler struct {
	cur     *Current
	metrics *Metrics
}

func (h *tokenHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	form, rerr := readTokenForm(w, r)
	if rerr != nil {
		writeOAuthError(w, rerr)
		return
	}
	res, err := h.metrics.exchange(r.Context(), h.cur, exchange.Request{
		GrantType:           form.Get("grant_type"),
		ClientAssertionType: form.Get("client_assertion_type"),
		ClientAssertion:     form.Get("client_assertion"),
		SubjectTokenType:    form.Get("subject_token_type"),
		SubjectToken:        form.Get("subject_token"),
		Audience:            form.Get("audience"),
	})
	if err != nil {
		writeOAuthError(w, err)
		return
	}
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":      res.AccessToken,
		"issued_token_type": res.IssuedTokenType,
		"token_type":        res.TokenType,
		"expires_in":        res.ExpiresIn,
	})
}

// readTokenForm reads a form-encoded token request. A parameter may appear
// once (RFC 6749 §3.2); the body is capped at 64 KiB.
func readTokenForm(w http.ResponseWriter, r *http.Request) (url.Values, *exchange.Error) {
	bad := func(d string) (url.Values, *exchange.Error) {
		return nil, &exchange.Error{Code: exchange.CodeInvalidRequest, Description: d}
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return bad("Content-Type must be application/x-www-form-urlencoded")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTokenRequestBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return bad("request body is larger than 64 KiB")
		}
		return bad("request body could not be read")
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return bad("request body is not valid form encoding")
	}
	for name, vs := range form {
		if len(vs) > 1 {
			return bad(name + " is given more than once")
		}
	}
	if r.URL.RawQuery != "" {
		return bad("parameters belong in the body, not the URL")
	}
	return form, nil
}

// metadata is RFC 8414 authorization server metadata, served as both
// /.well-known/oauth-authorization-server and /.well-known/openid-configuration.
func metadata(rt *Runtime) map[string]any {
	iss := strings.TrimRight(rt.Config.Issuer, "/")
	return map[string]any{
		"issuer":                                rt.Config.Issuer,
		"token_endpoint":                        rt.Authority.TokenEndpoint(),
		"jwks_uri":                              iss + "/jwks",
		"grant_types_supported":                 []string{exchange.GrantTypeTokenExchange},
		"token_endpoint_auth_methods_supported": []string{"private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": exchange.AssertionAlgorithms,
		"response_types_supported":                         []string{},
		"subject_types_supported":                          []string{"public"},
		"id_token_signing_alg_values_supported":            signingAlgorithms(rt.Signer),
	}
}

func signingAlgorithms(s *exchange.Signer) []string {
	var algs []string
	for _, k := range s.Keys() {
		if !slices.Contains(algs, k.Alg) {
			algs = append(algs, k.Alg)
		}
	}
	return algs
}
