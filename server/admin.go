package server

import (
	"net/http"
	"net/http/pprof"
	"strconv"

	"github.com/vakt-dev/vakt/internal/buildinfo"
)

// newAdminMux is the admin listener's endpoints: what an operator and the
// platform read, and nothing a mesh client may reach by accident (the
// admin listener binds the loopback unless configured otherwise).
//
//	GET /metrics          Prometheus text format (404 when m is nil)
//	GET /debug/pprof/...  net/http/pprof
//	GET /healthz          200 while the process runs (liveness)
//	GET /readyz           200 when ready; 503 before, while draining, and
//	                      while something is in the way (no keys yet)
//	GET /buildinfo        version, revision and Go version, as JSON
func newAdminMux(m *Metrics, ready func() error) *http.ServeMux {
	mux := http.NewServeMux()
	if m != nil {
		mux.Handle("GET /metrics", m.Handler())
	}
	// net/http/pprof also registers itself on http.DefaultServeMux, which
	// vakt never serves: only this listener has the profiles.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", boundedSeconds(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", boundedSeconds(pprof.Trace))
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(); err != nil {
			// The admin listener's readers are operators: say why.
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
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

// maxProfileSeconds bounds a CPU profile or execution trace: a request for
// a day of tracing would slow vakt for a day.
const maxProfileSeconds = 120

func boundedSeconds(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s := r.URL.Query().Get("seconds"); s != "" {
			if n, err := strconv.ParseFloat(s, 64); err != nil || !(n > 0 && n <= maxProfileSeconds) {
				http.Error(w, "seconds must be above 0 and at most 120", http.StatusBadRequest)
				return
			}
		}
		h(w, r)
	}
}
