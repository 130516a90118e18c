package authz

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/internal/idptest"
)

func TestRefreshInterval(t *testing.T) {
	for _, tt := range []struct {
		header string
		want   time.Duration
	}{
		{"", DefaultRefreshInterval},
		{"max-age=300", 5 * time.Minute},
		{"public, max-age=3600, must-revalidate", time.Hour},
		{"MAX-AGE=120", 2 * time.Minute},
		{`max-age="600"`, 10 * time.Minute},
		{"max-age=5", MinRefreshInterval},
		{"max-age=0", MinRefreshInterval},
		{"max-age=999999999", MaxRefreshInterval},
		{"max-age=99999999999999999999", DefaultRefreshInterval},
		{"max-age=-1", DefaultRefreshInterval},
		{"max-age=abc", DefaultRefreshInterval},
		{"no-store", MinRefreshInterval},
		{"no-cache, max-age=600", MinRefreshInterval},
	} {
		if got := refreshInterval(tt.header); got != tt.want {
			t.Errorf("%q: %v, want %v", tt.header, got, tt.want)
		}
	}
}

// TestRunSchedule drives the background refresh through a timer the test
// controls: each wait Run asks for is recorded, then released.
func TestRunSchedule(t *testing.T) {
	iss := idptest.NewIssuer(t, "ES256")
	r, err := NewRemoteKeys(RemoteKeysConfig{Name: "idp", WellKnownURL: iss.WellKnownURL(), Issuer: iss.URL, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	waits := make(chan time.Duration)
	release := make(chan time.Time)
	done := make(chan struct{})
	defer close(done)
	r.after = func(d time.Duration) <-chan time.Time {
		select {
		case waits <- d:
		case <-done:
		}
		return release
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	// wait returns the next wait Run asks for; the fetch before it is done.
	wait := func() time.Duration {
		t.Helper()
		select {
		case d := <-waits:
			return d
		case <-time.After(10 * time.Second):
			t.Fatal("Run asked for no wait")
			return 0
		}
	}
	steps := []struct {
		want       time.Duration
		thenChange func() // the issuer's next answer
	}{
		{DefaultRefreshInterval, func() { iss.SetCacheControl("max-age=600") }}, // no header at first
		{10 * time.Minute, func() { iss.SetCacheControl("max-age=1") }},
		{MinRefreshInterval, func() { iss.SetDown(true) }},
		{firstRetry, func() {}},
		{2 * firstRetry, func() {}},
		{4 * firstRetry, func() { iss.SetDown(false); iss.SetCacheControl("max-age=99999999") }},
		{MaxRefreshInterval, func() { iss.SetDown(true) }},
		{firstRetry, func() {}}, // the backoff starts over after a success
	}
	for i, st := range steps {
		if got := wait(); got != st.want {
			t.Fatalf("wait %d: %v, want %v", i, got, st.want)
		}
		if i == len(steps)-1 {
			break
		}
		st.thenChange()
		release <- time.Time{}
	}
	// The keys fetched before the outages stayed in use throughout.
	if _, err := r.Key(ctx, "key-1"); err != nil {
		t.Fatal(err)
	}
	if n := iss.JWKSRequests(); n != int64(len(steps)) {
		t.Fatalf("%d fetches, want %d", n, len(steps))
	}
}
