package exchange

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/vakt-dev/vakt/authz"
)

// ReplayStore remembers client assertion ids. Claim records key until
// expires and reports whether it was new; an error means the store cannot
// tell, and the caller must refuse (fail closed).
type ReplayStore interface {
	Claim(ctx context.Context, key string, expires time.Time) (fresh bool, err error)
}

var (
	_ ReplayStore = (*MemoryReplay)(nil)
	_ ReplayStore = (*RedisReplay)(nil)
)

// DefaultReplayEntries bounds the in-memory store.
const DefaultReplayEntries = 1_000_000

// ErrReplayStoreFull means the in-memory store holds its maximum of
// unexpired ids; the exchange is refused rather than the id forgotten.
// It is an outage, not the client's fault.
var ErrReplayStoreFull error = Refuse(authz.ReasonReplayUnavailable, "", errors.New("replay store is full"))

// MemoryReplay is a ReplayStore for one replica.
type MemoryReplay struct {
	mu   sync.Mutex
	seen map[string]time.Time
	max  int
	now  func() time.Time
}

// NewMemoryReplay returns a store of at most max unexpired ids
// (DefaultReplayEntries when max <= 0); now is the clock (time.Now if nil).
func NewMemoryReplay(max int, now func() time.Time) *MemoryReplay {
	if max <= 0 {
		max = DefaultReplayEntries
	}
	if now == nil {
		now = time.Now
	}
	return &MemoryReplay{seen: make(map[string]time.Time), max: max, now: now}
}

// Claim implements ReplayStore.
func (m *MemoryReplay) Claim(_ context.Context, key string, expires time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if exp, ok := m.seen[key]; ok && now.Before(exp) {
		return false, nil
	}
	if len(m.seen) >= m.max {
		for k, exp := range m.seen {
			if !now.Before(exp) {
				delete(m.seen, k)
			}
		}
		if len(m.seen) >= m.max {
			return false, ErrReplayStoreFull
		}
	}
	m.seen[key] = expires
	return true, nil
}
