package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/idptest"
)

// benchCheck is the Check service in-process, with an RS256 signing key and
// a realistic token vakt issued for app-b.
func benchCheck(b testing.TB, cacheSize int) (*authorizationService, string) {
	return benchCheckAlg(b, cacheSize, "RS256")
}

func benchCheckAlg(b testing.TB, cacheSize int, alg string) (*authorizationService, string) {
	return benchCheckWith(b, cacheSize, alg, "")
}

// benchCheckWith is benchCheckAlg with more configuration appended.
func benchCheckWith(b testing.TB, cacheSize int, alg, extra string) (*authorizationService, string) {
	yaml := strings.ReplaceAll(checkYAML, "AUTH0", "https://auth0.example") + "validation:\n  cacheSize: " + map[bool]string{true: "-1", false: "0"}[cacheSize < 0] + "\n" + extra
	cfg, err := config.Load([]byte(yaml), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	key, _ := exchange.GenerateSigningKey(alg)
	signer, _ := exchange.NewSigner(key)
	rt, err := NewRuntime(context.Background(), cfg, Options{Logger: quiet, Signer: signer, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{})})
	if err != nil {
		b.Fatal(err)
	}
	cur := &Current{}
	cur.Store(rt)
	now := time.Now()
	tok := idptest.Sign(b, &idptest.Key{ID: key.ID, Alg: key.Alg, Private: key.Private}, alg,
		map[string]any{"alg": alg, "kid": key.ID, "typ": "at+jwt"},
		map[string]any{
			"iss": "http://127.0.0.1:8080", "sub": "Qx1aJzPzH3yH0bGzW8CCCq1LzqRIqTQwzEL2hrm3mCU=", "aud": appB,
			"client_id": app1, "idp": "https://idporten.example/", "acr": "idporten-loa-high", "pid": "12345678901",
			"scope": "openid read:users", "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
			"jti": "5c7a1d1e-6b1f-4e5e-9a53-2f7a3c8d9b10",
		})
	// As vakt serve runs it: with its metrics.
	return newAuthorizationService(cur, quiet, NewMetrics(), nil), tok
}

func envoyCheck(path, auth string) *authv3.CheckRequest {
	return checkRequestMethod("GET", path, auth)
}

func checkRequestMethod(method, path, auth string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		ContextExtensions: map[string]string{ContextExtensionApp: appB},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: "app-b.example.com",
			Headers: map[string]string{
				":method": method, ":path": path, ":authority": "app-b.example.com", "authorization": auth,
				"user-agent": "Go-http-client/1.1", "accept": "*/*", "x-request-id": "0f8a6b52-1c2d-4e5f-9a8b-7c6d5e4f3a2b",
			},
		}},
	}}
}

// benchmarkCheck measures Check as the gRPC server runs it: the handler
// (checkWire) and the codec's marshalling of its answer, whose buffer the
// server frees once written. The answer is checked once, decoded, before.
func benchmarkCheck(b *testing.B, svc *authorizationService, req *authv3.CheckRequest, want codes.Code) {
	ctx := context.Background()
	if res, err := svc.Check(ctx, req); err != nil || res.GetStatus().GetCode() != int32(want) {
		b.Fatalf("%v %v", res, err)
	}
	c := newCodec()
	b.ReportAllocs()
	for b.Loop() {
		res, err := svc.checkWire(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		wire, err := c.Marshal(res)
		if err != nil {
			b.Fatal(err)
		}
		wire.Free()
	}
}

// BenchmarkCheckCached: an allowed request whose token is in the
// verified-token cache, the hot path of the mesh.
// The cost that grows with the token is the SHA-256 of its signature (the
// cache key): 342 bytes for RS256, 86 for ES256.
func BenchmarkCheckCached(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256"} {
		b.Run(alg, func(b *testing.B) {
			svc, tok := benchCheckAlg(b, 0, alg)
			benchmarkCheck(b, svc, envoyCheck("/read", "Bearer "+tok), codes.OK)
		})
	}
}

// BenchmarkCheckCachedTokens: cached allows of 20 000 tokens like the load
// benchmark's, each in turn as test/load sends them, so that the cache's
// entries and the claims are out of the CPU's caches as under load: the
// handler's part of test/load's CPU per cached Check, without gRPC's.
func BenchmarkCheckCachedTokens(b *testing.B) {
	const n = 20_000
	cur, _, _, signer := ownTokenRuntime(b, checkYAML+"validation:\n  cacheMemory: 1Gi\n")
	svc := newAuthorizationService(cur, quiet, NewMetrics(), nil)
	reqs := loadRequests(b, signer, n)
	ctx := context.Background()
	for _, r := range reqs {
		if res, err := svc.Check(ctx, r); err != nil || res.GetStatus().GetCode() != int32(codes.OK) {
			b.Fatalf("%v %v", res, err)
		}
	}
	c := newCodec()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		res, err := svc.checkWire(ctx, reqs[i%n])
		if err != nil {
			b.Fatal(err)
		}
		wire, err := c.Marshal(res)
		if err != nil {
			b.Fatal(err)
		}
		wire.Free()
		i++
	}
	if st, _ := cur.Load().Checker.Validator.CacheStats(); st.Misses != n {
		b.Fatalf("%+v: the cache missed after the first pass", st)
	}
}

// BenchmarkCheckUncached: an allowed request verified from scratch.
func BenchmarkCheckUncached(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256"} {
		b.Run(alg, func(b *testing.B) {
			svc, tok := benchCheckAlg(b, -1, alg)
			benchmarkCheck(b, svc, envoyCheck("/read", "Bearer "+tok), codes.OK)
		})
	}
}

// BenchmarkCheckDenied: a request without a token, refused with 401.
func BenchmarkCheckDenied(b *testing.B) {
	svc, _ := benchCheck(b, 0)
	benchmarkCheck(b, svc, envoyCheck("/read", ""), codes.Unauthenticated)
}

// BenchmarkCheckCachedLogged: a cached allow with log.decisions: all, its
// line written as JSON (to nowhere): what logging every allow costs.
func BenchmarkCheckCachedLogged(b *testing.B) {
	svc, tok := benchCheckWith(b, 0, "ES256", "log:\n  decisions: all\n")
	svc.log = slog.New(slog.NewJSONHandler(io.Discard, nil))
	benchmarkCheck(b, svc, envoyCheck("/read", "Bearer "+tok), codes.OK)
}

// BenchmarkCheckCachedTraced: a cached allow with tracing on, the caller's
// trace sampled: a span per Check, exported in batches over OTLP/HTTP to a
// receiver on loopback. What tracing every Check costs; with tracing off
// (BenchmarkCheckCached) Check compares one pointer.
func BenchmarkCheckCachedTraced(b *testing.B) {
	recv := newOTLPReceiver(b)
	tr := tracingTo(b, recv, "http/protobuf")
	defer tr.Shutdown(context.Background())
	svc, tok := benchCheckAlg(b, 0, "ES256")
	svc.obs.tracer = tr.tracer
	req := envoyCheck("/read", "Bearer "+tok)
	req.Attributes.Request.Http.Headers["traceparent"] = "00-" + callerTrace + "-" + callerSpan + "-01"
	benchmarkCheck(b, svc, req, codes.OK)
}

// BenchmarkHTTPAuthzCached: the HTTP face with a cached token, in-process
// (the handler and its response; the request is made once): what the
// translation to a CheckRequest and back costs over Check's.
func BenchmarkHTTPAuthzCached(b *testing.B) {
	svc, tok := benchCheckAlg(b, 0, "ES256")
	h := &httpAuthz{check: svc}
	req := httptest.NewRequest(http.MethodGet, AuthzPathPrefix+"/"+appB+"/read", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("User-Agent", "Go-http-client/1.1")
	req.Header.Set("X-Request-Id", "0f8a6b52-1c2d-4e5f-9a8b-7c6d5e4f3a2b")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || rec.Header().Get("x-vakt-subject") == "" {
		b.Fatalf("%d %v", rec.Code, rec.Header())
	}
	b.ReportAllocs()
	for b.Loop() {
		rec := discardResponse{h: http.Header{}}
		h.ServeHTTP(&rec, req)
	}
}

// BenchmarkHTTPAuthzListener: the same through vakt's listener, a Go HTTP
// client on loopback keeping its connections: requests per second as a
// proxy on the same host would see them (client and server share the CPU).
func BenchmarkHTTPAuthzListener(b *testing.B) {
	svc, tok := benchCheckAlg(b, 0, "ES256")
	srv := httptest.NewServer(&httpAuthz{check: svc})
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	url := srv.URL + AuthzPathPrefix + "/" + appB + "/read"
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("%d", resp.StatusCode)
			}
		}
	})
}

// discardResponse is an http.ResponseWriter that keeps nothing.
type discardResponse struct{ h http.Header }

func (d *discardResponse) Header() http.Header         { return d.h }
func (d *discardResponse) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardResponse) WriteHeader(int)             {}
