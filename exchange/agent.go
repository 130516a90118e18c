package exchange

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/google/uuid"
)

// AssertionLifetime is how long an agent's client assertion is valid.
const AssertionLifetime = 30 * time.Second

// AssertionBuilder makes client assertions as the NAIS documentation
// specifies: header kid, typ JWT, alg RS256 (or the key's own algorithm for
// EC and OKP keys); claims sub = iss = the client id, aud = the token
// endpoint, a fresh jti for every assertion, nbf = iat = now, exp = now + 30 s.
type AssertionBuilder struct {
	ClientID      string
	TokenEndpoint string
	Key           *SigningKey
	Now           func() time.Time
}

// Build makes one assertion.
func (b *AssertionBuilder) Build() (string, error) {
	signer, err := NewSigner(b.Key)
	if err != nil {
		return "", err
	}
	now := b.Now()
	return signer.Sign("JWT", map[string]any{
		"iss": b.ClientID, "sub": b.ClientID, "aud": b.TokenEndpoint,
		"jti": uuid.NewString(), "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(AssertionLifetime).Unix(),
	})
}

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
func NewHTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			TLSHandshakeTimeout:   3 * time.Second,
			ResponseHeaderTimeout: 5 * time.Second,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

const maxTokenResponse = 1 << 20

// Exchange trades subjectToken for a token for audience. An error from the
// token endpoint is returned as it came (its OAuth code and description);
// an endpoint that cannot be reached is temporarily_unavailable.
func (u *Upstream) Exchange(ctx context.Context, subjectToken, audience string) (*Response, error) {
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

func unavailable(cause error) *Error {
	return refuse(CodeTemporarilyUnavailable, "upstream_unavailable", "the token endpoint cannot be reached; try again later", cause)
}

// attempt is one POST with a fresh assertion (a fresh jti every time).
func (u *Upstream) attempt(ctx context.Context, subjectToken, audience string) (res *Response, err error, retry bool) {
	assertion, err := u.Assertion.Build()
	if err != nil {
		return nil, refuse(CodeServerError, ReasonInternal, "internal error", err), false
	}
	form := url.Values{
		"grant_type":            {GrantTypeTokenExchange},
		"client_assertion_type": {ClientAssertionTypeJWT},
		"client_assertion":      {assertion},
		"subject_token_type":    {TokenTypeJWT},
		"subject_token":         {subjectToken},
		"audience":              {audience},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.Endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, refuse(CodeServerError, ReasonInternal, "internal error", err), false
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
		return nil, refuse(CodeServerError, "upstream_response", "the token endpoint's answer is too large", nil), false
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
			return nil, refuse(CodeServerError, "upstream_response", fmt.Sprintf("the token endpoint answered %s without an OAuth error", resp.Status), nil), false
		}
		return nil, &Error{Code: e.Error, Description: e.Description, Reason: "upstream_" + e.Error}, false
	}
	var ok struct {
		AccessToken     string `json:"access_token"`
		IssuedTokenType string `json:"issued_token_type"`
		TokenType       string `json:"token_type"`
		ExpiresIn       int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &ok); err != nil || ok.AccessToken == "" || ok.ExpiresIn <= 0 {
		return nil, refuse(CodeServerError, "upstream_response", "the token endpoint's answer has no access_token and expires_in", err), false
	}
	return &Response{AccessToken: ok.AccessToken, IssuedTokenType: ok.IssuedTokenType, TokenType: ok.TokenType, ExpiresIn: ok.ExpiresIn}, nil, false
}

// Cache defaults, as the NAIS documentation advises.
const (
	maxCachedSeconds      = 24 * 60 * 60
	DefaultAgentCacheSize = 262_144
	DefaultSafetyMargin   = 120 * time.Second
)

// Agent exchanges tokens for one application through an Upstream and
// caches the results: key sha256(subject token + audience), an entry lives
// until expires_in minus a safety margin (half the lifetime for tokens that
// live 120 s or less), the expires_in returned is the time actually left,
// concurrent misses for one key make one upstream call, errors are never
// cached, and the cache is bounded.
type Agent struct {
	upstream *Upstream
	now      func() time.Time
	margin   time.Duration
	max      int

	mu       sync.Mutex
	entries  map[[32]byte]agentEntry
	inflight map[[32]byte]*agentCall
}

type agentEntry struct {
	res       Response
	expires   time.Time // the token's own expiry
	refreshAt time.Time // when the cache stops handing it out
}

type agentCall struct {
	done chan struct{}
	res  *Response
	err  error
}

// AgentConfig configures an Agent.
type AgentConfig struct {
	Upstream *Upstream
	// CacheSize bounds the cache (DefaultAgentCacheSize when zero).
	CacheSize int
	// SafetyMargin before expiry (DefaultSafetyMargin when zero).
	SafetyMargin time.Duration
	Now          func() time.Time
}

// NewAgent returns an Agent.
func NewAgent(cfg AgentConfig) *Agent {
	a := &Agent{upstream: cfg.Upstream, now: cfg.Now, margin: cfg.SafetyMargin, max: cfg.CacheSize,
		entries: map[[32]byte]agentEntry{}, inflight: map[[32]byte]*agentCall{}}
	if a.now == nil {
		a.now = time.Now
	}
	if a.margin <= 0 {
		a.margin = DefaultSafetyMargin
	}
	if a.max <= 0 {
		a.max = DefaultAgentCacheSize
	}
	return a
}

// digests reuses SHA-256 states: a cache hit should not allocate.
var digests = sync.Pool{New: func() any { return sha256.New() }}

// AgentKey is the cache key of an exchange: sha256(subject token + audience),
// as the NAIS documentation advises.
func AgentKey(subjectToken, audience string) [32]byte {
	h := digests.Get().(hash.Hash)
	h.Reset()
	// The strings are hashed in place; converting them would copy them.
	h.Write(unsafe.Slice(unsafe.StringData(subjectToken), len(subjectToken)))
	h.Write(unsafe.Slice(unsafe.StringData(audience), len(audience)))
	var k [32]byte
	h.Sum(k[:0])
	digests.Put(h)
	return k
}

// Exchange returns a token for audience on behalf of subjectToken, from the
// cache unless skipCache, which always asks upstream (and refreshes the
// entry).
func (a *Agent) Exchange(ctx context.Context, subjectToken, audience string, skipCache bool) (*Response, error) {
	if subjectToken == "" {
		return nil, refuse(CodeInvalidRequest, ReasonBadRequest, "subject_token is required", nil)
	}
	if audience == "" {
		return nil, refuse(CodeInvalidRequest, ReasonBadRequest, "audience is required", nil)
	}
	key := AgentKey(subjectToken, audience)
	a.mu.Lock()
	if !skipCache {
		if e, ok := a.entries[key]; ok {
			if now := a.now(); now.Before(e.refreshAt) {
				a.mu.Unlock()
				res := e.res
				res.ExpiresIn = int64(e.expires.Sub(now) / time.Second)
				return &res, nil
			}
			delete(a.entries, key)
		}
	}
	call, joined := a.inflight[key]
	if !joined {
		call = &agentCall{done: make(chan struct{})}
		a.inflight[key] = call
		go a.fetch(ctx, key, call, subjectToken, audience)
	}
	a.mu.Unlock()
	select {
	case <-call.done:
		if call.err != nil {
			return nil, call.err
		}
		res := *call.res
		return &res, nil
	case <-ctx.Done():
		return nil, unavailable(ctx.Err())
	}
}

// fetch is the one upstream call for key. It runs apart from the caller
// whose miss started it, so that caller's cancellation does not fail the
// others waiting on the same key.
func (a *Agent) fetch(ctx context.Context, key [32]byte, call *agentCall, subjectToken, audience string) {
	res, err := a.upstream.Exchange(context.WithoutCancel(ctx), subjectToken, audience)
	now := a.now() // the entry's times count from the answer
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.inflight, key)
	call.res, call.err = res, err
	// Store before waking the waiters: what they do next sees the entry.
	defer close(call.done)
	if err != nil {
		return // errors are never cached
	}
	// Cached 24 h at most: an absurd expires_in must neither overflow the
	// arithmetic nor pin a token for years.
	lifetime := time.Duration(min(res.ExpiresIn, maxCachedSeconds)) * time.Second
	margin := a.margin
	if lifetime <= 2*time.Minute {
		margin = lifetime / 2
	}
	if len(a.entries) >= a.max {
		a.evict(now)
	}
	a.entries[key] = agentEntry{res: *res, expires: now.Add(lifetime), refreshAt: now.Add(lifetime - margin)}
}

// evict drops expired entries, or else one arbitrary entry, to make room.
func (a *Agent) evict(now time.Time) {
	for k, e := range a.entries {
		if !now.Before(e.refreshAt) {
			delete(a.entries, k)
		}
	}
	for k := range a.entries {
		if len(a.entries) < a.max {
			return
		}
		delete(a.entries, k)
	}
}

// Len returns the number of cached tokens.
func (a *Agent) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.entries)
}
