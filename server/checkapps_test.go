package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/idptest"
)

// appsYAMLMeta is checkYAML with n more applications (app-c0…) that app-1
// may call, with no routes; with meta false, without dynamic metadata.
func appsYAMLMeta(n int, meta bool) string {
	var b strings.Builder
	md := ""
	if !meta {
		md = "    dynamicMetadata: false\n"
	}
	for i := range n {
		b.WriteString("  - name: app-c" + string(rune('0'+i)) + "\n    namespace: team-b\n" + md + "    forwardClaims:\n      - {claim: pid, header: x-vakt-pid}\n    accessPolicy:\n      inbound:\n        rules:\n          - application: app-1\n            namespace: team-a\n")
	}
	y := checkYAML
	if !meta {
		y = strings.Replace(y, "    hosts: [app-b.example.com]\n", "    hosts: [app-b.example.com]\n"+md, 1)
	}
	return strings.Replace(y, "  - name: api\n", b.String()+"  - name: api\n", 1)
}

func appC(i int) string { return "dev-gcp:team-b:app-c" + string(rune('0'+i)) }

// multiAppCheck is the Check service with n extra applications and a vakt
// token (ES256) whose aud lists app-b and every extra one.
func multiAppCheck(t testing.TB, n int, meta bool) (*authorizationService, string) {
	cur, _, key, _ := ownTokenRuntime(t, appsYAMLMeta(n, meta))
	now := time.Now()
	aud := []any{appB}
	for i := range n {
		aud = append(aud, appC(i))
	}
	claims := map[string]any{
		"iss": "http://127.0.0.1:8080", "sub": "Qx1aJzPzH3yH0bGzW8CCCq1LzqRIqTQwzEL2hrm3mCU=", "aud": aud,
		"client_id": app1, "idp": "https://idporten.example/", "acr": "idporten-loa-high", "pid": "12345678901",
		"scope": "openid read:users", "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"jti": "5c7a1d1e-6b1f-4e5e-9a53-2f7a3c8d9b10",
	}
	tok := idptest.Sign(t, &idptest.Key{ID: key.ID, Alg: key.Alg, Private: key.Private}, "ES256",
		map[string]any{"alg": "ES256", "kid": key.ID, "typ": "at+jwt"}, claims)
	return newAuthorizationService(cur, quiet, NewMetrics(), nil), tok
}

func reqFor(app, tok string) *authv3.CheckRequest {
	r := envoyCheck("/read", "Bearer "+tok)
	r.Attributes.ContextExtensions[ContextExtensionApp] = app
	return r
}

// BenchmarkCheckCachedTwoApps: one token alternating between two
// applications, both answers cached.
func BenchmarkCheckCachedTwoApps(b *testing.B) {
	svc, tok := multiAppCheck(b, 1, true)
	ctx := context.Background()
	reqs := []*authv3.CheckRequest{reqFor(appB, tok), reqFor(appC(0), tok)}
	for _, r := range reqs {
		if res, err := svc.Check(ctx, r); err != nil || res.GetStatus().GetCode() != int32(codes.OK) {
			b.Fatalf("%v %v", res, err)
		}
	}
	c := newCodec()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		res, err := svc.checkWire(ctx, reqs[i&1])
		i++
		if err != nil {
			b.Fatal(err)
		}
		if _, ok := res.(*preMarshalled); !ok {
			b.Fatalf("%T", res)
		}
		wire, _ := c.Marshal(res)
		wire.Free()
	}
}

// A token alternating between applications costs no allocation once their
// answers are cached, however many there are (each is an entry of the
// answers cache), and each answer is its application's: the one a service
// that never saw the others makes.
func TestCheckCachedAppsAllocs(t *testing.T) {
	for _, tt := range []struct {
		n    int
		meta bool
	}{
		{1, true}, {2, true}, {2, false}, {3, false}, {4, false}, {8, true},
	} {
		svc, tok := multiAppCheck(t, tt.n, tt.meta)
		ctx := context.Background()
		reqs := []*authv3.CheckRequest{reqFor(appB, tok)}
		for i := range tt.n {
			reqs = append(reqs, reqFor(appC(i), tok))
		}
		for range 2 {
			for _, r := range reqs {
				res, err := svc.checkWire(ctx, r)
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := res.(*preMarshalled); !ok {
					t.Fatalf("%T", res)
				}
			}
		}
		// The same runtime without the answers cache: every answer made
		// anew.
		rt := *svc.cur.Load()
		rt.answers = nil
		uncached := &Current{}
		uncached.Store(&rt)
		fresh := newAuthorizationService(uncached, quiet, nil, nil)
		for _, r := range reqs {
			got, _ := svc.checkWire(ctx, r)
			want, _ := fresh.checkWire(ctx, r)
			if !proto.Equal(got.(*preMarshalled).message(), want.(*preMarshalled).message()) {
				t.Fatalf("%s: the answer is not its own", r.Attributes.ContextExtensions[ContextExtensionApp])
			}
		}
		i := 0
		allocs := testing.AllocsPerRun(100, func() {
			_, _ = svc.checkWire(ctx, reqs[i%len(reqs)])
			i++
		})
		t.Logf("metadata %v, %d apps: %.1f allocs per Check", tt.meta, tt.n+1, allocs)
		if allocs != 0 {
			t.Errorf("%d apps: %.1f allocs per cached Check", tt.n+1, allocs)
		}
	}
}

// cachedTokenHeapApps is cachedTokenHeap with each token Checked for app-b
// and n more applications (its aud lists them all).
func cachedTokenHeapApps(t *testing.T, tokens, n int, meta bool, pad int) perToken {
	t.Helper()
	// Caches that keep every token, however large: what is measured is
	// what a token costs, not what the bounds let in (a shard over its
	// share of 32 MiB evicts one of 2 000 11 KB tokens now and then).
	cur, rt, _, signer := ownTokenRuntime(t, appsYAMLMeta(n, meta)+"validation: {cacheMemory: 1Gi}\n")
	svc := newAuthorizationService(cur, quiet, nil, nil)
	now := time.Now()
	aud := []any{appB}
	for i := range n {
		aud = append(aud, appC(i))
	}
	var reqs []*authv3.CheckRequest
	for i := range tokens {
		tok, err := signer.Sign(exchange.IssuedTokenType, map[string]any{
			"iss": "http://127.0.0.1:8080", "sub": fmt.Sprintf("user-%07d", i), "aud": aud, "client_id": app1,
			"idp": "https://idporten.example/", "acr": "idporten-loa-high", "pid": fmt.Sprintf("%011d", i) + strings.Repeat("p", pad),
			"scope": "openid read:users", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
			"jti": fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i),
		})
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, reqFor(appB, tok))
		for j := range n {
			reqs = append(reqs, reqFor(appC(j), tok))
		}
	}
	answers := tokens * (n + 1)
	if pad > maxAnswer {
		answers = 0 // past maxAnswer, made on every Check
	}
	return heapPerToken(t, svc, rt, reqs, tokens, answers)
}

// The caches count a token and its answers at no less than they cost when
// the token is Checked for several applications: answers just past an
// allocation size class (the most the allocator rounds up), one to four
// of them, and answers too large to keep.
func TestCachedTokenHeapApps(t *testing.T) {
	for _, tt := range []struct {
		n    int // applications besides app-b
		meta bool
		pad  int // bytes added to the forwarded claim
	}{
		{0, false, 8000}, {0, true, 8000}, {1, false, 550}, {1, false, 677}, {1, false, 681}, {2, false, 294}, {2, false, 358}, {3, false, 166}, {3, false, 198}, {1, true, 0}, {2, true, 0},
	} {
		t.Run(fmt.Sprintf("%d apps, metadata %v, pad %d", tt.n+1, tt.meta, tt.pad), func(t *testing.T) {
			m := cachedTokenHeapApps(t, 2000, tt.n, tt.meta, tt.pad)
			t.Logf("%.0f bytes, %.1f objects, %.0f scanned; %d counted", m.bytes, m.objects, m.scan, m.counted)
			if float64(m.counted) < m.bytes {
				t.Errorf("counted %d bytes per entry, measured %.0f", m.counted, m.bytes)
			}
		})
	}
}
