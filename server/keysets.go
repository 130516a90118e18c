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
//
// It keeps the verified-token cache across reloads too, with what makes its
// entries good: the identity providers, each the same *authz.Provider while
// its configuration is the same, and the policy, whose applications that
// did not change keep the answers Check derived for them. A policy change
// (any team's application) so costs no token a second signature check.
type KeySets struct {
	ctx     context.Context
	log     *slog.Logger
	now     func() time.Time
	tracing *Tracing // nil: fetches are not traced

	mu   sync.Mutex
	sets map[keySpec]*heldKeys
	// fetching are the sets' background fetches, which Wait joins; once
	// closed (Wait has begun) no set starts one.
	fetching sync.WaitGroup
	closed   bool
	// Of the runtime built last: its caches (nil before the first, or
	// off), its providers by name, and its policy.
	tokens    *authz.TokenCache
	answers   *answerCache
	providers map[string]*authz.Provider
	policy    *authz.Policy
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

// Wait returns once the context NewKeySets was given has ended and every
// set's background fetching has stopped. A set taken after that (by a
// reload under way while vakt stops) does not fetch in the background.
func (k *KeySets) Wait() {
	<-k.ctx.Done()
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	k.fetching.Wait()
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
		if !k.closed {
			k.fetching.Go(func() { keys.Run(ctx) })
		}
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

// provider returns the provider cfg describes: the runtime built last's of
// that name when its configuration is the same, with its cached tokens;
// else a new one.
func (k *KeySets) provider(cfg authz.ProviderConfig) (*authz.Provider, error) {
	k.mu.Lock()
	p := k.providers[cfg.Name]
	k.mu.Unlock()
	if p != nil && p.SameConfig(cfg) {
		return p, nil
	}
	return authz.NewProvider(cfg)
}

// caches returns the verified-token cache and the answers cache of entries
// and maxBytes between them (cacheBudget; nil: off, when entries < 0): the
// runtime built last's when their bounds are the same, else new ones,
// empty.
func (k *KeySets) caches(entries int, maxBytes int64) (*authz.TokenCache, *answerCache) {
	forTokens, forAnswers := cacheBudget(maxBytes)
	k.mu.Lock()
	defer k.mu.Unlock()
	tokens := k.tokens
	if !tokens.Fits(entries, forTokens) {
		tokens = authz.NewTokenCache(entries, forTokens)
	}
	if tokens == nil {
		return nil, nil
	}
	answers := k.answers
	if answers == nil || answers.entries != tokens.Entries() || answers.bytes != forAnswers {
		answers = newAnswerCache(tokens.Entries(), forAnswers)
	}
	return tokens, answers
}

// lastPolicy is the policy of the runtime built last; nil before the first.
func (k *KeySets) lastPolicy() *authz.Policy {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.policy
}

// settle makes a runtime just built, whole, the one the next is built
// from: its cache, providers and policy. A provider of the runtime before
// that it does not have (removed, or configured otherwise under its name)
// is retired: its tokens leave the cache and are served no more, not even
// to a request still reading the runtime before. Builds are one at a time
// (Reloader), so the runtime settled last is the one in force.
func (k *KeySets) settle(tokens *authz.TokenCache, answers *answerCache, providers []*authz.Provider, policy *authz.Policy) {
	byName := make(map[string]*authz.Provider, len(providers))
	for _, p := range providers {
		byName[p.Name()] = p
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for name, p := range k.providers {
		if byName[name] != p {
			k.tokens.Retire(p)
		}
	}
	k.tokens, k.answers, k.providers, k.policy = tokens, answers, byName, policy
}

// Len returns how many key sets are held.
func (k *KeySets) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.sets)
}
