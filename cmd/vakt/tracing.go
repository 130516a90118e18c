package main

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/vakt-dev/vakt/server"
)

// startTracing sets tracing up from the OTEL_* environment (nil when it
// asks for none), its export errors going to the log.
func startTracing(log *slog.Logger) (*server.Tracing, error) {
	t, err := server.NewTracing(context.Background())
	if err != nil || t == nil {
		return nil, err
	}
	// The OpenTelemetry SDK reports export errors to its global handler;
	// vakt's log is where an operator looks.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("tracing", "error", err) }))
	log.Info("tracing: spans are exported with OTLP, as the OTEL_* environment says")
	return t, nil
}

// stopTracing exports the spans still buffered, for at most 5 s.
func stopTracing(t *server.Tracing, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := t.Shutdown(ctx); err != nil {
		log.Warn("tracing: spans still buffered at shutdown were lost", "error", err)
	}
}
