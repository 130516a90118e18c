package authz

import (
	"sync"
)

// DefaultCacheSize bounds the verified-token cache.
const DefaultCacheSize = 100_000

// tokenCache maps the SHA-256 of a token's signature to the claims of a
// token that passed every check, with the token's signed part (header and
// payload) for an exact comparison on lookup. It holds no whole token, so a
// memory dump yields no credential. Failures are never stored. An entry lives until the token's
// exp at most: callers re-check exp and nbf on every hit and drop what has
// expired; a full shard evicts expired entries first, then arbitrary ones.
type tokenCache struct {
	shards   []cacheShard
	mask     byte
	perShard int
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[[32]byte]cacheEntry
}

type cacheEntry struct {
	provider *Provider
	signed   string // header.payload of the verified token
	claims   *Claims
}

// newTokenCache returns a cache of at most size entries; nil when size <= 0.
func newTokenCache(size int) *tokenCache {
	if size <= 0 {
		return nil
	}
	n := 32
	for n > 1 && size/n < 64 {
		n /= 2
	}
	c := &tokenCache{shards: make([]cacheShard, n), mask: byte(n - 1), perShard: size / n}
	for i := range c.shards {
		c.shards[i].m = make(map[[32]byte]cacheEntry)
	}
	return c
}

func (c *tokenCache) shard(key *[32]byte) *cacheShard { return &c.shards[key[0]&c.mask] }

func (c *tokenCache) get(key *[32]byte) (cacheEntry, bool) {
	s := c.shard(key)
	s.mu.RLock()
	e, ok := s.m[*key]
	s.mu.RUnlock()
	return e, ok
}

func (c *tokenCache) put(key *[32]byte, e cacheEntry, nowSec float64) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[*key]; !ok && len(s.m) >= c.perShard {
		s.evictOne(nowSec)
	}
	s.m[*key] = e
}

// evictOne drops an expired entry among a few sampled (map order is random),
// or else the first sampled.
func (s *cacheShard) evictOne(nowSec float64) {
	const samples = 8
	var victim [32]byte
	i := 0
	for k, e := range s.m {
		if i == 0 {
			victim = k
		}
		if e.claims.exp <= nowSec {
			victim = k
			break
		}
		if i++; i == samples {
			break
		}
	}
	delete(s.m, victim)
}

func (c *tokenCache) remove(key *[32]byte) {
	s := c.shard(key)
	s.mu.Lock()
	delete(s.m, *key)
	s.mu.Unlock()
}

func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
