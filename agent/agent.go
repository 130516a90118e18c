// Package agent is vakt beside one application: it holds the application's
// key, builds its client assertions (RFC 7523), exchanges tokens at an
// upstream token endpoint (vakt's or NAIS TokenX's, RFC 8693) and caches what
// it gets, as the NAIS documentation advises.
package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/cache"
)

// Cache defaults, as the NAIS documentation advises.
const (
	maxCachedSeconds    = 24 * 60 * 60
	DefaultCacheSize    = 262_144
	DefaultCacheBytes   = 64 << 20
	DefaultSafetyMargin = 120 * time.Second
	// entryOverhead is what an entry costs besides its token's bytes.
	entryOverhead = 256
	// maxFetches bounds the exchanges the agent has under way upstream.
	maxFetches = 256
)

var errTooManyFetches = errors.New("the agent has as many exchanges under way upstream as it takes")

// Agent exchanges tokens for one application through an Upstream and
// caches the results: the key is the subject token and the audience
// (CacheKey), an entry lives until expires_in minus a safety margin (half
// the lifetime for tokens that live 120 s or less), the expires_in returned
// is the time actually left, concurrent misses for one key make one
// upstream call, errors are never cached, and the cache is bounded in
// entries and bytes (internal/cache: a hit takes no lock but its shard's
// read lock, an insertion evicts in O(1)).
type Agent struct {
	upstream *Upstream
	now      func() time.Time
	margin   time.Duration
	cache    *cache.Cache[agentEntry]

	mu       sync.Mutex
	inflight map[cache.Key]*agentCall
}

type agentEntry struct {
	res     exchange.Response
	expires time.Time // the token's own expiry
}

type agentCall struct {
	done chan struct{}
	res  *exchange.Response
	err  error
}

// Config configures an Agent.
type Config struct {
	Upstream *Upstream
	// CacheSize bounds the cache in entries (DefaultCacheSize when zero),
	// CacheBytes in bytes (DefaultCacheBytes when zero).
	CacheSize  int
	CacheBytes int64
	// SafetyMargin before expiry (DefaultSafetyMargin when zero).
	SafetyMargin time.Duration
	Now          func() time.Time
}

// New returns an Agent.
func New(cfg Config) *Agent {
	a := &Agent{upstream: cfg.Upstream, now: cfg.Now, margin: cfg.SafetyMargin, inflight: map[cache.Key]*agentCall{}}
	if a.now == nil {
		a.now = time.Now
	}
	if a.margin <= 0 {
		a.margin = DefaultSafetyMargin
	}
	size, bytes := cfg.CacheSize, cfg.CacheBytes
	if size <= 0 {
		size = DefaultCacheSize
	}
	if bytes <= 0 {
		bytes = DefaultCacheBytes
	}
	a.cache = cache.New[agentEntry](size, bytes)
	return a
}

// CacheKey is the cache key of an exchange: the subject token and the
// audience, each length-prefixed before they are hashed together, so that
// a token and an audience can never be cut differently into another pair's
// key (NAIS advises sha256(token + audience), which can).
func CacheKey(subjectToken, audience string) cache.Key {
	return cache.KeyOf(subjectToken, audience)
}

// Exchange returns a token for audience on behalf of subjectToken, from the
// cache unless skipCache, which always asks upstream (and refreshes the
// entry).
func (a *Agent) Exchange(ctx context.Context, subjectToken, audience string, skipCache bool) (*exchange.Response, error) {
	if subjectToken == "" {
		return nil, exchange.Refuse(authz.ReasonRequestInvalid, "subject_token is required", nil)
	}
	if audience == "" {
		return nil, exchange.Refuse(authz.ReasonRequestInvalid, "audience is required", nil)
	}
	key := CacheKey(subjectToken, audience)
	if !skipCache {
		now := a.now()
		if e, ok := a.cache.Get(&key, now.UnixNano()); ok {
			res := e.res
			res.ExpiresIn = int64(e.expires.Sub(now) / time.Second)
			return &res, nil
		}
	}
	a.mu.Lock()
	call, joined := a.inflight[key]
	if !joined {
		// A fetch outlives the caller who started it (others may wait on
		// it): the fetches under way are bounded, past which a miss is an
		// outage at once rather than one more request to the upstream.
		if len(a.inflight) >= maxFetches {
			a.mu.Unlock()
			return nil, unavailable(errTooManyFetches)
		}
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
func (a *Agent) fetch(ctx context.Context, key cache.Key, call *agentCall, subjectToken, audience string) {
	res, err := a.upstream.Exchange(context.WithoutCancel(ctx), subjectToken, audience)
	now := a.now() // the entry's times count from the answer
	call.res, call.err = res, err
	if err == nil { // errors are never cached
		a.store(&key, res, now)
	}
	// Stored before the waiters wake: what they do next sees the entry.
	a.mu.Lock()
	delete(a.inflight, key)
	a.mu.Unlock()
	close(call.done)
}

// store caches res from now until its expiry less the safety margin.
func (a *Agent) store(key *cache.Key, res *exchange.Response, now time.Time) {
	// Cached 24 h at most: an absurd expires_in must neither overflow the
	// arithmetic nor pin a token for years.
	lifetime := time.Duration(min(res.ExpiresIn, maxCachedSeconds)) * time.Second
	margin := a.margin
	if lifetime <= 2*time.Minute {
		margin = lifetime / 2
	}
	size := int64(entryOverhead + len(res.AccessToken) + len(res.IssuedTokenType) + len(res.TokenType))
	a.cache.Put(key, agentEntry{res: *res, expires: now.Add(lifetime)}, size, now.Add(lifetime-margin).UnixNano(), now.UnixNano())
}

// Len returns the number of cached tokens.
func (a *Agent) Len() int { return a.cache.Stats().Entries }
