package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/exchange"
)

// Upstream performs RFC 8693 exchanges against a token endpoint: vakt's own
// or any other, NAIS TokenX included.
type Upstream struct {
	Endpoint  string
	Assertion *AssertionBuilder
	Client    *http.Client
	// Retries after the first attempt, on transport errors and 5xx only.
	Retries int
	// Backoff before the first retry; it doubles for each further one.
	Backoff time.Duration
	// Timeout bounds one exchange, retries included.
	Timeout time.Duration
	Logger  *slog.Logger
}

// NewHTTPClient is an HTTP client for token endpoints: connect and response
// timeouts, no redirects followed (a token request must not be replayed
// elsewhere).
func NewHTTPClient() *http.Client { return NewHTTPClientWithCAs(nil) }

// NewHTTPClientWithCAs is NewHTTPClient verifying the token endpoint's
// certificate against roots (the system's when nil), with TLS 1.2 at least.
func NewHTTPClientWithCAs(roots *x509.CertPool) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			TLSHandshakeTimeout:   3 * time.Second,
			ResponseHeaderTimeout: 5 * time.Second,
			MaxIdleConnsPerHost:   16,
			MaxConnsPerHost:       64, // the agent's one upstream: never a flood of connections
			IdleConnTimeout:       90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

const maxTokenResponse = 1 << 20

// Exchange trades subjectToken for a token for audience. An error from the
// token endpoint is returned as it came (its OAuth code and description);
// an endpoint that cannot be reached is temporarily_unavailable.
func (u *Upstream) Exchange(ctx context.Context, subjectToken, audience string) (*exchange.Response, error) {
	if u.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, u.Timeout)
		defer cancel()
	}
	backoff := u.Backoff
	var last error
	for attempt := 0; attempt <= u.Retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, unavailable(fmt.Errorf("%w (after: %v)", ctx.Err(), last))
			case <-time.After(backoff):
			}
			backoff *= 2
		}
		res, err, retry := u.attempt(ctx, subjectToken, audience)
		if err == nil {
			return res, nil
		}
		if !retry {
			return nil, err
		}
		last = err
		if u.Logger != nil {
			u.Logger.Warn("token endpoint attempt failed", "endpoint", u.Endpoint, "attempt", attempt+1, "error", err)
		}
	}
	return nil, unavailable(last)
}

func unavailable(cause error) *exchange.Error {
	return exchange.Refuse(authz.ReasonUpstreamUnavailable, "", cause)
}

// invalidAnswer is a token endpoint's answer that is no OAuth answer.
func invalidAnswer(why string, cause error) *exchange.Error {
	if cause != nil {
		cause = fmt.Errorf("%s: %w", why, cause)
	} else {
		cause = errors.New(why)
	}
	return exchange.Refuse(authz.ReasonUpstreamInvalid, "", cause)
}

// attempt is one POST with a fresh assertion (a fresh jti every time).
func (u *Upstream) attempt(ctx context.Context, subjectToken, audience string) (res *exchange.Response, err error, retry bool) {
	assertion, err := u.Assertion.Build()
	if err != nil {
		return nil, exchange.Refuse(authz.ReasonInternal, "", err), false
	}
	form := url.Values{
		"grant_type":            {exchange.GrantTypeTokenExchange},
		"client_assertion_type": {exchange.ClientAssertionTypeJWT},
		"client_assertion":      {assertion},
		"subject_token_type":    {exchange.TokenTypeJWT},
		"subject_token":         {subjectToken},
		"audience":              {audience},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.Endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, exchange.Refuse(authz.ReasonInternal, "", err), false
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := u.Client.Do(req)
	if err != nil {
		return nil, err, true
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse+1))
	if err != nil {
		return nil, err, true
	}
	if len(body) > maxTokenResponse {
		return nil, invalidAnswer("the answer is too large", nil), false
	}
	if resp.StatusCode >= 500 {
		return nil, fmt.Errorf("token endpoint answered %s", resp.Status), true
	}
	if resp.StatusCode != http.StatusOK {
		// RFC 8693 §2.2.2: a structured error; pass it on as it came.
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			return nil, invalidAnswer("answered "+resp.Status+" without an OAuth error", nil), false
		}
		// Passed on as it came: the caller sees the authority's own answer.
		refused := exchange.Refuse(authz.ReasonUpstreamRefused, e.Description, nil)
		refused.UpstreamCode = e.Error
		return nil, refused, false
	}
	var ok struct {
		AccessToken     string `json:"access_token"`
		IssuedTokenType string `json:"issued_token_type"`
		TokenType       string `json:"token_type"`
		ExpiresIn       int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &ok); err != nil || ok.AccessToken == "" || ok.ExpiresIn <= 0 {
		return nil, invalidAnswer("the answer has no access_token and expires_in", err), false
	}
	return &exchange.Response{AccessToken: ok.AccessToken, IssuedTokenType: ok.IssuedTokenType, TokenType: ok.TokenType, ExpiresIn: ok.ExpiresIn}, nil, false
}
