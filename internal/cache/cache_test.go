package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func key(i int) Key {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	return sha256.Sum256(b[:])
}

const hour = int64(3600e9)

func TestGetPutExpire(t *testing.T) {
	c := New[string](100, 1<<20)
	k := key(1)
	c.Put(&k, "a", 10, 2*hour, hour)
	if v, ok := c.Get(&k, hour); !ok || v != "a" {
		t.Fatalf("get: %q %v", v, ok)
	}
	if _, ok := c.Get(&k, 2*hour); ok {
		t.Fatal("an expired entry was a hit")
	}
	c.Put(&k, "b", 10, 3*hour, 2*hour) // replaces
	if v, ok := c.Get(&k, 2*hour); !ok || v != "b" {
		t.Fatalf("replaced: %q %v", v, ok)
	}
	// Two hits, and one miss (the expired entry).
	if st := c.Stats(); st.Entries != 1 || st.Bytes != 10 || st.Hits != 2 || st.Misses != 1 {
		t.Fatalf("stats %+v", st)
	}
	c.Remove(&k)
	if _, ok := c.Get(&k, 2*hour); ok || c.Stats().Entries != 0 || c.Stats().Bytes != 0 {
		t.Fatalf("after remove: %+v", c.Stats())
	}
	// Already expired, or larger than a shard's share: not stored.
	c.Put(&k, "c", 10, hour, hour)
	c.Put(&k, "d", 1<<30, 3*hour, hour)
	if c.Stats().Entries != 0 {
		t.Fatal("stored what it should not")
	}
}

// Update changes a present entry in place (its size and expiry as they
// were), and nothing for an absent or removed key.
func TestUpdate(t *testing.T) {
	c := New[string](100, 1<<20)
	k, other := key(1), key(2)
	c.Put(&k, "a", 10, 2*hour, hour)
	c.Update(&k, func(v *string) { *v += "b" })
	c.Update(&other, func(*string) { t.Error("f called for an absent key") })
	if v, ok := c.Get(&k, hour); !ok || v != "ab" {
		t.Fatalf("updated: %q %v", v, ok)
	}
	if _, ok := c.Get(&k, 2*hour); ok {
		t.Fatal("Update changed the expiry")
	}
	if st := c.Stats(); st.Entries != 1 || st.Bytes != 10 {
		t.Fatalf("stats %+v", st)
	}
	c.Remove(&k)
	c.Update(&k, func(*string) { t.Error("f called for a removed key") })
}

// RemoveFunc drops exactly the entries f picks, in every shard, with their
// bytes, and their slots serve later entries.
func TestRemoveFunc(t *testing.T) {
	c := New[int](1000, 1<<20)
	if len(c.shards) < 2 {
		t.Fatalf("%d shards: the test needs several", len(c.shards))
	}
	const n = 200
	for i := range n {
		k := key(i)
		c.Put(&k, i, 10, 2*hour, hour)
	}
	if got := c.RemoveFunc(func(v *int) bool { return *v%3 == 0 }); got != (n+2)/3 {
		t.Fatalf("removed %d, want %d", got, (n+2)/3)
	}
	for i := range n {
		k := key(i)
		if _, ok := c.Get(&k, hour); ok == (i%3 == 0) {
			t.Fatalf("entry %d present: %v", i, ok)
		}
	}
	kept := n - (n+2)/3
	if st := c.Stats(); st.Entries != kept || st.Bytes != int64(10*kept) || st.Evictions != 0 {
		t.Fatalf("stats %+v, want %d entries", st, kept)
	}
	slots := 0
	for i := range c.shards {
		slots += len(c.shards[i].slots)
	}
	for i := n; i < n+(n+2)/3; i++ {
		k := key(i)
		c.Put(&k, i, 10, 2*hour, hour)
	}
	grown := 0
	for i := range c.shards {
		grown += len(c.shards[i].slots)
	}
	// The keys spread unevenly over the shards: most land in a freed slot.
	if grown-slots > (n+2)/6 {
		t.Fatalf("%d slots before, %d after refilling what was removed", slots, grown)
	}
	if got := c.RemoveFunc(func(*int) bool { return false }); got != 0 || c.Stats().Entries != n {
		t.Fatalf("removed %d with nothing picked; %d entries", got, c.Stats().Entries)
	}
}

// The bounds hold in entries and in bytes, whatever is put.
func TestBounds(t *testing.T) {
	for _, tt := range []struct {
		name       string
		maxEntries int
		maxBytes   int64
		size       int64
	}{
		{"entries", 1000, 1 << 30, 1},
		{"bytes", 1 << 20, 64 << 10, 100},
		{"both", 500, 32 << 10, 100},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := New[int](tt.maxEntries, tt.maxBytes)
			for i := range 50_000 {
				k := key(i)
				c.Put(&k, i, tt.size, 2*hour, hour)
			}
			st := c.Stats()
			if st.Entries > tt.maxEntries || st.Bytes > tt.maxBytes || st.Entries == 0 {
				t.Fatalf("%+v over %d entries, %d bytes", st, tt.maxEntries, tt.maxBytes)
			}
			if st.Evictions == 0 {
				t.Fatal("no evictions counted")
			}
		})
	}
}

// Expired entries go first: a full cache of expired entries takes new ones
// without dropping a live one.
func TestExpiredGoFirst(t *testing.T) {
	c := New[int](64, 1<<20) // one shard of 64
	live := key(-1)
	c.Put(&live, -1, 1, 10*hour, hour)
	for i := range 63 {
		k := key(i)
		c.Put(&k, i, 1, 2*hour, hour)
	}
	for i := 100; i < 163; i++ {
		k := key(i)
		c.Put(&k, i, 1, 10*hour, 3*hour) // the first 63 have expired
	}
	if _, ok := c.Get(&live, 3*hour); !ok {
		t.Fatal("a live entry was dropped while expired ones remained")
	}
}

// CLOCK keeps what is used: an entry hit between insertions survives a
// stream of one-off entries far larger than the cache.
func TestHotEntrySurvives(t *testing.T) {
	c := New[int](64, 1<<20)
	hot := key(-1)
	c.Put(&hot, -1, 1, 10*hour, hour)
	for i := range 10_000 {
		if _, ok := c.Get(&hot, hour); !ok {
			t.Fatalf("the hot entry was evicted after %d insertions", i)
		}
		k := key(i)
		c.Put(&k, i, 1, 10*hour, hour)
	}
}

func TestConcurrent(t *testing.T) {
	c := New[int](1000, 1<<20)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				k := key(g*100_000 + i%1500)
				if v, ok := c.Get(&k, hour); ok && v != g*100_000+i%1500 {
					t.Errorf("key %d holds %d", g*100_000+i%1500, v)
					return
				}
				c.Put(&k, g*100_000+i%1500, 7, 2*hour, hour)
				if i%97 == 0 {
					c.Remove(&k)
				}
			}
		}()
	}
	wg.Wait()
	if st := c.Stats(); st.Entries > 1000 || st.Bytes != int64(st.Entries)*7 {
		t.Fatalf("stats %+v", st)
	}
}

// BenchmarkPutFull is an insertion into a full cache of 262,144 entries:
// the eviction it needs is O(1) amortised, not a scan of the shard.
func BenchmarkPutFull(b *testing.B) {
	const n = 262_144
	c := New[int](n, 1<<40)
	for i := range n {
		k := key(i)
		c.Put(&k, i, 1, 10*hour, hour)
	}
	keys := make([]Key, 4096)
	for i := range keys {
		keys[i] = key(n + i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Put(&keys[i%len(keys)], i, 1, 10*hour, hour)
		i++
	}
}

func BenchmarkGetHit(b *testing.B) {
	c := New[int](1<<16, 1<<40)
	k := key(1)
	c.Put(&k, 1, 1, 10*hour, hour)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.Get(&k, hour); !ok {
			b.Fatal("miss")
		}
	}
}

// KeyOf separates its fields: moving bytes from one field to the next makes
// another key.
func TestKeyOf(t *testing.T) {
	seen := map[Key]string{}
	for _, f := range [][]string{{"T", "dev-gcp:team-b:app-b"}, {"Tdev-gcp:team-b:", "app-b"}, {"Tdev-gcp:team-b:app-b", ""}, {"", "Tdev-gcp:team-b:app-b"}, {"Tdev-gcp:team-b:app-b"}} {
		k := KeyOf(f...)
		if other, dup := seen[k]; dup {
			t.Fatalf("%q and %s share a key", f, other)
		}
		seen[k] = fmt.Sprintf("%q", f)
	}
	long := strings.Repeat("x", 10_000)
	if k, again := KeyOf(long, "a"), KeyOf(long, "a"); k == KeyOf(long+"a") || k != again {
		t.Fatal("long fields")
	}
	if n := testing.AllocsPerRun(100, func() { _ = KeyOf(strings.Repeat("t", 0)+"a.b.c", "dev:b:app") }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}
