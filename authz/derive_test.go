package authz

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/internal/idptest"
)

// derivedFor is what the test derives: whose token, for which application.
type derivedFor struct{ sub, app string }

// Derive never answers a request with what was derived for another token
// or another application, however the cache churns under it: a cache far
// smaller than the tokens in use (every Put evicts, the same token is
// verified again and again, two requests verify one token at once), two
// applications taking turns on each token, tokens that expire and are
// verified anew, and a cache too small to keep any entry; and, in a cache
// that keeps its entries, six applications with answers of several sizes
// (one past the allowance), so that pairs are added, more fills, and
// everything is replaced. Run with -race: Get copies the slot under the
// read lock while Update writes it.
func TestDecisionDeriveChurn(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	p, _ := staticProvider(t, "a", "https://a.example", k)
	var aps []ApplicationPolicy
	for i := range 6 {
		aps = append(aps, ApplicationPolicy{ID: fmt.Sprintf("c:ns:a%d", i), Authentication: []Authentication{{Provider: "a"}}})
	}
	policy, err := NewPolicy(aps)
	if err != nil {
		t.Fatal(err)
	}
	var apps []*Application
	for _, ap := range aps {
		a, _ := policy.Application(ap.ID)
		apps = append(apps, a)
	}
	var now atomic.Int64
	start := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return start.Add(time.Duration(now.Load())) }
	for _, tt := range []struct {
		name    string
		entries int
		bytes   int64
		apps    int
		size    func(app int) int
	}{
		{"churning", 4, 0, 2, func(int) int { return 500 }},
		{"none kept", 4, 1, 2, func(int) int { return 500 }}, // every entry over the byte bound: never stored
		{"many applications", 0, 0, 6, func(app int) int { return []int{100, 250, 400, 550, 700, 3000}[app] }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, CacheSize: tt.entries, CacheBytes: tt.bytes, Now: clock})
			if err != nil {
				t.Fatal(err)
			}
			c := &Checker{Validator: v, Own: "vakt"}
			toks := make([]string, 12)
			for i := range toks {
				// Half the tokens expire within the run: the clock moves.
				exp := start.Add(time.Hour)
				if i%2 == 1 {
					exp = start.Add(time.Duration(i) * 10 * time.Millisecond)
				}
				toks[i] = "Bearer " + token(t, k, "https://a.example", exp, "sub", fmt.Sprintf("user-%02d", i))
			}
			var wg sync.WaitGroup
			var computed, reused, bad atomic.Int64
			for g := range 4 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(g), 1))
					for range 3000 {
						if g == 0 {
							now.Add(int64(50 * time.Microsecond))
						}
						ai := r.IntN(tt.apps)
						app := apps[ai]
						d := c.Check(context.Background(), CheckRequest{App: app, Method: "GET", Path: "/", Authorization: toks[r.IntN(len(toks))]})
						if !d.Allow {
							if d.Reason != ReasonTokenExpired {
								t.Errorf("%v (%v)", d.Reason, d.Err)
							}
							continue
						}
						fresh := false
						got := d.Derive(app, func() (any, int) {
							fresh = true
							return &derivedFor{d.Claims.Subject(), app.ID}, tt.size(ai)
						}).(*derivedFor)
						if fresh {
							computed.Add(1)
						} else {
							reused.Add(1)
						}
						if got.sub != d.Claims.Subject() || got.app != app.ID {
							bad.Add(1)
						}
					}
				})
			}
			wg.Wait()
			t.Logf("%d computed, %d reused, %d wrong", computed.Load(), reused.Load(), bad.Load())
			if bad.Load() != 0 {
				t.Fatalf("%d answers derived for another token or application", bad.Load())
			}
			if tt.bytes == 1 && reused.Load() != 0 {
				t.Fatalf("%d values reused with no entry kept", reused.Load())
			}
		})
	}
}
