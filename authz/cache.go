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
	entryOverhead = 160
	// DerivedAllowance is counted for what an adapter derives from the
	// claims once per token and application (Decision.Derive: Check's
	// allow answer, marshalled), and is the most it may keep: a typical
	// token's answer is under 1 KiB.
	DerivedAllowance = 2 << 10
	// derivedOverhead is what a derived value costs besides its bytes:
	// its key and value in the cache's slot and the object holding the
	// bytes, rounded up.
	derivedOverhead = 128
)

// tokenCache maps the SHA-256 of a token's signature to the claims of a
// token that passed every check, with the token's signed part (header and
// payload) for an exact comparison on lookup. It holds no whole token, so a
// memory dump yields no credential. Failures are never stored. An entry
// lives until the token's exp at most, and callers re-check exp and nbf on
// every hit. It is bounded in entries and in bytes (internal/cache), each
// entry counted at what it costs (Claims.size, which holds the signed part,
// and allowances for the rest).
type tokenCache = cache.Cache[cacheEntry]

// CacheStats are the verified-token cache's counts (Validator.CacheStats).
type CacheStats = cache.Stats

// cacheEntry is a verified token: for the collector, a pointer to the
// provider (shared), one to the claims, which hold no pointer (the signed
// part, header.payload, to compare on a hit, and the strings Check reads:
// Claims), and what an adapter derived from them (Decision.Derive), once it
// has.
type cacheEntry struct {
	provider *Provider
	claims   *Claims
	derived  derived
}

// derived is what Decision.Derive computed for key.
type derived struct{ key, value any }

// setDerived keeps v with the entry of claims under k, if it is still there.
func setDerived(c *tokenCache, k cache.Key, claims *Claims, v derived) {
	c.Update(&k, func(e *cacheEntry) {
		if e.claims == claims {
			e.derived = v
		}
	})
}

// newTokenCache returns a cache of at most entries entries and maxBytes
// bytes; nil when entries < 0.
func newTokenCache(entries int, maxBytes int64) *tokenCache {
	if entries < 0 {
		return nil
	}
	if entries == 0 {
		entries = DefaultCacheSize
	}
	if maxBytes <= 0 {
		maxBytes = DefaultCacheBytes
	}
	return cache.New[cacheEntry](entries, maxBytes)
}

// entrySize is what e costs in memory, in bytes.
func entrySize(e *cacheEntry) int64 {
	return entryOverhead + derivedOverhead + DerivedAllowance + int64(e.claims.size)
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
