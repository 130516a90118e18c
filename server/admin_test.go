package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/internal/waittest"
)

// The admin listener serves metrics, profiles, health and build info; the
// public HTTP listener serves none of metrics and profiles.
func TestAdminListener(t *testing.T) {
	e := newEnv(t)
	ls, err := Listen("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, AuthorityServices(e.cur, NewMetrics(), quiet), ls) }()
	defer func() { cancel(); <-done }()
	public := "http://" + ls.HTTP.Addr().String()
	admin := "http://" + ls.Admin.Addr().String()

	get := func(url string) (int, string) {
		t.Helper()
		resp, err := testHTTP.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Ready once the identity provider's keys have been fetched, over the
	// network.
	waittest.Until(t, 5*time.Second, "/readyz never answered 200", func() bool { code, _ := get(admin + "/readyz"); return code == http.StatusOK })
	for _, tc := range []struct {
		url, want string
		code      int
	}{
		{admin + "/metrics", "vakt_build_info{", 200},
		{admin + "/metrics", "vakt_check_decisions_total{", 200},
		{admin + "/debug/pprof/", "goroutine", 200},
		{admin + "/debug/pprof/cmdline", "", 200},
		{admin + "/debug/pprof/goroutine?debug=1", "goroutine profile", 200},
		{admin + "/healthz", `"ok"`, 200},
		{admin + "/debug/pprof/trace?seconds=86400", "at most 120", 400},
		{admin + "/debug/pprof/profile?seconds=-1", "at most 120", 400},
		{admin + "/buildinfo", runtime.Version(), 200},
		{public + "/healthz", `"ok"`, 200},
		// Neither metrics nor profiles on the listener the mesh reaches.
		{public + "/metrics", "", 404},
		{public + "/debug/pprof/", "", 404},
		{public + "/buildinfo", "", 404},
		// The admin listener serves nothing of the public one.
		{admin + "/.well-known/oauth-authorization-server", "", 404},
	} {
		code, body := get(tc.url)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s: %d, want %d containing %q; body %.200q", tc.url, code, tc.code, tc.want, body)
		}
	}
	var bi map[string]string
	_, body := get(admin + "/buildinfo")
	if err := json.Unmarshal([]byte(body), &bi); err != nil || bi["version"] == "" || bi["revision"] == "" || bi["goversion"] != runtime.Version() {
		t.Errorf("/buildinfo: %s (%v)", body, err)
	}
}

// /readyz is 503 until Serve serves and from the moment it drains.
func TestReadyzBeforeServing(t *testing.T) {
	e := newEnv(t)
	s := AuthorityServices(e.cur, nil, quiet)
	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before Serve: %d", rec.Code)
	}
	// Without metrics, /metrics is not found rather than empty.
	rec = httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("/metrics without metrics: %d", rec.Code)
	}
}
