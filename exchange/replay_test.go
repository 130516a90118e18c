package exchange

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/redistest"
)

func TestMemoryReplay(t *testing.T) {
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	m := NewMemoryReplay(MemoryReplayConfig{MaxEntries: 2, MaxPerClient: 2, Now: clock.Now})
	ctx := context.Background()
	claim := func(client, jti string, ttl time.Duration) (bool, error) {
		return m.Claim(ctx, client, jti, clock.Now().Add(ttl))
	}
	if ok, err := claim("a", "j1", time.Minute); !ok || err != nil {
		t.Fatalf("first: %v %v", ok, err)
	}
	if ok, _ := claim("a", "j1", time.Minute); ok {
		t.Fatal("replay accepted")
	}
	if ok, _ := claim("b", "j1", time.Minute); !ok {
		t.Fatal("another client's jti refused")
	}
	// Full of unexpired ids: refuse rather than forget one.
	if _, err := claim("c", "j1", time.Minute); !errors.Is(err, ErrReplayStoreFull) {
		t.Fatalf("full store: %v", err)
	}
	clock.Advance(time.Minute)
	if ok, err := claim("c", "j1", time.Minute); !ok || err != nil {
		t.Fatalf("after expiry: %v %v", ok, err)
	}
	// An expired id may come again: its assertion can no longer be used.
	if ok, _ := claim("a", "j1", time.Minute); !ok {
		t.Fatal("expired id still remembered")
	}
	// The client and the jti are separate fields: ("a", "bj") is not ("ab", "j").
	clock.Advance(2 * time.Minute)
	if ok, _ := claim("ab", "j", time.Minute); !ok {
		t.Fatal("first")
	}
	if ok, _ := claim("a", "bj", time.Minute); !ok {
		t.Fatal("a different client's jti was taken for a replay")
	}
}

// One client filling its share does not stop another: the quota refuses it
// alone, and its ids expire on time.
func TestMemoryReplayFairness(t *testing.T) {
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	m := NewMemoryReplay(MemoryReplayConfig{MaxEntries: 10_000, Now: clock.Now}) // 1,000 per client
	ctx := context.Background()
	for i := range 1000 {
		if ok, err := m.Claim(ctx, "greedy", fmt.Sprint(i), clock.Now().Add(100*time.Second)); !ok || err != nil {
			t.Fatalf("%d: %v %v", i, ok, err)
		}
	}
	if _, err := m.Claim(ctx, "greedy", "more", clock.Now().Add(100*time.Second)); !errors.Is(err, ErrReplayQuota) {
		t.Fatalf("past the share: %v", err)
	}
	if ok, err := m.Claim(ctx, "other", "j", clock.Now().Add(100*time.Second)); !ok || err != nil {
		t.Fatalf("another client: %v %v", ok, err)
	}
	clock.Advance(101 * time.Second)
	if ok, err := m.Claim(ctx, "greedy", "more", clock.Now().Add(100*time.Second)); !ok || err != nil {
		t.Fatalf("after its ids expired: %v %v", ok, err)
	}
	if n := m.Len(); n != 1 {
		t.Fatalf("%d ids remembered, want 1", n)
	}
}

// An id with a lifetime longer than the wheel's span stays for a later
// turn; an id dropped early would reopen a replay window.
func TestMemoryReplayLongLifetime(t *testing.T) {
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	m := NewMemoryReplay(MemoryReplayConfig{Now: clock.Now})
	ctx := context.Background()
	if ok, _ := m.Claim(ctx, "c", "long", clock.Now().Add(10*time.Minute)); !ok {
		t.Fatal("first")
	}
	for range 9 {
		clock.Advance(time.Minute)
		if ok, _ := m.Claim(ctx, "c", "long", clock.Now().Add(time.Minute)); ok {
			t.Fatalf("replay accepted at %v", clock.Now())
		}
	}
	clock.Advance(61 * time.Second)
	if ok, _ := m.Claim(ctx, "c", "long", clock.Now().Add(time.Minute)); !ok {
		t.Fatal("not forgotten after expiry")
	}
}

// What one id costs, measured, is what ReplayEntryBytes says, within a third.
func TestMemoryReplayEntrySize(t *testing.T) {
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	const n = 100_000
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	m := NewMemoryReplay(MemoryReplayConfig{MaxEntries: n, MaxPerClient: n, Now: clock.Now})
	for i := range n {
		_, _ = m.Claim(context.Background(), "dev-gcp:team-a:app-1", uuidLike(i), clock.Now().Add(time.Duration(i%120)*time.Second+time.Second))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes per id", per)
	if per > ReplayEntryBytes*1.33 || per < ReplayEntryBytes*0.5 {
		t.Fatalf("%.0f bytes per id, ReplayEntryBytes says %d", per, ReplayEntryBytes)
	}
	runtime.KeepAlive(m)
}

func uuidLike(i int) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i) }

// BenchmarkMemoryReplayFull is a claim on a store holding a million ids, a
// thousand expiring each second: no scan, whatever the size.
func BenchmarkMemoryReplayFull(b *testing.B) {
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	m := NewMemoryReplay(MemoryReplayConfig{MaxEntries: 1_000_000, MaxPerClient: 1_000_000, Now: clock.Now})
	ctx := context.Background()
	for i := range 1_000_000 {
		_, _ = m.Claim(ctx, "c", uuidLike(i), clock.Now().Add(time.Duration(1+i%120)*time.Second))
	}
	b.ReportAllocs()
	i := 1_000_000
	for b.Loop() {
		if i%1000 == 0 {
			clock.Advance(time.Second)
		}
		_, _ = m.Claim(ctx, "c", uuidLike(i), clock.Now().Add(120*time.Second))
		i++
	}
}

func TestRedisReplay(t *testing.T) {
	addr := redistest.Start(t)
	ctx := context.Background()
	// Two replicas, one Redis: what one has seen, the other refuses.
	a := NewRedisReplay(RedisOptions{Address: addr}, nil)
	b := NewRedisReplay(RedisOptions{Address: addr}, nil)
	defer a.Close()
	defer b.Close()
	exp := time.Now().Add(90 * time.Second)
	if ok, err := a.Claim(ctx, "app-1", "j1", exp); !ok || err != nil {
		t.Fatalf("first: %v %v", ok, err)
	}
	if ok, err := b.Claim(ctx, "app-1", "j1", exp); ok || err != nil {
		t.Fatalf("replay on another replica: %v %v", ok, err)
	}
	if ok, err := b.Claim(ctx, "app-2", "j1", exp); !ok || err != nil {
		t.Fatalf("another client's jti: %v %v", ok, err)
	}
	// Redis forgets the id when the assertion expires.
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	keys, err := c.Keys(ctx, "vakt:*:jti:*").Result()
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys %v %v", keys, err)
	}
	ttl, err := c.TTL(ctx, keys[0]).Result()
	if err != nil || ttl <= 80*time.Second || ttl > 90*time.Second {
		t.Fatalf("ttl %v %v", ttl, err)
	}
}

func TestRedisReplayDown(t *testing.T) {
	addr := redistest.Start(t)
	r := NewRedisReplay(RedisOptions{Address: addr}, nil)
	defer r.Close()
	ctx := context.Background()
	if _, err := r.Claim(ctx, "c", "k1", time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// Stop the server: claims fail (and the caller refuses), quickly.
	c := redis.NewClient(&redis.Options{Addr: addr})
	_ = c.Shutdown(ctx).Err()
	c.Close()
	start := time.Now()
	if ok, err := r.Claim(ctx, "c", "k2", time.Now().Add(time.Minute)); err == nil || ok {
		t.Fatalf("with Redis down: %v %v", ok, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v to fail", d)
	}
}

// One client's share is bounded in Redis too, without a scan: its expired
// ids are trimmed by score on every claim.
func TestRedisReplayFairness(t *testing.T) {
	addr := redistest.Start(t)
	clock := idptest.NewClock(time.Now())
	r := NewRedisReplay(RedisOptions{Address: addr, MaxPerClient: 3}, clock.Now)
	defer r.Close()
	ctx := context.Background()
	for i := range 3 {
		if ok, err := r.Claim(ctx, "greedy", fmt.Sprint(i), clock.Now().Add(30*time.Second)); !ok || err != nil {
			t.Fatalf("%d: %v %v", i, ok, err)
		}
	}
	if _, err := r.Claim(ctx, "greedy", "3", clock.Now().Add(30*time.Second)); !errors.Is(err, ErrReplayQuota) {
		t.Fatalf("past the share: %v", err)
	}
	if ok, err := r.Claim(ctx, "other", "0", clock.Now().Add(30*time.Second)); !ok || err != nil {
		t.Fatalf("another client: %v %v", ok, err)
	}
	clock.Advance(31 * time.Second) // the ids' scores are past: trimmed
	if ok, err := r.Claim(ctx, "greedy", "3", clock.Now().Add(30*time.Second)); !ok || err != nil {
		t.Fatalf("after expiry: %v %v", ok, err)
	}
}

// An id claimed and released over and over (a valid assertion sent again
// and again with a bad subject token) does not grow the expiry wheel.
func TestMemoryReplayReleaseDoesNotGrow(t *testing.T) {
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	m := NewMemoryReplay(MemoryReplayConfig{MaxEntries: 10, Now: clock.Now})
	ctx := context.Background()
	for range 100_000 {
		if ok, err := m.Claim(ctx, "c", "j", clock.Now().Add(time.Minute)); !ok || err != nil {
			t.Fatalf("claim: %v %v", ok, err)
		}
		_ = m.Release(ctx, "c", "j")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.refs > 5000 {
		t.Fatalf("%d references on the wheel after 100,000 released claims", m.refs)
	}
	total := 0
	for i := range m.wheel {
		total += cap(m.wheel[i])
	}
	if total > 20_000 {
		t.Fatalf("the wheel holds room for %d references", total)
	}
}
