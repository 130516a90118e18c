package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"
)

// parts are the long-lived parts of a running vakt (listeners, the
// configuration watch, the Kubernetes controller, the key sets' fetches,
// signal handling), each a goroutine of one errgroup. The first SIGINT or
// SIGTERM, or the first part to stop, with or without an error, ends ctx,
// and with it the others; wait returns once every part has returned.
type parts struct {
	g *errgroup.Group
	// ctx ends when vakt stops: every part returns soon after.
	ctx  context.Context
	stop context.CancelFunc
}

// newParts starts the group with its first part, signal handling.
func newParts() *parts {
	signals, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	ctx, stop := context.WithCancel(signals)
	g, gctx := errgroup.WithContext(ctx)
	p := &parts{g: g, ctx: gctx, stop: stop}
	// The first signal starts the drain; from then on a second one stops
	// vakt at once, as the signal's default does.
	p.run("signals", func(ctx context.Context) error {
		<-ctx.Done()
		stopSignals()
		return nil
	})
	return p
}

// run runs f as a part until ctx ends; f's return stops the others.
func (p *parts) run(name string, f func(ctx context.Context) error) {
	p.g.Go(func() error {
		defer p.stop()
		if err := f(p.ctx); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
}

// wait returns once every part has, with the first error of one.
func (p *parts) wait() error {
	defer p.stop()
	return p.g.Wait()
}

// abort stops the parts started so far, of a start that failed, and
// waits for them.
func (p *parts) abort() {
	p.stop()
	_ = p.g.Wait()
}

// failure is a start that failed, as the log tells it: its message and
// attributes, besides the error.
type failure struct {
	msg   string
	attrs []any
	err   error
}

func fail(msg string, err error, attrs ...any) error { return &failure{msg, attrs, err} }

func (f *failure) Error() string { return f.msg + ": " + f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

// logFailure logs why vakt did not start, or stopped with an error.
func logFailure(log *slog.Logger, err error) {
	if f, ok := errors.AsType[*failure](err); ok {
		log.Error(f.msg, append(f.attrs, "error", f.err)...)
		return
	}
	log.Error("stopped with an error", "error", err)
}
