package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Reloader rebuilds the runtime when its files change or on SIGHUP. A
// rebuild that fails leaves the runtime in force untouched, logs why and
// counts the failure; requests never see a half-built runtime, since the
// swap is one atomic store.
type Reloader struct {
	Current *Current
	// Build makes a new runtime; its context lives as long as the runtime
	// is in force (background key fetches stop when it is replaced).
	Build func(ctx context.Context) (*Runtime, error)
	// Files returns the files whose change triggers a rebuild. Watch asks
	// again after each reload, so that a file a new configuration names
	// is followed from then on.
	Files  func() []string
	Logger *slog.Logger
	// OnResult, when set, is told of every reload's outcome (for metrics),
	// once its runtime is in force or it was refused.
	OnResult func(err error)

	mu     sync.Mutex
	cancel context.CancelFunc
	// kick is Watch's: a Kick never waits for a reload in progress.
	kick atomic.Pointer[chan struct{}]
}

// Kick asks for a reload (a Kubernetes resource changed): soon after, once
// a burst of kicks and file events has settled. It never blocks; before
// Watch runs it does nothing.
func (r *Reloader) Kick() {
	k := r.kick.Load()
	if k == nil {
		return
	}
	select {
	case *k <- struct{}{}:
	default:
	}
}

// Start builds and installs the first runtime.
func (r *Reloader) Start(ctx context.Context) error {
	rctx, cancel := context.WithCancel(ctx)
	rt, err := r.Build(rctx)
	if err != nil {
		cancel()
		return err
	}
	r.cancel = cancel
	r.Current.Store(rt)
	return nil
}

// Reload builds a new runtime and swaps it in, or keeps the old one.
func (r *Reloader) Reload(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rctx, cancel := context.WithCancel(ctx)
	rt, err := r.Build(rctx)
	if r.OnResult != nil {
		defer r.OnResult(err)
	}
	if err != nil {
		cancel()
		r.Logger.Error("reload refused; the running configuration stays in force", "error", err)
		return err
	}
	r.Current.Store(rt)
	if r.cancel != nil {
		r.cancel()
	}
	r.cancel = cancel
	r.Logger.Info("reloaded")
	return nil
}

// kickSettle is how long a Kick waits for more: a resource applied is in
// force within a second.
const kickSettle = 100 * time.Millisecond

// Watch reloads on SIGHUP and when a watched file changes, until ctx ends.
// The watches and the signal handler are in place when Watch returns; the
// loop runs in a goroutine, and the returned channel closes when it ends.
// It watches the files' directories, so that editors' and Kubernetes'
// replace-by-rename updates are seen; bursts of events become one reload.
func (r *Reloader) Watch(ctx context.Context) (<-chan struct{}, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	watched := map[string]bool{} // directories
	names := map[string]bool{}   // files
	follow := func() error {
		if r.Files == nil {
			return nil
		}
		for _, f := range r.Files() {
			abs, err := filepath.Abs(f)
			if err != nil {
				return err
			}
			names[abs] = true
			if dir := filepath.Dir(abs); !watched[dir] {
				if err := w.Add(dir); err != nil {
					return fmt.Errorf("watching %s: %w", dir, err)
				}
				watched[dir] = true
			}
		}
		return nil
	}
	if err := follow(); err != nil {
		w.Close()
		return nil, err
	}
	reload := func() {
		if r.Reload(ctx) == nil {
			if err := follow(); err != nil {
				r.Logger.Warn("a file the new configuration names cannot be watched; its changes need SIGHUP", "error", err)
			}
		}
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	kick := make(chan struct{}, 1)
	r.kick.Store(&kick)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer w.Close()
		defer signal.Stop(hup)
		const settle = 200 * time.Millisecond
		var pending <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				r.Logger.Info("SIGHUP: reloading")
				reload()
			case <-kick:
				// The first event starts the wait and later ones do not
				// prolong it: a stream of events cannot hold reloads off.
				if pending == nil {
					pending = time.After(kickSettle)
				}
			case ev := <-w.Events:
				// Kubernetes swaps a ..data symlink; editors rename temp files.
				if (names[ev.Name] || filepath.Base(ev.Name) == "..data") && pending == nil {
					pending = time.After(settle)
				}
			case err := <-w.Errors:
				r.Logger.Warn("file watch", "error", err)
			case <-pending:
				pending = nil
				reload()
			}
		}
	}()
	return done, nil
}
