package server

import (
	"context"
	"net/http"
	"net/url"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// exchangeService is vakt.v1.TokenExchangeService on the authority: RFC
// 8693 token exchange by the runtime in force.
type exchangeService struct {
	vaktv1.UnimplementedTokenExchangeServiceServer
	cur     *Current
	metrics *Metrics
}

var _ vaktv1.TokenExchangeServiceServer = (*exchangeService)(nil)

func (s *exchangeService) Exchange(ctx context.Context, req *vaktv1.ExchangeRequest) (*vaktv1.ExchangeResponse, error) {
	res, err := s.cur.Load().Authority.Exchange(ctx, exchange.Request{
		GrantType:           req.GetGrantType(),
		ClientAssertionType: req.GetClientAssertionType(),
		ClientAssertion:     req.GetClientAssertion(),
		SubjectTokenType:    req.GetSubjectTokenType(),
		SubjectToken:        req.GetSubjectToken(),
		Audience:            req.GetAudience(),
	})
	if e := s.metrics.observeExchange(err); e != nil {
		return nil, oauthGRPCError(e)
	}
	return exchangeResponse(res), nil
}

func exchangeResponse(res *exchange.Response) *vaktv1.ExchangeResponse {
	return &vaktv1.ExchangeResponse{
		AccessToken:     res.AccessToken,
		IssuedTokenType: res.IssuedTokenType,
		TokenType:       res.TokenType,
		ExpiresIn:       res.ExpiresIn,
	}
}

// tokenHandler is POST /token: RFC 8693 §2.1, form-encoded.
type tokenHandler struct {
	cur     *Current
	metrics *Metrics
}

var _ http.Handler = (*tokenHandler)(nil)

func (h *tokenHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	form, rerr := readTokenForm(w, r)
	if rerr != nil {
		// RFC 6749 §5.2: a token endpoint answers 400 with an error code.
		writeOAuthError(w, h.metrics.observeExchange(exchange.Refuse(authz.ReasonRequestInvalid, rerr.description, nil)), 0)
		return
	}
	res, err := h.cur.Load().Authority.Exchange(r.Context(), exchange.Request{
		GrantType:           form.Get("grant_type"),
		ClientAssertionType: form.Get("client_assertion_type"),
		ClientAssertion:     form.Get("client_assertion"),
		SubjectTokenType:    form.Get("subject_token_type"),
		SubjectToken:        form.Get("subject_token"),
		Audience:            form.Get("audience"),
	})
	if e := h.metrics.observeExchange(err); e != nil {
		writeOAuthError(w, e, 0)
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
func readTokenForm(w http.ResponseWriter, r *http.Request) (url.Values, *requestError) {
	_, body, rerr := readBody(w, r, "application/x-www-form-urlencoded")
	if rerr != nil {
		return nil, rerr
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, badRequest("request body is not valid form encoding")
	}
	for name, vs := range form {
		if len(vs) > 1 {
			return nil, badRequest(name + " is given more than once")
		}
	}
	if r.URL.RawQuery != "" {
		return nil, badRequest("parameters belong in the body, not the URL")
	}
	return form, nil
}

// writeOAuthError writes an RFC 6749 §5.2 error response: the table's status
// (or status, when not 0) and error code, and the public description.
func writeOAuthError(w http.ResponseWriter, e *exchange.Error, status int) {
	a := oauthAnswer(e)
	if status == 0 {
		status = a.http
	}
	writeJSON(w, status, map[string]string{"error": a.code, "error_description": publicText(e.Description())})
}
