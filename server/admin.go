package server

import (
	"net/http"
	"net/http/pprof"
	"sync/atomic"

	"github.com/vakt-dev/vakt/internal/buildinfo"
)

// newAdminMux is the admin listener's endpoints: what an operator and the
// platform read, and nothing a mesh client may reach by accident (the
// admin listener binds the loopback unless configured otherwise).
//
//	GET /metrics          Prometheus text format (404 when m is nil)
//	GET /debug/pprof/...  net/http/pprof
//	GET /healthz          200 while the process runs (liveness)
//	GET /readyz           200 while serving, 503 before and while draining
//	GET /buildinfo        version, revision and Go version, as JSON
func newAdminMux(m *Metrics, ready *atomic.Bool) *http.ServeMux {
	mux := http.NewServeMux()
	if m != nil {
		mux.Handle("GET /metrics", m.Handler())
	}
	// net/http/pprof also registers itself on http.DefaultServeMux, which
	// vakt never serves: only this listener has the profiles.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not serving"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	build := buildinfo.Read()
	mux.HandleFunc("GET /buildinfo", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": build.Version, "revision": build.Revision, "goversion": build.GoVersion})
	})
	return mux
}

// healthz answers liveness: the process runs and serves HTTP.
func healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}
