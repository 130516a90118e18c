package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/exchange"
)

// BenchmarkAgentCacheHit is an agent exchange served from its cache: the
// cache key (sha256 of subject token and audience), a map lookup, and the
// time left.
func BenchmarkAgentCacheHit(b *testing.B) {
	srv := newBenchEndpoint(b)
	key, _ := exchange.GenerateSigningKey("ES256")
	a := New(Config{Upstream: &Upstream{
		Endpoint: srv, Client: NewHTTPClient(), Timeout: 10 * time.Second,
		Assertion: &AssertionBuilder{ClientID: "dev:a:app-1", TokenEndpoint: srv, Key: key, Now: time.Now},
	}})
	subject := strings.Repeat("s", 800) // the size of a typical user token
	ctx := context.Background()
	if _, err := a.Exchange(ctx, subject, "dev:b:app-b", false); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Exchange(ctx, subject, "dev:b:app-b", false); err != nil {
			b.Fatal(err)
		}
	}
}

func newBenchEndpoint(b *testing.B) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"t","issued_token_type":"` + exchange.TokenTypeAccessToken + `","token_type":"Bearer","expires_in":900}`))
	}))
	b.Cleanup(srv.Close)
	return srv.URL
}
