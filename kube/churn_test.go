package kube

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/server"
)

// One namespace patching its resource as fast as the API server takes it
// costs the others nothing they would notice: it is slowed to its
// namespace's rate, another team's changes still apply at once, and that
// team's tokens stay in the verified-token cache (the cache outlives every
// policy change).
func TestKubeChurn(t *testing.T) {
	churn := 15 * time.Second
	if testing.Short() {
		churn = 5 * time.Second
	}
	e := newKubeEnv(t)
	e.namespace("noisy")
	e.application(appBAllowsApp1)
	e.until(5*time.Second, "app-b never served", func() bool { return e.status() == 200 })

	// app-b's callers: tokens signed once, Checked over and over.
	k := e.signer.Keys()[0]
	var tokens []string
	for i := range 50 {
		tokens = append(tokens, idptest.Sign(t, &idptest.Key{ID: k.ID, Alg: k.Alg, Private: k.Private}, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "at+jwt"}, map[string]any{
			"iss": "http://127.0.0.1:8080", "sub": fmt.Sprintf("user-%d", i), "aud": "dev-gcp:team-b:app-b", "client_id": "dev-gcp:team-a:app-1",
			"scope": "read", "exp": time.Now().Add(time.Hour).Unix(),
		}))
	}
	check := func(tok string) int {
		res, err := e.check.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			ContextExtensions: map[string]string{server.ContextExtensionApp: "dev-gcp:team-b:app-b"},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/read", Headers: map[string]string{"authorization": "Bearer " + tok},
			}},
		}})
		if err != nil {
			t.Errorf("Check: %v", err)
			return 0
		}
		if d := res.GetDeniedResponse(); d != nil {
			return int(d.GetStatus().GetCode())
		}
		return 200
	}
	for _, tok := range tokens {
		check(tok) // each verified once, and cached
	}
	stats := func() (hits, misses uint64) {
		st, _ := e.cur.Load().Validator.CacheStats()
		return st.Hits, st.Misses
	}
	hits0, misses0 := stats()

	ctx, stop := context.WithTimeout(context.Background(), churn)
	defer stop()
	var wg sync.WaitGroup
	var patches atomic.Int64
	e.resource("noisy", "app-n", `{"routes":[{"path":"/0","scopes":["read"]}]}`)
	wg.Go(func() {
		for i := 1; ctx.Err() == nil; i++ {
			patch := fmt.Sprintf(`{"spec":{"routes":[{"path":"/%d","scopes":["read"]}]}}`, i)
			if _, err := e.apps.Namespace("noisy").Patch(ctx, "app-n", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err == nil {
				patches.Add(1)
			}
		}
	})
	var checks atomic.Int64
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			check(tokens[i%len(tokens)])
			checks.Add(1)
		}
	})
	// Meanwhile team-b changes its policy, back and forth: each change is
	// enforced at once.
	var slowest time.Duration
	slowed := false
	for i := 0; ctx.Err() == nil; i++ {
		if st, ok := e.state("noisy", "app-n"); ok && st.Reason == ReasonSlowed && st.Served > 0 {
			slowed = true
		}
		spec, want := appBAllowsNone, 403
		if i%2 == 1 {
			spec, want = appBAllowsApp1, 200
		}
		start := time.Now()
		e.application(spec)
		e.until(5*time.Second, "team-b's change was held off by another namespace's churn", func() bool { return check(tokens[0]) == want })
		slowest = max(slowest, time.Since(start))
		time.Sleep(500 * time.Millisecond)
	}
	wg.Wait()
	hits, misses := stats()
	hits, misses = hits-hits0, misses-misses0
	t.Logf("%d patches of noisy/app-n, %d Checks of team-b's tokens: %d hits, %d misses; team-b's slowest change enforced in %v",
		patches.Load(), checks.Load(), hits, misses, slowest.Round(time.Millisecond))
	if ratio := float64(hits) / float64(hits+misses); hits+misses == 0 || ratio < 0.99 {
		t.Errorf("team-b's tokens: %d hits and %d misses in the cache during the churn, want above 99%% hits", hits, misses)
	}
	if slowest > 2*time.Second {
		t.Errorf("team-b's slowest change took %v to be enforced", slowest)
	}
	// The noisy namespace was slowed, and said so.
	if !slowed {
		t.Errorf("noisy/app-n, patched %d times, was never seen Slowed with an earlier generation serving", patches.Load())
	}
}
