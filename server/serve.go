package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// shutdownGrace is how long in-flight requests get to finish on shutdown.
const shutdownGrace = 10 * time.Second

// Listeners are the sockets vakt serves on.
type Listeners struct {
	GRPC net.Listener
	HTTP net.Listener
}

// Listen opens the configured addresses.
func Listen(grpcAddr, httpAddr string) (*Listeners, error) {
	g, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return nil, fmt.Errorf("gRPC listener: %w", err)
	}
	h, err := net.Listen("tcp", httpAddr)
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("HTTP listener: %w", err)
	}
	return &Listeners{GRPC: g, HTTP: h}, nil
}

// Mount adds a handler to the HTTP server at a path prefix.
type Mount struct {
	Prefix  string
	Handler http.Handler
}

// Serve serves gRPC and HTTP on ls until ctx ends, then stops gracefully:
// health turns NOT_SERVING, in-flight requests get shutdownGrace to finish.
func Serve(ctx context.Context, cur *Current, m *Metrics, ls *Listeners, log *slog.Logger, mounts ...Mount) error {
	gs, hs := NewGRPCServer(cur, m, log)
	handler := NewHTTPHandler(cur, m, log)
	if len(mounts) > 0 {
		mux := http.NewServeMux()
		mux.Handle("/", handler)
		for _, mt := range mounts {
			mux.Handle(mt.Prefix+"/", mt.Handler)
		}
		handler = mux
	}
	httpSrv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)

	errs := make(chan error, 2)
	go func() { errs <- gs.Serve(ls.GRPC) }()
	go func() { errs <- httpSrv.Serve(ls.HTTP) }()
	log.Info("vakt serving", "grpc", ls.GRPC.Addr().String(), "http", ls.HTTP.Addr().String())

	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
		log.Error("server stopped", "error", err)
	}
	log.Info("shutting down", "grace", shutdownGrace.String())
	hs.Shutdown()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	if herr := httpSrv.Shutdown(sctx); herr != nil && !errors.Is(herr, http.ErrServerClosed) {
		log.Warn("HTTP shutdown", "error", herr)
	}
	select {
	case <-stopped:
	case <-sctx.Done():
		gs.Stop()
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
