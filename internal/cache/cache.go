// Package cache is one bounded cache for vakt's hot paths: the verified-token
// cache and the agent's token cache. It maps 32-byte keys (digests) to values
// that expire, and is bounded both in entries and in bytes, each entry
// counted at the size its owner says it costs.
//
// It is sharded by the key's first byte, and each shard evicts with CLOCK
// (second chance): a hit sets an entry's reference bit, and the hand that
// looks for room skips and clears set bits, dropping expired entries
// first. Eviction is O(1) amortised: no scan of the whole shard under its
// lock, however full it is. The index of a shard maps keys to slot numbers
// and holds no pointers, so the garbage collector has nothing to trace in
// it.
package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"sync/atomic"
)

// Key is a cache key: a SHA-256 digest, or anything as well spread.
type Key = [32]byte

// Cache is a bounded map from Key to V. The zero value is not usable; call
// New. A Cache is safe for concurrent use.
type Cache[V any] struct {
	shards []shard[V]
	mask   uint8
}

type shard[V any] struct {
	mu       sync.RWMutex
	index    map[Key]int32 // key → slot
	slots    []slot[V]
	free     []int32 // slots not in use
	hand     int
	bytes    int64
	maxBytes int64
	maxSlots int

	evictions    atomic.Int64
	hits, misses atomic.Uint64 // beside the lock's own counter, whose line a Get writes anyway
}

type slot[V any] struct {
	key     Key
	val     V
	size    int64
	expires int64 // unix nanoseconds; an entry is gone at expires
	used    bool
	ref     atomic.Bool // CLOCK's reference bit, set on a hit under the read lock
}

// New returns a cache of at most maxEntries entries and maxBytes bytes, in
// 2^k shards (k chosen so that each shard holds a fair share).
func New[V any](maxEntries int, maxBytes int64) *Cache[V] {
	if maxEntries < 1 {
		maxEntries = 1
	}
	if maxBytes < 1 {
		maxBytes = 1
	}
	// Shards enough to spread the locks, few enough that each holds a fair
	// share: 64 entries and 256 KiB at least.
	n := 32
	for n > 1 && (maxEntries/n < 64 || maxBytes/int64(n) < 256<<10) {
		n /= 2
	}
	c := &Cache[V]{shards: make([]shard[V], n), mask: uint8(n - 1)}
	for i := range c.shards {
		s := &c.shards[i]
		s.maxSlots = max(maxEntries/n, 1)
		s.maxBytes = max(maxBytes/int64(n), 1)
		s.index = make(map[Key]int32)
	}
	return c
}

func (c *Cache[V]) shard(k *Key) *shard[V] { return &c.shards[k[0]&c.mask] }

// Get returns the value under k, if it has not expired at now (unix
// nanoseconds). An expired entry is a miss, and is dropped by the next
// eviction that meets it.
func (c *Cache[V]) Get(k *Key, now int64) (V, bool) {
	s := c.shard(k)
	s.mu.RLock()
	i, ok := s.index[*k]
	if !ok {
		s.mu.RUnlock()
		s.misses.Add(1)
		var zero V
		return zero, false
	}
	sl := &s.slots[i]
	if now >= sl.expires {
		s.mu.RUnlock()
		s.misses.Add(1)
		var zero V
		return zero, false
	}
	if !sl.ref.Load() {
		sl.ref.Store(true)
	}
	v := sl.val
	s.mu.RUnlock()
	s.hits.Add(1)
	return v, true
}

// Put stores v under k until expires (unix nanoseconds), counting size
// bytes for it. An entry larger than a shard's share of the bytes is not
// stored. To make room, Put evicts expired entries first, then entries not
// used since the hand last passed.
func (c *Cache[V]) Put(k *Key, v V, size int64, expires, now int64) {
	if expires <= now {
		return
	}
	s := c.shard(k)
	if size > s.maxBytes {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[*k]; ok {
		s.drop(i)
	}
	for len(s.index) >= s.maxSlots || s.bytes+size > s.maxBytes {
		if !s.evictOne(now) {
			return
		}
	}
	var i int32
	if n := len(s.free); n > 0 {
		i = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		s.slots = append(s.slots, slot[V]{})
		i = int32(len(s.slots) - 1)
	}
	sl := &s.slots[i]
	sl.key, sl.val, sl.size, sl.expires, sl.used = *k, v, size, expires, true
	sl.ref.Store(false)
	s.index[*k] = i
	s.bytes += size
}

// Update calls f with the value under k, under the shard's lock, when k is
// present (expired or not): for a value that changes in place after Put, its
// size and expiry as they were.
func (c *Cache[V]) Update(k *Key, f func(*V)) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[*k]; ok {
		f(&s.slots[i].val)
	}
}

// evictWindow is how many slots the hand looks at, at least, before it
// settles on an entry that is not expired: enough that an expired entry
// nearby is dropped before a live one, few enough that an eviction stays
// O(1).
const evictWindow = 16

// evictOne advances the hand to an entry to drop, and drops it: an expired
// one if the hand meets one within evictWindow slots, else the first it met
// whose reference bit was clear (clearing set bits as it passes). Two turns
// of the hand always find one.
func (s *shard[V]) evictOne(now int64) bool {
	n := len(s.slots)
	if n == 0 || len(s.index) == 0 {
		return false
	}
	candidate, seen := -1, 0
	for range 2 * n {
		if s.hand >= n {
			s.hand = 0
		}
		i := s.hand
		s.hand++
		sl := &s.slots[i]
		if !sl.used {
			continue
		}
		seen++
		switch {
		case now >= sl.expires:
			s.evict(int32(i))
			return true
		case !sl.ref.Load():
			if candidate < 0 {
				candidate = i
			}
		default:
			sl.ref.Store(false)
		}
		if candidate >= 0 && seen >= evictWindow {
			break
		}
	}
	if candidate < 0 {
		return false
	}
	s.evict(int32(candidate))
	return true
}

func (s *shard[V]) evict(i int32) {
	s.drop(i)
	s.evictions.Add(1)
}

func (s *shard[V]) drop(i int32) {
	sl := &s.slots[i]
	delete(s.index, sl.key)
	s.bytes -= sl.size
	var zero V
	sl.val, sl.used, sl.size = zero, false, 0
	s.free = append(s.free, i)
}

// Remove drops k.
func (c *Cache[V]) Remove(k *Key) {
	s := c.shard(k)
	s.mu.Lock()
	if i, ok := s.index[*k]; ok {
		s.drop(i)
	}
	s.mu.Unlock()
}

// RemoveFunc drops every entry whose value f reports, and returns how many
// it dropped: for an owner whose entries all went stale at once (an
// identity provider whose configuration changed). It takes each shard's
// lock in turn, so lookups in the other shards go on meanwhile; f is called
// under the lock, and must be quick.
func (c *Cache[V]) RemoveFunc(f func(*V) bool) int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for j := range s.slots {
			if sl := &s.slots[j]; sl.used && f(&sl.val) {
				s.drop(int32(j))
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// Stats are a cache's counts, for metrics and tests.
type Stats struct {
	Entries      int
	Bytes        int64
	Evictions    int64
	Hits, Misses uint64
}

// Stats counts the entries and bytes held, and the evictions so far.
func (c *Cache[V]) Stats() Stats {
	var st Stats
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		st.Entries += len(s.index)
		st.Bytes += s.bytes
		s.mu.RUnlock()
		st.Evictions += s.evictions.Load()
		st.Hits += s.hits.Load()
		st.Misses += s.misses.Load()
	}
	return st
}

// KeyOf is the key of a tuple of strings: the SHA-256 of each field
// preceded by its length, so that no two tuples share a key ("ab"+"c" and
// "a"+"bc" differ). Fields up to 4 KiB in all cost no allocation.
func KeyOf(fields ...string) Key {
	n := 0
	for _, f := range fields {
		n += 8 + len(f)
	}
	var stack [4096]byte
	buf := stack[:0]
	if n > len(stack) {
		buf = make([]byte, 0, n)
	}
	for _, f := range fields {
		buf = binary.BigEndian.AppendUint64(buf, uint64(len(f)))
		buf = append(buf, f...)
	}
	return sha256.Sum256(buf)
}
