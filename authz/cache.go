package authz

import (
	"math"

	"github.com/vakt-dev/vakt/internal/cache"
)

// Bounds of the verified-token cache.
const (
	// DefaultCacheSize bounds the verified-token cache in entries.
	DefaultCacheSize = 100_000
	// DefaultCacheBytes bounds it in bytes: enough for tens of thousands of
	// typical tokens in a small pod, whatever tokens a client mints.
	DefaultCacheBytes = 64 << 20
	// entryOverhead is what an entry costs besides its token and claims:
	// the index, the slot and the entry itself.
	entryOverhead = 176
)

// tokenCache maps the SHA-256 of a token's signature to the claims of a
// token that passed its provider's every check, with the token's signed
// part (header and payload) for an exact comparison on lookup. It holds no
// whole token, so a memory dump yields no credential. Failures are never
// stored. An entry lives until the token's exp at most, and callers
// re-check exp and nbf on every hit, and the Validator's own rule (an
// application audience) on every result. It is bounded in entries and in
// bytes (internal/cache), each entry counted at what it costs
// (Claims.size, which holds the signed part, and allowances for the rest).
type tokenCache = cache.Cache[cacheEntry]

// TokenCache is the verified-token cache as its owner keeps it. What it
// holds depends on the identity providers only, never on the policy, so
// one is made once and shared by the Validators of successive
// configurations (ValidatorConfig.Cache): a policy change costs no token a
// second signature check. Each entry holds the *Provider that verified it:
// a provider kept as it was (Provider.SameConfig) keeps its entries, and
// Retire drops those of a provider whose configuration changed or that
// was removed.
type TokenCache struct {
	c       *tokenCache
	entries int
	bytes   int64
}

// NewTokenCache returns a cache of at most entries entries and maxBytes
// bytes (DefaultCacheSize and DefaultCacheBytes when zero); nil, no cache,
// when entries < 0.
func NewTokenCache(entries int, maxBytes int64) *TokenCache {
	if entries < 0 {
		return nil
	}
	entries, maxBytes = cacheBounds(entries, maxBytes)
	return &TokenCache{c: cache.New[cacheEntry](entries, maxBytes), entries: entries, bytes: maxBytes}
}

// cacheBounds are the bounds a cache of entries and maxBytes has, the
// defaults for zeros.
func cacheBounds(entries int, maxBytes int64) (int, int64) {
	if entries == 0 {
		entries = DefaultCacheSize
	}
	if maxBytes <= 0 {
		maxBytes = DefaultCacheBytes
	}
	return entries, maxBytes
}

// Fits reports whether t is what NewTokenCache(entries, maxBytes) would
// make: a cache of those bounds, or none (nil) for entries < 0.
func (t *TokenCache) Fits(entries int, maxBytes int64) bool {
	if t == nil || entries < 0 {
		return t == nil && entries < 0
	}
	entries, maxBytes = cacheBounds(entries, maxBytes)
	return t.entries == entries && t.bytes == maxBytes
}

// Entries is the most entries t holds.
func (t *TokenCache) Entries() int { return t.entries }

// Stats counts the cache: entries, bytes, evictions, hits and misses.
func (t *TokenCache) Stats() CacheStats { return t.c.Stats() }

// Retire marks p as no longer configured (replaced by a provider of
// another configuration, or removed) and drops its tokens from t, which
// may be nil (no cache); it returns how many it dropped. From then on no
// Validator serves a cached token of p, nor stores one, even one still in
// force for a request that began before: its tokens are verified again, by
// the provider configured now. Retire is for the provider's owner, once
// the configuration without p is built.
func (t *TokenCache) Retire(p *Provider) int {
	// The flag first: a store that misses the sweep sees it (Validator.store).
	p.retired.Store(true)
	if t == nil {
		return 0
	}
	return t.c.RemoveFunc(func(e *cacheEntry) bool { return e.provider == p })
}

// CacheStats are the verified-token cache's counts (TokenCache.Stats,
// Validator.CacheStats).
type CacheStats = cache.Stats

// cacheEntry is a verified token: for the collector, a pointer to the
// provider (shared) and one to the claims, whose one pointer is their
// buffer of strings (the signed part, header.payload, to compare on a hit,
// and the strings Check reads: Claims). What a face makes of the claims (an
// answer in its wire form) is the face's to keep, keyed by
// Decision.TokenKey: the cache holds no transport's bytes.
type cacheEntry struct {
	provider *Provider
	claims   *Claims
}

// entrySize is what e costs in memory, in bytes.
func entrySize(e *cacheEntry) int64 {
	return entryOverhead + int64(e.claims.size)
}

// expiryNanos is when a token with exp (seconds) leaves the cache: at exp
// plus the provider's leeway, after which it could not be accepted anyway.
func expiryNanos(exp float64, p *Provider) int64 {
	t := (exp + p.leeway.Seconds()) * 1e9
	if t >= math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(t)
}
