// Package agent is vakt beside one application: it holds the application's
// key, builds its client assertions (RFC 7523), exchanges tokens at an
// upstream token endpoint (vakt's or NAIS TokenX's, RFC 8693) and caches what
// it gets, as the NAIS documentation advises.
package agent

import (
	"context"
	"crypto/sha256"
	"hash"
	"sync"
	"time"
	"unsafe"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/exchange"
)

// Cache defaults, as the NAIS documentation advises.
const (
	maxCachedSeconds    = 24 * 60 * 60
	DefaultCacheSize    = 262_144
	DefaultSafetyMargin = 120 * time.Second
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
	res       exchange.Response
	expires   time.Time // the token's own expiry
	refreshAt time.Time // when the cache stops handing it out
}

type agentCall struct {
	done chan struct{}
	res  *exchange.Response
	err  error
}

// Config configures an Agent.
type Config struct {
	Upstream *Upstream
	// CacheSize bounds the cache (DefaultCacheSize when zero).
	CacheSize int
	// SafetyMargin before expiry (DefaultSafetyMargin when zero).
	SafetyMargin time.Duration
	Now          func() time.Time
}

// New returns an Agent.
func New(cfg Config) *Agent {
	a := &Agent{upstream: cfg.Upstream, now: cfg.Now, margin: cfg.SafetyMargin, max: cfg.CacheSize,
		entries: map[[32]byte]agentEntry{}, inflight: map[[32]byte]*agentCall{}}
	if a.now == nil {
		a.now = time.Now
	}
	if a.margin <= 0 {
		a.margin = DefaultSafetyMargin
	}
	if a.max <= 0 {
		a.max = DefaultCacheSize
	}
	return a
}

// digests reuses SHA-256 states: a cache hit should not allocate.
var digests = sync.Pool{New: func() any { return sha256.New() }}

// CacheKey is the cache key of an exchange: sha256(subject token + audience),
// as the NAIS documentation advises.
func CacheKey(subjectToken, audience string) [32]byte {
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
func (a *Agent) Exchange(ctx context.Context, subjectToken, audience string, skipCache bool) (*exchange.Response, error) {
	if subjectToken == "" {
		return nil, exchange.Refuse(authz.ReasonRequestInvalid, "subject_token is required", nil)
	}
	if audience == "" {
		return nil, exchange.Refuse(authz.ReasonRequestInvalid, "audience is required", nil)
	}
	key := CacheKey(subjectToken, audience)
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
