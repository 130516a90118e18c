package server

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vakt-dev/vakt/exchange"
)

// churnYAML has n applications app-c0… that app-1 may call, each
// forwarding the claim pid under a header of its own (x-vakt-pid-<i>),
// so that an answer names the application it was made for; with a cache of
// a few entries.
func churnYAML(n int, cacheSize int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nvalidation: {cacheSize: %d}\napplications:\n  - {name: app-1, namespace: team-a}\n", cacheSize)
	for i := range n {
		fmt.Fprintf(&b, "  - name: app-c%d\n    namespace: team-b\n    forwardClaims: [{claim: pid, header: x-vakt-pid-%d}]\n    accessPolicy: {inbound: {rules: [{application: app-1, namespace: team-a}]}}\n", i, i)
	}
	return b.String()
}

// An answer is never another token's or another application's, however
// the caches churn under it: caches far smaller than the tokens and
// applications in use (every Put evicts; a token is verified again and
// again, two requests verify one token at once), tokens asked about for
// several applications in turn, by both faces at once; and with caches
// that keep everything. Run with -race.
func TestAnswersNeverAnotherTokens(t *testing.T) {
	for _, tt := range []struct {
		name      string
		cacheSize int
	}{{"churning", 4}, {"kept", 0}} {
		t.Run(tt.name, func(t *testing.T) {
			const apps, tokens = 5, 40
			cur, _, _, signer := ownTokenRuntime(t, churnYAML(apps, tt.cacheSize))
			svc := newAuthorizationService(cur, quiet, nil, nil)
			face := &httpAuthz{check: svc}
			aud := []any{}
			for i := range apps {
				aud = append(aud, fmt.Sprintf("dev-gcp:team-b:app-c%d", i))
			}
			now := time.Now()
			var toks []string
			for i := range tokens {
				tok, err := signer.Sign(exchange.IssuedTokenType, map[string]any{
					"iss": "http://127.0.0.1:8080", "sub": fmt.Sprint("user-", i), "aud": aud, "client_id": app1,
					"pid": fmt.Sprint("pid-", i), "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
				})
				if err != nil {
					t.Fatal(err)
				}
				toks = append(toks, tok)
			}
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(w), 1))
					for range 500 {
						i, a := r.IntN(tokens), r.IntN(apps)
						app := fmt.Sprintf("dev-gcp:team-b:app-c%d", a)
						want := map[string]string{"x-vakt-subject": fmt.Sprint("user-", i), fmt.Sprintf("x-vakt-pid-%d", a): fmt.Sprint("pid-", i)}
						var got map[string]string
						if w%2 == 0 {
							res, err := svc.Check(context.Background(), reqFor(app, toks[i]))
							if err != nil || res.GetOkResponse() == nil {
								t.Errorf("Check: %v %v", res, err)
								return
							}
							got = headerMap(res.GetOkResponse().GetHeaders())
						} else {
							req := httptest.NewRequest("GET", "/authz/"+app+"/read", nil)
							req.Header.Set("Authorization", "Bearer "+toks[i])
							rec := httptest.NewRecorder()
							face.ServeHTTP(rec, req)
							if rec.Code != http.StatusOK {
								t.Errorf("HTTP face: %d %s", rec.Code, rec.Body)
								return
							}
							got = map[string]string{}
							for name := range rec.Header() {
								got[strings.ToLower(name)] = rec.Header().Get(name)
							}
						}
						for h, v := range want {
							if got[h] != v {
								t.Errorf("token %d, app-c%d: %s is %q, want %q (answer %v)", i, a, h, got[h], v, got)
								return
							}
						}
						for h := range got {
							if strings.HasPrefix(h, "x-vakt-pid-") && want[h] == "" {
								t.Errorf("token %d, app-c%d: another application's %s (answer %v)", i, a, h, got)
								return
							}
						}
					}
				})
			}
			wg.Wait()
			st := cur.Load().answers.Stats()
			t.Logf("answers cache: %d entries, %d evictions", st.Entries, st.Evictions)
			if tt.cacheSize > 0 && st.Evictions == 0 {
				t.Error("the small cache never evicted: it churned nothing")
			}
		})
	}
}

// The answers cache holds no token's claims: an answer outliving its token
// in the verified-token cache (the caches evict apart) keeps its own bytes
// alone, so that the two caches together stay near validation.cacheMemory
// whatever tokens clients present: here tokens with an 11 KB claim no
// header carries, and answers without their metadata.
func TestAnswersHoldNoClaims(t *testing.T) {
	const tokens, budget = 3000, 4 << 20
	yaml := "issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nvalidation: {cacheMemory: 4Mi}\napplications:\n  - {name: app-1, namespace: team-a}\n" +
		"  - name: app-b\n    namespace: team-b\n    dynamicMetadata: false\n    accessPolicy: {inbound: {rules: [{application: app-1, namespace: team-a}]}}\n"
	cur, _, _, signer := ownTokenRuntime(t, yaml)
	svc := newAuthorizationService(cur, quiet, nil, nil)
	now := time.Now()
	pad := strings.Repeat("p", 11000)
	var reqs []*authv3.CheckRequest
	for i := range tokens {
		tok, err := signer.Sign(exchange.IssuedTokenType, map[string]any{
			"iss": "http://127.0.0.1:8080", "sub": fmt.Sprint("user-", i), "aud": appB, "client_id": app1,
			"pad": pad, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		})
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, reqFor(appB, tok))
	}
	before := heapStats()
	for _, r := range reqs {
		if res, err := svc.Check(context.Background(), r); err != nil || res.GetOkResponse() == nil {
			t.Fatalf("%v %v", res, err)
		}
	}
	after := heapStats()
	rt := cur.Load()
	st, _ := rt.Validator.CacheStats()
	ans := rt.answers.Stats()
	grew := int64(after.bytes) - int64(before.bytes)
	t.Logf("%d tokens and %d answers cached (%d and %d bytes counted); the heap grew %d bytes", st.Entries, ans.Entries, st.Bytes, ans.Bytes, grew)
	if ans.Entries <= st.Entries {
		t.Fatalf("%d answers, %d tokens: the answers did not outlive their tokens, and the test tests nothing", ans.Entries, st.Entries)
	}
	if grew > 2*budget {
		t.Errorf("the heap grew %d bytes for caches of %d: what the answers hold is not counted", grew, budget)
	}
	runtime.KeepAlive(reqs)
}
