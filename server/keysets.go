package server

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/vakt-dev/vakt/authz"
)

// KeySets keeps the remote key sets of identity providers and clients
// across reloads. A runtime takes the sets its configuration names; one
// whose settings did not change is the same set as before, with its last
// good keys and its refresh schedule, so that a reload while a provider is
// down keeps its tokens verifying. A new or changed one starts fetching in
// the background. A set no runtime holds any more stops.
type KeySets struct {
	ctx     context.Context
	log     *slog.Logger
	now     func() time.Time
	tracing *Tracing // nil: fetches are not traced

	mu   sync.Mutex
	sets map[keySpec]*heldKeys
}

// keySpec is what makes two key sets the same set.
type keySpec struct {
	name, wellKnownURL, jwksURI, issuer string
	wait                                time.Duration
	noRedirects                         bool
}

type heldKeys struct {
	keys   *authz.RemoteKeys
	refs   int
	cancel context.CancelFunc
}

// NewKeySets returns an empty registry whose sets fetch until ctx ends.
func NewKeySets(ctx context.Context, log *slog.Logger, now func() time.Time) *KeySets {
	if log == nil {
		log = slog.Default()
	}
	return &KeySets{ctx: ctx, log: log, now: now, sets: map[keySpec]*heldKeys{}}
}

// TraceWith traces the fetches of the key sets taken from now on with t.
func (k *KeySets) TraceWith(t *Tracing) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.tracing = t
}

// take returns the key set cfg describes, holding it until holder ends.
func (k *KeySets) take(holder context.Context, cfg authz.RemoteKeysConfig) (*authz.RemoteKeys, error) {
	spec := keySpec{cfg.Name, cfg.WellKnownURL, cfg.JWKSURI, cfg.Issuer, cfg.Wait, cfg.NoRedirects}
	k.mu.Lock()
	defer k.mu.Unlock()
	h, ok := k.sets[spec]
	if !ok {
		cfg.Logger, cfg.Now = k.log, k.now
		if k.tracing != nil && cfg.Client == nil {
			cfg.Client = k.tracing.HTTPClient(&http.Client{Timeout: authz.FetchTimeout}, "jwks fetch", attribute.String("vakt.provider", cfg.Name))
		}
		keys, err := authz.NewRemoteKeys(cfg)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(k.ctx)
		h = &heldKeys{keys: keys, cancel: cancel}
		k.sets[spec] = h
		go keys.Run(ctx)
	}
	h.refs++
	context.AfterFunc(holder, func() { k.drop(spec, h) })
	return h.keys, nil
}

func (k *KeySets) drop(spec keySpec, h *heldKeys) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if h.refs--; h.refs > 0 || k.sets[spec] != h {
		return
	}
	delete(k.sets, spec)
	h.cancel()
}

// Len returns how many key sets are held.
func (k *KeySets) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.sets)
}
