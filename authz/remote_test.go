package authz

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
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

// TestExpectJWKSURI is a well-known URL given with the jwks_uri its
// discovery document should name, as NAIS gives both: the addresses are
// checked at the first discovery that succeeds, not at start, so that a
// provider that is down delays nothing but its own tokens.
func TestExpectJWKSURI(t *testing.T) {
	iss := idptest.NewIssuer(t, "ES256")
	for _, cfg := range []RemoteKeysConfig{
		{Name: "idp", Issuer: iss.URL, WellKnownURL: iss.WellKnownURL(), JWKSURI: iss.JWKSURI()},
		{Name: "idp", Issuer: iss.URL, JWKSURI: iss.JWKSURI(), ExpectJWKSURI: iss.JWKSURI()},
		{Name: "idp", Issuer: iss.URL},
	} {
		if _, err := NewRemoteKeys(cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
	newKeys := func(expect string) (*RemoteKeys, *idptest.Clock, *bytes.Buffer) {
		var logs bytes.Buffer
		clock := idptest.NewClock(time.Now())
		r, err := NewRemoteKeys(RemoteKeysConfig{
			Name: "idp", Issuer: iss.URL, WellKnownURL: iss.WellKnownURL(), ExpectJWKSURI: expect,
			ExpectSource: "IDP_WELL_KNOWN_URL and IDP_JWKS_URI", Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: clock.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r, clock, &logs
	}
	ctx := context.Background()

	// Agreeing: the keys are those of the jwks_uri.
	r, _, _ := newKeys(iss.JWKSURI())
	if _, err := r.Key(ctx, "key-1"); err != nil {
		t.Fatal(err)
	}

	// Disagreeing: a fetch error that names both addresses and where they
	// were set; no key set is fetched, from either address.
	before := iss.JWKSRequests()
	other := iss.URL + "/other-jwks"
	r, clock, logs := newKeys(other)
	_, err := r.Key(ctx, "key-1")
	if !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("disagreeing: %v", err)
	}
	for _, want := range []string{iss.WellKnownURL(), iss.JWKSURI(), other, "IDP_WELL_KNOWN_URL and IDP_JWKS_URI disagree"} {
		if !strings.Contains(err.Error(), want) || !strings.Contains(logs.String(), want) {
			t.Errorf("the error and its log line should name %q: %v\n%s", want, err, logs)
		}
	}
	// Every discovery checks again, and refuses again.
	clock.Advance(MinRefetchInterval)
	if _, err := r.Key(ctx, "key-1"); !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), "disagree") {
		t.Fatalf("disagreeing, again: %v", err)
	}
	if n := iss.JWKSRequests(); n != before {
		t.Fatalf("%d key set fetches despite the disagreement", n-before)
	}

	// Down at start: an outage, not the disagreement; once the provider is
	// back, the check passes and the keys arrive.
	iss.SetDown(true)
	r, clock, _ = newKeys(iss.JWKSURI())
	if _, err := r.Key(ctx, "key-1"); !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("down: %v", err)
	}
	iss.SetDown(false)
	clock.Advance(MinRefetchInterval)
	if _, err := r.Key(ctx, "key-1"); err != nil {
		t.Fatalf("back: %v", err)
	}
}

// A key set URL's query (an API key, a signature) and user info never
// reach an error, which goes to logs: down, refused with a status, or
// answered with a body too large.
func TestFetchErrorsHideTheQuery(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusForbidden)
	}))
	defer srv.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	for _, base := range []string{srv.URL, down.URL} {
		u := strings.Replace(base, "http://", "http://user:pw-secret@", 1) + "/jwks?api-key=key-secret"
		r, err := NewRemoteKeys(RemoteKeysConfig{Name: "idp", JWKSURI: u, Issuer: "https://idp.example/", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		_, err = r.Key(context.Background(), "k")
		if err == nil || strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "/jwks") {
			t.Errorf("%s: %v", base, err)
		}
	}
}

// A key set fetched with NoRedirects is fetched from its own URL only: a
// redirect fails the fetch, and its target sees no request.
func TestRemoteKeysNoRedirects(t *testing.T) {
	var reached atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		reached.Add(1)
		fmt.Fprint(w, `{"keys":[]}`)
	}))
	defer target.Close()
	redirect := httptest.NewServer(http.RedirectHandler(target.URL+"/jwks", http.StatusFound))
	defer redirect.Close()
	for _, follow := range []bool{true, false} {
		r, err := NewRemoteKeys(RemoteKeysConfig{Name: "app", JWKSURI: redirect.URL + "/jwks", Issuer: "app", NoRedirects: !follow,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		reached.Store(0)
		_, err = r.Key(context.Background(), "k")
		switch {
		case follow && reached.Load() != 1:
			t.Errorf("following redirects: the target saw %d requests (%v)", reached.Load(), err)
		case !follow && (reached.Load() != 0 || !errors.Is(err, ErrKeysUnavailable)):
			t.Errorf("NoRedirects: the target saw %d requests; %v, want ErrKeysUnavailable", reached.Load(), err)
		}
	}
}
