package server

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/authz"
)

// Transport limits.
const (
	// maxGRPCMessage caps a request: a token is at most 16 KiB by default,
	// and nothing vakt receives needs more than this.
	maxGRPCMessage = 1 << 20
	// DefaultCheckInFlight and DefaultOtherInFlight bound the requests vakt
	// works on at once: Checks, and everything else (Introspect and
	// Exchange, gRPC and HTTP), each in a budget of its own, so that a flood
	// of one kind never refuses the other. Past its budget a request is
	// refused at once (RESOURCE_EXHAUSTED, or 503) rather than queued
	// without end: Envoy turns the error into status_on_error (503), which
	// tells an overloaded vakt apart from a refusal.
	DefaultCheckInFlight = 4096
	DefaultOtherInFlight = 1024
	// maxBody caps the body of every HTTP request vakt reads.
	maxBody = 64 << 10
	// shutdownGrace is how long in-flight requests get to finish on shutdown.
	shutdownGrace = 10 * time.Second
)

// Services are what one mode of vakt serves: the authority (vakt serve,
// AuthorityServices) or an agent beside one application (vakt agent,
// AgentServices). The mode is chosen once, when its Services are made: each
// mode registers only the services it serves, and no handler asks which
// mode it is in.
type Services struct {
	register func(grpc.ServiceRegistrar)
	mux      *http.ServeMux
	admin    *http.ServeMux
	log      *slog.Logger
	budgets  *budgets
	metrics  *Metrics
	obs      *observer
	// serving is whether Serve is serving and not draining.
	serving atomic.Bool
	// readiness reports what keeps the mode from serving well (no
	// configuration yet, a provider without keys); nil when nothing does.
	// It gates the start only: once ready, a reload that brings a provider
	// without keys (whose tokens then fail as an outage) must not take
	// every replica out of rotation at once.
	readiness func() error
	started   atomic.Bool
	// drainDelay is how long Serve keeps serving, NOT_SERVING, after it is
	// told to stop; grace how long in-flight requests then get.
	drainDelay, grace time.Duration
	// grpcTLS and httpTLS, when set, are the listeners' TLS (WithTLS).
	grpcTLS, httpTLS *tls.Config
	// authz is the HTTP authorization face (the authority's only), served
	// on a listener of its own.
	authz http.Handler
}

// ready reports whether the services are ready for traffic: serving, not
// draining, and nothing in the way; the error says what is.
func (s *Services) ready() error {
	if !s.serving.Load() {
		return errNotServing
	}
	if s.readiness != nil && !s.started.Load() {
		if err := s.readiness(); err != nil {
			return err
		}
		s.started.Store(true)
	}
	return nil
}

var errNotServing = errors.New("not serving: starting or draining")

// WithShutdown sets how Serve stops (before it is called): it turns
// NOT_SERVING at once, keeps serving for drain so that load balancers and
// Kubernetes endpoints take it out of rotation first, then stops accepting
// and gives in-flight requests grace (0 keeps the default, 10 s).
func (s *Services) WithShutdown(drain, grace time.Duration) *Services {
	s.drainDelay = max(drain, 0)
	if grace > 0 {
		s.grace = grace
	}
	return s
}

// budgets are the admission budgets: slots taken while a request is in
// flight.
type budgets struct {
	check, other chan struct{}
}

func newBudgets(check, other int) *budgets {
	return &budgets{check: make(chan struct{}, max(check, 1)), other: make(chan struct{}, max(other, 1))}
}

// take takes a slot of b, or reports that none is free.
func take(b chan struct{}) bool {
	select {
	case b <- struct{}{}:
		return true
	default:
		return false
	}
}

// WithLimits sets the admission budgets (0 keeps a default), before the
// services are served.
func (s *Services) WithLimits(check, other int) *Services {
	s.budgets.check = make(chan struct{}, cmp.Or(check, DefaultCheckInFlight))
	s.budgets.other = make(chan struct{}, cmp.Or(other, DefaultOtherInFlight))
	return s
}

// onlyMethod serves h for method, and 405 for any other: the catch-all of
// the issuer's routes must not turn a wrong method into a 404.
func onlyMethod(method string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// limited admits an HTTP request within the budget for everything but
// Check, answering 503 temporarily_unavailable past it.
func (s *Services) limited(h http.Handler) http.Handler {
	return s.limitedWith(h, false, func(w http.ResponseWriter) {
		s.metrics.refusedOverload("exchange")
		writeJSON(w, answerFor(authz.ReasonOverloaded).http, map[string]string{"error": codeTemporarilyUnavailable, "error_description": authz.ReasonOverloaded.Description()})
	})
}

// limitedIntrospect is limited for introspection, whose every answer has
// active (the NAIS contract), an overload's too.
func (s *Services) limitedIntrospect(h http.Handler) http.Handler {
	return s.limitedWith(h, false, func(w http.ResponseWriter) {
		s.metrics.refusedOverload("introspect")
		writeIntrospectError(w, &requestError{answerFor(authz.ReasonOverloaded).http, authz.ReasonOverloaded.Description()})
	})
}

// limitedCheck admits a request of the HTTP authorization face within
// Check's budget (it is a Check), answering 503 past it.
func (s *Services) limitedCheck(h http.Handler) http.Handler {
	return s.limitedWith(h, true, func(w http.ResponseWriter) {
		s.metrics.checkRefused()
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": codeTemporarilyUnavailable, "error_description": authz.ReasonOverloaded.Description()})
	})
}

// limitedWith admits h's requests within Check's budget (check) or the
// other one, read per request (WithLimits may replace them before serving).
func (s *Services) limitedWith(h http.Handler, check bool, overloaded func(http.ResponseWriter)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		slots := s.budgets.other
		if check {
			slots = s.budgets.check
		}
		if !take(slots) {
			w.Header().Set("Retry-After", "1")
			overloaded(w)
			return
		}
		defer func() { <-slots }()
		h.ServeHTTP(w, r)
	})
}

func newServices(log *slog.Logger, m *Metrics, obs *observer, register func(grpc.ServiceRegistrar)) *Services {
	s := &Services{register: register, mux: http.NewServeMux(), log: log, metrics: m, obs: obs, budgets: newBudgets(DefaultCheckInFlight, DefaultOtherInFlight), grace: shutdownGrace}
	s.admin = newAdminMux(m, s.ready)
	s.mux.HandleFunc("GET /healthz", healthz)
	return s
}

// Mount serves h under prefix on the HTTP listener, as well as the mode's
// own endpoints (the development identity provider is mounted this way).
func (s *Services) Mount(prefix string, h http.Handler) { s.mux.Handle(prefix+"/", h) }

// Handler returns the HTTP endpoints.
func (s *Services) Handler() http.Handler { return s.mux }

// AuthzHandler returns the HTTP authorization face, nil for a mode
// without Check.
func (s *Services) AuthzHandler() http.Handler { return s.authz }

// AdminHandler returns the admin endpoints: /metrics, /debug/pprof/,
// /healthz, /readyz and /buildinfo.
func (s *Services) AdminHandler() http.Handler { return s.admin }

// NewGRPCServer returns a gRPC server with the mode's services, grpc.health.v1
// and server reflection registered. Panics in handlers become Internal
// errors, and requests beyond their budget are refused.
func (s *Services) NewGRPCServer() (*grpc.Server, *health.Server) {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxGRPCMessage),
		grpc.ChainUnaryInterceptor(recoverUnary(s.log), admitUnary(s.budgets, s.metrics)),
		grpc.ForceServerCodecV2(newCodec()),
		// A pool of goroutines serves the streams: no new goroutine, and no
		// stack to grow, per Check.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	}
	if s.grpcTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.grpcTLS)))
	}
	gs := grpc.NewServer(opts...)
	s.register(gs)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	return gs, hs
}

func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in gRPC handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				resp, err = nil, status.Error(codes.Internal, authz.ReasonInternal.Description())
			}
		}()
		return handler(ctx, req)
	}
}

// admitUnary admits Checks within their budget and Introspect and Exchange
// within theirs; health and reflection are always answered.
// A Check refused is counted as a Check decided for overloaded.
func admitUnary(b *budgets, m *Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		var slots chan struct{}
		switch {
		case strings.HasPrefix(info.FullMethod, "/envoy.service.auth."):
			slots = b.check
		case strings.HasPrefix(info.FullMethod, "/vakt."):
			slots = b.other
		default:
			return handler(ctx, req)
		}
		if !take(slots) {
			switch {
			case slots == b.check:
				m.checkRefused()
			case strings.HasPrefix(info.FullMethod, "/vakt.v1.IntrospectionService/"):
				m.refusedOverload("introspect")
			default:
				m.refusedOverload("exchange")
			}
			return nil, status.Error(answerFor(authz.ReasonOverloaded).grpc, authz.ReasonOverloaded.Description())
		}
		defer func() { <-slots }()
		return handler(ctx, req)
	}
}

// Listeners are the sockets vakt serves on.
type Listeners struct {
	GRPC net.Listener
	HTTP net.Listener
	// Admin serves metrics, pprof, health and build info; nil serves none.
	Admin net.Listener
	// Authz serves the HTTP authorization face; nil serves none.
	Authz net.Listener
}

// ListenAuthz opens the HTTP authorization face's listener.
func (ls *Listeners) ListenAuthz(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("authz listener: %w", err)
	}
	ls.Authz = l
	return nil
}

// Close closes every listener (on a start that fails after Listen).
func (ls *Listeners) Close() {
	for _, l := range []net.Listener{ls.GRPC, ls.HTTP, ls.Admin, ls.Authz} {
		if l != nil {
			l.Close()
		}
	}
}

// Listen opens the configured addresses. An empty adminAddr opens no admin
// listener.
func Listen(grpcAddr, httpAddr, adminAddr string) (*Listeners, error) {
	g, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return nil, fmt.Errorf("gRPC listener: %w", err)
	}
	h, err := net.Listen("tcp", httpAddr)
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("HTTP listener: %w", err)
	}
	ls := &Listeners{GRPC: g, HTTP: h}
	if adminAddr != "" {
		if ls.Admin, err = net.Listen("tcp", adminAddr); err != nil {
			g.Close()
			h.Close()
			return nil, fmt.Errorf("admin listener: %w", err)
		}
	}
	return ls, nil
}

// Serve serves s on ls until ctx ends, then stops gracefully: health (gRPC
// and /readyz) turns NOT_SERVING first, the listeners keep serving for the
// drain delay, then stop accepting, and in-flight requests get the grace
// period to finish. While serving, health follows readiness: NOT_SERVING
// until the configuration is loaded and every identity provider has keys.
func Serve(ctx context.Context, s *Services, ls *Listeners) error {
	log := s.log
	gs, hs := s.NewGRPCServer()
	httpSrv := newHTTPServer(s.mux, log, 15*time.Second)
	// Health says whether vakt is ready before the first request can ask.
	s.serving.Store(true)
	status := healthStatus(s.ready())
	hs.SetServingStatus("", status)

	// Each server's goroutine is joined before Serve returns: every one
	// has stopped by then (Stop, Shutdown or Close).
	var serving sync.WaitGroup
	defer serving.Wait()
	errs := make(chan error, 4)
	serving.Go(func() { errs <- gs.Serve(ls.GRPC) })
	serving.Go(func() { errs <- serveHTTP(httpSrv, ls.HTTP, s.httpTLS) })
	addrs := []any{"grpc", ls.GRPC.Addr().String(), "http", ls.HTTP.Addr().String()}
	var authzSrv *http.Server
	if ls.Authz != nil && s.authz != nil {
		authzSrv = newHTTPServer(s.limitedCheck(s.authz), log, 15*time.Second)
		// With listen.tls, proxies ask over TLS too: a bearer token crosses
		// the network to this listener as to the others.
		serving.Go(func() { errs <- serveHTTP(authzSrv, ls.Authz, s.httpTLS) })
		addrs = append(addrs, "authz", ls.Authz.Addr().String())
	}
	var adminSrv *http.Server
	if ls.Admin != nil {
		// A CPU profile or trace takes as long as it is asked to: the
		// admin listener has no write timeout.
		adminSrv = newHTTPServer(s.admin, log, 0)
		serving.Go(func() { errs <- adminSrv.Serve(ls.Admin) })
		addrs = append(addrs, "admin", ls.Admin.Addr().String())
	}
	log.Info("vakt serving", addrs...)
	watched := make(chan struct{})
	stopWatch := make(chan struct{})
	go func() { defer close(watched); s.followReadiness(hs, status, stopWatch) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
		log.Error("server stopped", "error", err)
	}
	// NOT_SERVING first, and for good: the watcher stops before Shutdown,
	// which ignores every later status.
	s.serving.Store(false)
	close(stopWatch)
	<-watched
	hs.Shutdown()
	if err == nil && s.drainDelay > 0 {
		log.Info("draining: NOT_SERVING, still answering", "drain_delay", s.drainDelay.String())
		select {
		case <-time.After(s.drainDelay):
		case err = <-errs:
			log.Error("server stopped while draining", "error", err)
		}
	}
	log.Info("shutting down", "grace", s.grace.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.grace)
	defer cancel()
	stopped := make(chan struct{})
	serving.Go(func() { gs.GracefulStop(); close(stopped) })
	if authzSrv != nil {
		// Its requests are Checks: they finish within the same grace.
		if herr := authzSrv.Shutdown(sctx); herr != nil && !errors.Is(herr, http.ErrServerClosed) {
			log.Warn("authz shutdown", "error", herr)
		}
	}
	if herr := httpSrv.Shutdown(sctx); herr != nil && !errors.Is(herr, http.ErrServerClosed) {
		log.Warn("HTTP shutdown", "error", herr)
	}
	select {
	case <-stopped:
	case <-sctx.Done():
		gs.Stop()
	}
	// Past the grace, connections still open are closed.
	_ = httpSrv.Close()
	if authzSrv != nil {
		_ = authzSrv.Close()
	}
	if adminSrv != nil {
		// Last, so that metrics are scraped while the others drain.
		_ = adminSrv.Close()
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// followReadiness sets the gRPC health status from readiness until stop:
// a probe sees NOT_SERVING while a provider has no keys, say.
func (s *Services) followReadiness(hs *health.Server, last healthpb.HealthCheckResponse_ServingStatus, stop <-chan struct{}) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if st := healthStatus(s.ready()); st != last {
			hs.SetServingStatus("", st)
			last = st
		}
	}
}

func healthStatus(notReady error) healthpb.HealthCheckResponse_ServingStatus {
	if notReady != nil {
		return healthpb.HealthCheckResponse_NOT_SERVING
	}
	return healthpb.HealthCheckResponse_SERVING
}

// serveHTTP serves srv on l, over TLS when tlsConfig is set.
func serveHTTP(srv *http.Server, l net.Listener, tlsConfig *tls.Config) error {
	if tlsConfig == nil {
		return srv.Serve(l)
	}
	srv.TLSConfig = tlsConfig
	return srv.ServeTLS(l, "", "")
}

func newHTTPServer(h http.Handler, log *slog.Logger, writeTimeout time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// requestError is an HTTP request that cannot be answered: the status and
// a public description of what is wrong with it.
type requestError struct {
	status      int
	description string
}

func (e *requestError) Error() string { return e.description }

func badRequest(description string) *requestError {
	return &requestError{http.StatusBadRequest, description}
}

// readBody reads a request body of one of the media types allowed: other
// media types get 415, bodies over maxBody 413.
func readBody(w http.ResponseWriter, r *http.Request, allowed ...string) (mediaType string, body []byte, _ *requestError) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	ok := err == nil
	if ok {
		ok = false
		for _, a := range allowed {
			ok = ok || mt == a
		}
	}
	if !ok {
		msg := "Content-Type must be " + allowed[0]
		if len(allowed) == 2 {
			msg += " or " + allowed[1]
		}
		return "", nil, &requestError{http.StatusUnsupportedMediaType, msg}
	}
	body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return "", nil, &requestError{http.StatusRequestEntityTooLarge, "request body is larger than 64 KiB"}
		}
		return "", nil, badRequest("request body could not be read")
	}
	return mt, body, nil
}

// readFields reads the named fields from a JSON object (string or boolean
// values) or a form body. Other media types get 415, bodies over 64 KiB 413,
// and malformed bodies, a field of another type or a form field given twice
// 400. Fields not named are ignored.
func readFields(w http.ResponseWriter, r *http.Request, names ...string) (map[string]string, *requestError) {
	mt, body, rerr := readBody(w, r, "application/json", "application/x-www-form-urlencoded")
	if rerr != nil {
		return nil, rerr
	}
	out := make(map[string]string, len(names))
	if mt == "application/json" {
		obj, dup, err := decodeJSONObject(body)
		switch {
		case dup != "":
			return nil, badRequest(publicText(truncateName(dup)) + " is given more than once")
		case err != nil:
			return nil, badRequest("request body is not a JSON object")
		}
		for _, n := range names {
			raw, ok := obj[n]
			if !ok || string(raw) == "null" {
				continue
			}
			var s string
			var b bool
			switch {
			case json.Unmarshal(raw, &s) == nil:
				out[n] = s
			case json.Unmarshal(raw, &b) == nil:
				out[n] = strconv.FormatBool(b)
			default:
				return nil, badRequest(n + " must be a string")
			}
		}
		return out, nil
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, badRequest("request body is not valid form encoding")
	}
	for _, n := range names {
		if len(form[n]) > 1 {
			return nil, badRequest(n + " is given more than once")
		}
		if v := form.Get(n); v != "" {
			out[n] = v
		}
	}
	return out, nil
}

// decodeJSONObject reads exactly one JSON object, member by member. A member
// name given twice (after unescaping: "token" and "t\u006fken" are one) is
// refused and returned in dup, as a form field given twice is: a body that
// two readers could read as two requests is no request. Unknown members
// are kept, as clients may send more than vakt reads.
func decodeJSONObject(body []byte) (obj map[string]json.RawMessage, dup string, err error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, "", errors.New("not a JSON object")
	}
	obj = map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, "", err
		}
		name, _ := tok.(string)
		if _, seen := obj[name]; seen {
			return nil, name, errors.New("a member is given twice")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, "", err
		}
		obj[name] = v
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, "", errors.New("not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, "", errors.New("data after the JSON object")
	}
	return obj, "", nil
}

// truncateName keeps a client's member name short enough to repeat.
func truncateName(s string) string {
	if len(s) > 64 {
		return s[:64]
	}
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeRequestError writes an unusable request as an OAuth-style error.
func writeRequestError(w http.ResponseWriter, e *requestError) {
	writeJSON(w, e.status, map[string]string{"error": codeInvalidRequest, "error_description": publicText(e.description)})
}
