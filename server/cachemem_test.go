package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/idptest"
)

// perToken is what each cached token costs: live heap, heap objects, heap
// bytes the collector scans for pointers, and the bytes the cache counts.
type perToken struct {
	bytes, objects, scan float64
	counted              int64
}

// ownTokenRuntime is the Runtime of yaml (its AUTH0 an issuer never
// asked), current in cur, with a new ES256 key for vakt's own tokens, and
// that key and its signer.
func ownTokenRuntime(t testing.TB, yaml string) (*Current, *Runtime, *exchange.SigningKey, *exchange.Signer) {
	t.Helper()
	cfg, err := config.Load([]byte(strings.ReplaceAll(yaml, "AUTH0", "https://auth0.example")), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := exchange.GenerateSigningKey("ES256")
	signer, _ := exchange.NewSigner(key)
	rt, err := NewRuntime(context.Background(), cfg, Options{Logger: quiet, Signer: signer, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{})})
	if err != nil {
		t.Fatal(err)
	}
	cur := &Current{}
	cur.Store(rt)
	return cur, rt, key, signer
}

// cachedTokenHeap Checks n distinct tokens like the load benchmark's (ES256,
// an allowed GET /read to app-b) once each, and returns the live heap and
// the heap objects each cached token adds: its verified-token cache entry
// and the Check answer derived from it.
func cachedTokenHeap(t *testing.T, n int, yaml string) perToken {
	t.Helper()
	cur, rt, _, signer := ownTokenRuntime(t, yaml)
	svc := newAuthorizationService(cur, quiet, nil, nil)
	reqs := loadRequests(t, signer, n)
	t.Logf("a %d-byte token", len(reqs[0].Attributes.Request.Http.Headers["authorization"])-len("Bearer "))
	return heapPerToken(t, svc, rt, reqs, n, n)
}

// loadRequests are n allowed GET /read to app-b, each with a token of its
// own like the load benchmark's (ES256, signed by signer).
func loadRequests(t testing.TB, signer *exchange.Signer, n int) []*authv3.CheckRequest {
	t.Helper()
	now := time.Now()
	reqs := make([]*authv3.CheckRequest, n)
	for i := range reqs {
		tok, err := signer.Sign(exchange.IssuedTokenType, map[string]any{
			"iss": "http://127.0.0.1:8080", "sub": fmt.Sprintf("user-%07d", i), "aud": appB, "client_id": app1,
			"idp": "https://idporten.example/", "acr": "idporten-loa-high", "pid": fmt.Sprintf("%011d", i),
			"scope": "openid read:users", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
			"jti": fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i),
		})
		if err != nil {
			t.Fatal(err)
		}
		reqs[i] = envoyCheck("/read", "Bearer "+tok)
	}
	return reqs
}

// heapPerToken Checks every request once, each an allow of one of tokens
// tokens (answers of them kept), and returns what the live heap grew by per
// token, and what the caches count per token and its answers.
func heapPerToken(t *testing.T, svc *authorizationService, rt *Runtime, reqs []*authv3.CheckRequest, tokens, answers int) perToken {
	t.Helper()
	before := heapStats()
	sizes := map[int]bool{}
	for _, r := range reqs {
		res, err := svc.checkWire(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		pm, ok := res.(*preMarshalled)
		if !ok {
			t.Fatalf("answer %T, want the pre-marshalled allow", res)
		}
		sizes[len(pm.bytes)] = true
	}
	after := heapStats()
	t.Logf("answers of %v bytes", slices.Sorted(maps.Keys(sizes)))
	st, _ := rt.Checker.Validator.CacheStats()
	ans := rt.answers.Stats()
	if st.Entries != tokens || ans.Entries != answers {
		t.Fatalf("%d tokens and %d answers cached, want %d and %d", st.Entries, ans.Entries, tokens, answers)
	}
	runtime.KeepAlive(reqs)
	runtime.KeepAlive(svc)
	return perToken{
		bytes:   float64(after.bytes-before.bytes) / float64(tokens),
		objects: float64(after.objects-before.objects) / float64(tokens),
		scan:    float64(after.scan-before.scan) / float64(tokens),
		counted: (st.Bytes + ans.Bytes) / int64(tokens),
	}
}

// heapNow is the live heap after a collection: bytes, objects, and the
// bytes the collector scans for pointers.
type heapNow struct{ bytes, objects, scan uint64 }

func heapStats() heapNow {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	s := []metrics.Sample{{Name: "/gc/scan/heap:bytes"}}
	metrics.Read(s)
	return heapNow{bytes: m.HeapAlloc, objects: m.HeapObjects, scan: s[0].Value.Uint64()}
}

// A cached token costs at most 2 KiB of live heap with its Check answer
// (the claims in dynamic_metadata included), in four objects (the claims
// and their buffer, the answer and its bytes), not one object per claim:
// bounds on what users see, measured at 1 885 and 1 522 bytes (4.1
// objects) with room for another Go's allocator. What the collector scans
// is logged, not bounded: the GC share it makes is test/load's to measure.
// The caches count a token and its answer at no less than they cost, and
// at no more than a quarter above.
func TestCachedTokenHeap(t *testing.T) {
	noMetadata := strings.Replace(checkYAML, "    hosts: [app-b.example.com]\n", "    hosts: [app-b.example.com]\n    dynamicMetadata: false\n", 1)
	if noMetadata == checkYAML {
		t.Fatal("checkYAML changed: app-b's hosts not found")
	}
	for _, tt := range []struct {
		name, yaml string
		maxBytes   float64
	}{
		{"metadata", checkYAML, 2048},
		{"no metadata", noMetadata, 1700},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := cachedTokenHeap(t, 4000, tt.yaml)
			t.Logf("per cached token: %.0f bytes, %.1f objects, %.0f bytes scanned for pointers; %d bytes counted", m.bytes, m.objects, m.scan, m.counted)
			if m.bytes > tt.maxBytes || m.objects > 4.5 {
				t.Errorf("%.0f bytes and %.1f objects per cached token, want at most %.0f and 4.5", m.bytes, m.objects, tt.maxBytes)
			}
			if float64(m.counted) < m.bytes || float64(m.counted) > 1.25*m.bytes {
				t.Errorf("counted %d bytes per token and its answer, measured %.0f", m.counted, m.bytes)
			}
		})
	}
}

// Introspect tells every claim verbatim, from the verification (a cache
// miss) and from the cached claims (a hit), which keep no map: re-encoded
// in the payload's own form (keys sorted, compact), the answer's claims
// are the token's payload byte for byte, numbers as the token wrote them.
func TestIntrospectVerbatimAfterCacheHit(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	payload := `{"acr":"idporten-loa-high","amr":["BankID","pwd"],"aud":"my-api","big":12345678901234567891,` +
		`"exp":` + strconv.FormatInt(now.Add(time.Hour).Unix(), 10) + `,"f":1.50,"iat":` + strconv.FormatInt(now.Unix(), 10) +
		`,"iss":"` + e.idp.URL + `","n":null,"name":"Åse Ødegård 😀","nested":{"a":[1,{"b":false}],"z":"q\"uote"},"sub":"user-1","t":true}`
	k := e.idp.Key()
	token := idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID}, payload)
	for i := range 2 {
		res, err := e.client.Introspect(context.Background(), &vaktv1.IntrospectRequest{IdentityProvider: "idporten", Token: token})
		if err != nil || !res.GetActive() {
			t.Fatalf("introspection %d: %v %v", i, res, err)
		}
		req, _ := http.NewRequest(http.MethodPost, e.http.URL+"/api/v1/introspect", strings.NewReader(`{"identity_provider":"idporten","token":"`+token+`"}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := testHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(resp.Body)
		dec.UseNumber()
		var got map[string]any
		err = dec.Decode(&got)
		resp.Body.Close()
		if err != nil || got["active"] != true {
			t.Fatalf("answer %d: %v %v", i, got, err)
		}
		delete(got, "active")
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(got); err != nil {
			t.Fatal(err)
		}
		if s := strings.TrimSuffix(b.String(), "\n"); s != payload {
			t.Fatalf("answer %d's claims:\n%s\nthe token's:\n%s", i, s, payload)
		}
	}
	st, _ := e.cur.Load().Checker.Validator.CacheStats()
	if st.Misses != 1 || st.Hits != 3 {
		t.Fatalf("cache %+v: want 1 miss, then hits", st)
	}
}
