package server

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// exchangeService is vakt.v1.TokenExchangeService on the authority: RFC
// 8693 token exchange by the runtime in force.
type exchangeService struct {
	vaktv1.UnimplementedTokenExchangeServiceServer
	cur *Current
	x   exchangeRecorder
}

var _ vaktv1.TokenExchangeServiceServer = (*exchangeService)(nil)

// exchangeRecorder records an exchange decided: its metrics, its decision
// log line and its span.
type exchangeRecorder struct {
	metrics *Metrics
	obs     *observer
}

// done records o, decided since start, and returns its refusal, if any.
// span is the exchange's, ended here.
func (x exchangeRecorder) done(ctx context.Context, span trace.Span, start time.Time, o *exchange.Outcome) *exchange.Error {
	var err error
	if o.Err != nil {
		err = o.Err
	}
	e := x.metrics.observeExchange(start, err)
	r := authz.ReasonNone
	if e != nil {
		r = e.Reason()
	}
	setting := x.obs.setting()
	if !logs(setting, r) && r.Outage() {
		// log.decisions: none still leaves the cause of an outage.
		x.obs.decisions.log.Debug("exchange could not be decided", "reason", r.String(), "cause", e.Err)
	}
	x.obs.decisions.logExchange(ctx, setting, o, time.Since(start))
	if span.IsRecording() {
		attrs := make([]attribute.KeyValue, 0, 4)
		for _, a := range [...]struct{ k, v string }{{"vakt.client", o.Client}, {"vakt.target", o.Target}, {"vakt.provider", o.Provider}, {"vakt.rule", o.Rule}} {
			if a.v != "" {
				attrs = append(attrs, attribute.String(a.k, strings.Clone(truncate(a.v, 256)))) // a copy: not a view of a token kept by the exporter
			}
		}
		endSpan(span, r, attrs...)
	}
	return e
}

func (s *exchangeService) Exchange(ctx context.Context, req *vaktv1.ExchangeRequest) (*vaktv1.ExchangeResponse, error) {
	start := time.Now()
	ctx, span := s.x.obs.startGRPC(ctx, vaktv1.TokenExchangeService_Exchange_FullMethodName)
	defer endOnPanic(span)
	var audience []string
	if a := req.GetAudience(); a != "" {
		audience = append(audience, a)
	}
	audience = append(audience, req.GetAdditionalAudience()...)
	o := s.cur.Load().Authority.Decide(ctx, exchange.Request{
		GrantType:           req.GetGrantType(),
		ClientAssertionType: req.GetClientAssertionType(),
		ClientAssertion:     req.GetClientAssertion(),
		SubjectTokenType:    req.GetSubjectTokenType(),
		SubjectToken:        req.GetSubjectToken(),
		Audience:            audience,
		Resource:            req.GetResource(),
		Scope:               req.GetScope(),
		RequestedTokenType:  req.GetRequestedTokenType(),
		ActorToken:          req.GetActorToken(),
		ActorTokenType:      req.GetActorTokenType(),
	})
	if e := s.x.done(ctx, span, start, &o); e != nil {
		return nil, oauthGRPCError(e)
	}
	return exchangeResponse(o.Response), nil
}

func exchangeResponse(res *exchange.Response) *vaktv1.ExchangeResponse {
	return &vaktv1.ExchangeResponse{
		AccessToken:     res.AccessToken,
		IssuedTokenType: res.IssuedTokenType,
		TokenType:       res.TokenType,
		ExpiresIn:       res.ExpiresIn,
		Scope:           res.Scope,
	}
}

// tokenHandler is POST /token: RFC 8693 §2.1, form-encoded.
type tokenHandler struct {
	cur *Current
	x   exchangeRecorder
}

var _ http.Handler = (*tokenHandler)(nil)

func (h *tokenHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx, span := h.x.obs.startHTTP(r)
	defer endOnPanic(span)
	if scheme := authScheme(r); scheme != "" {
		// RFC 6749 §5.2: a client that authenticated with the Authorization
		// header gets 401 and a challenge for its scheme. vakt takes
		// private_key_jwt only, in the body.
		e := h.x.done(ctx, span, start, &exchange.Outcome{Err: exchange.Refuse(authz.ReasonClientAuthentication, "", nil)})
		w.Header().Set("WWW-Authenticate", scheme+` realm="`+publicText(h.cur.Load().Config.Issuer)+`"`)
		writeOAuthError(w, e, http.StatusUnauthorized)
		return
	}
	form, rerr := readTokenForm(w, r)
	if rerr != nil {
		// RFC 6749 §5.2: a token endpoint answers 400 with an error code.
		writeOAuthError(w, h.x.done(ctx, span, start, &exchange.Outcome{Err: exchange.Refuse(authz.ReasonRequestInvalid, rerr.description, nil)}), 0)
		return
	}
	o := h.cur.Load().Authority.Decide(ctx, exchange.Request{
		GrantType:           form.Get("grant_type"),
		ClientAssertionType: form.Get("client_assertion_type"),
		ClientAssertion:     form.Get("client_assertion"),
		ClientID:            form.Get("client_id"),
		ClientSecret:        form.Get("client_secret"),
		SubjectTokenType:    form.Get("subject_token_type"),
		SubjectToken:        form.Get("subject_token"),
		Audience:            form["audience"],
		Resource:            form["resource"],
		Scope:               form.Get("scope"),
		RequestedTokenType:  form.Get("requested_token_type"),
		ActorToken:          form.Get("actor_token"),
		ActorTokenType:      form.Get("actor_token_type"),
	})
	if e := h.x.done(ctx, span, start, &o); e != nil {
		writeOAuthError(w, e, 0)
		return
	}
	res := o.Response
	w.Header().Set("Pragma", "no-cache")
	body := map[string]any{
		"access_token":      res.AccessToken,
		"issued_token_type": res.IssuedTokenType,
		"token_type":        res.TokenType,
		"expires_in":        res.ExpiresIn,
	}
	if res.Scope != "" {
		body["scope"] = res.Scope
	}
	writeJSON(w, http.StatusOK, body)
}

// authScheme is the scheme of a request's Authorization header, "" when it
// has none.
func authScheme(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if h == "" {
		return ""
	}
	scheme, _, _ := strings.Cut(h, " ")
	if scheme == "" || !validScheme(scheme) {
		return "Basic" // what RFC 6749 §2.3.1 has clients send
	}
	return scheme
}

func validScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return len(s) <= 32
}

// singleParams are the token endpoint's defined parameters: each may be
// given once (RFC 6749 §3.2). audience and resource may repeat (RFC 8693
// §2.1, RFC 8707); parameters vakt does not define are ignored, repeated or
// not.
var singleParams = [...]string{
	"grant_type", "client_assertion_type", "client_assertion", "client_id", "client_secret",
	"subject_token", "subject_token_type", "actor_token", "actor_token_type",
	"requested_token_type", "scope",
}

// readTokenForm reads a form-encoded token request; the body is capped at
// 64 KiB.
func readTokenForm(w http.ResponseWriter, r *http.Request) (url.Values, *requestError) {
	_, body, rerr := readBody(w, r, "application/x-www-form-urlencoded")
	if rerr != nil {
		return nil, rerr
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, badRequest("request body is not valid form encoding")
	}
	for _, name := range singleParams {
		if len(form[name]) > 1 {
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
