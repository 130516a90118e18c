package exchange

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/internal/cache"
)

// ReplayStore remembers client assertion ids. Claim records the client's jti
// until expires and reports whether it was new; an error means the store
// cannot tell, and the caller must refuse (fail closed). Release forgets a
// jti Claim recorded, for an exchange refused after it: the assertion was
// not used, and its client may send it again.
type ReplayStore interface {
	Claim(ctx context.Context, client, jti string, expires time.Time) (fresh bool, err error)
	Release(ctx context.Context, client, jti string) error
}

var (
	_ ReplayStore = (*MemoryReplay)(nil)
	_ ReplayStore = (*RedisReplay)(nil)
)

// Bounds of the in-memory store.
const (
	// DefaultReplayMemory bounds it in bytes.
	DefaultReplayMemory = 64 << 20
	// ReplayEntryBytes is what one remembered id costs, measured
	// (TestMemoryReplayEntrySize): the index entry, its client and its
	// place in the expiry wheel.
	ReplayEntryBytes = 160
	// wheelSeconds is the expiry wheel's span: longer than an assertion
	// can live (MaxAssertionLifetime and leeways), so that nearly every id
	// is dropped on the wheel's first turn after it expires.
	wheelSeconds = 256
)

// ErrReplayStoreFull means the in-memory store holds its maximum of
// unexpired ids; the exchange is refused rather than the id forgotten.
// It is an outage, not the client's fault.
var ErrReplayStoreFull error = Refuse(authz.ReasonReplayUnavailable, "", errors.New("replay store is full"))

// ErrReplayQuota means the client holds its share of the store: it sends
// more assertions than the store keeps for any one client, and waits until
// some expire. The other clients are not affected.
var ErrReplayQuota error = Refuse(authz.ReasonAssertionQuota, "", errors.New("the client holds its share of the replay store"))

// MemoryReplayConfig bounds a MemoryReplay.
type MemoryReplayConfig struct {
	// MaxEntries is how many unexpired ids it keeps; from MaxBytes when
	// zero (DefaultReplayMemory when that is zero too).
	MaxEntries int
	MaxBytes   int64
	// MaxPerClient is how many of them one client may hold: a tenth of
	// MaxEntries when zero, so that one client cannot crowd the others out.
	MaxPerClient int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// MemoryReplay is a ReplayStore for one replica. Ids expire on a wheel of
// one-second buckets, so that dropping them is O(1) amortised: a claim
// never scans the store, however full.
type MemoryReplay struct {
	mu        sync.Mutex
	seen      map[cache.Key]replayEntry
	wheel     [wheelSeconds][]wheelRef
	refs      int    // references on the wheel, live or stale
	gen       uint64 // claims so far
	swept     int64  // the last second whose bucket was emptied
	perClient map[string]int
	max       int
	maxClient int
	now       func() time.Time
}

type replayEntry struct {
	expires int64  // unix nanoseconds
	sec     int64  // the second of its bucket: expires, rounded up
	gen     uint64 // the claim's number: a reference to an older claim of the same id is stale
	client  string
}

type wheelRef struct {
	key cache.Key
	gen uint64
}

// NewMemoryReplay returns an in-memory store bounded as cfg says.
func NewMemoryReplay(cfg MemoryReplayConfig) *MemoryReplay {
	m := &MemoryReplay{seen: map[cache.Key]replayEntry{}, perClient: map[string]int{}, max: cfg.MaxEntries, maxClient: cfg.MaxPerClient, now: cfg.Now}
	if m.max <= 0 {
		b := cfg.MaxBytes
		if b <= 0 {
			b = DefaultReplayMemory
		}
		m.max = max(int(b/ReplayEntryBytes), 1)
	}
	if m.maxClient <= 0 {
		m.maxClient = max(m.max/10, 1)
	}
	if m.now == nil {
		m.now = time.Now
	}
	return m
}

// Claim implements ReplayStore.
func (m *MemoryReplay) Claim(_ context.Context, client, jti string, expires time.Time) (bool, error) {
	key := cache.KeyOf(client, jti)
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.sweep(now)
	if e, ok := m.seen[key]; ok {
		if now.UnixNano() < e.expires {
			return false, nil
		}
		m.forget(key, e)
	}
	if len(m.seen) >= m.max {
		return false, ErrReplayStoreFull
	}
	if m.perClient[client] >= m.maxClient {
		return false, ErrReplayQuota
	}
	exp := expires.UnixNano()
	sec := (exp + 999_999_999) / 1e9
	m.gen++
	m.seen[key] = replayEntry{expires: exp, sec: sec, gen: m.gen, client: client}
	m.perClient[client]++
	b := &m.wheel[sec%wheelSeconds]
	*b = append(*b, wheelRef{key: key, gen: m.gen})
	m.refs++
	if m.refs > 2*len(m.seen)+4096 {
		m.compact()
	}
	return true, nil
}

// compact drops the wheel's stale references (ids released, or claimed
// again), which would otherwise pile up between turns: an id claimed and
// released over and over must not grow the wheel. It runs once the stale
// references outnumber the live ones, so its cost is amortised over them.
func (m *MemoryReplay) compact() {
	m.refs = 0
	for i := range m.wheel {
		b := &m.wheel[i]
		kept := (*b)[:0]
		for _, r := range *b {
			if e, ok := m.seen[r.key]; ok && e.gen == r.gen {
				kept = append(kept, r)
			}
		}
		clear((*b)[len(kept):])
		if cap(kept) > 2*len(kept)+64 {
			kept = slices.Clone(kept) // give back what a burst took
		}
		*b = kept
		m.refs += len(kept)
	}
}

// Release implements ReplayStore.
func (m *MemoryReplay) Release(_ context.Context, client, jti string) error {
	key := cache.KeyOf(client, jti)
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.seen[key]; ok {
		m.forget(key, e)
	}
	return nil
}

// sweep empties the buckets of every second up to now: each id is dropped
// once, in the turn of the wheel its second comes round in; one due on a
// later turn stays.
func (m *MemoryReplay) sweep(now time.Time) {
	sec := now.Unix()
	if m.swept == 0 {
		m.swept = sec - 1
	}
	from := m.swept + 1
	if sec-from >= wheelSeconds {
		from = sec - wheelSeconds + 1
	}
	for s := from; s <= sec; s++ {
		b := &m.wheel[s%wheelSeconds]
		kept := (*b)[:0]
		for _, r := range *b {
			e, ok := m.seen[r.key]
			switch {
			case !ok || e.gen != r.gen: // claimed again since, or gone
			case e.sec <= sec:
				m.forget(r.key, e)
			default:
				kept = append(kept, r) // a later turn
			}
		}
		clear((*b)[len(kept):])
		m.refs -= len(*b) - len(kept)
		if cap(kept) > 2*len(kept)+64 {
			kept = slices.Clone(kept)
		}
		*b = kept
	}
	if sec > m.swept {
		m.swept = sec
	}
}

func (m *MemoryReplay) forget(key cache.Key, e replayEntry) {
	delete(m.seen, key)
	if n := m.perClient[e.client] - 1; n > 0 {
		m.perClient[e.client] = n
	} else {
		delete(m.perClient, e.client)
	}
}

// Len returns the number of ids remembered.
func (m *MemoryReplay) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.seen)
}
