package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of the remote key set.
const (
	// MinRefetchInterval spaces fetches caused by unknown kids, per provider.
	MinRefetchInterval = 10 * time.Second
	// MinRefreshInterval and MaxRefreshInterval clamp Cache-Control max-age.
	MinRefreshInterval = time.Minute
	MaxRefreshInterval = 24 * time.Hour
	// DefaultRefreshInterval applies when the JWKS response has no max-age.
	DefaultRefreshInterval = 15 * time.Minute
	// maxDocumentSize caps a discovery document or key set.
	maxDocumentSize = 1 << 20
	// FetchTimeout bounds one fetch of a key set or metadata document.
	FetchTimeout = 10 * time.Second
	// DefaultKeyWait is how long a request waits for keys being fetched
	// before it is answered as an outage, so that a provider that hangs
	// holds no request (and no admission slot) for long.
	DefaultKeyWait = time.Second
	// maxKeyWaiters bounds the requests waiting on one fetch; past it they
	// are answered as an outage at once.
	maxKeyWaiters = 64
	firstRetry    = 5 * time.Second
	maxRetry      = 5 * time.Minute
)

// StaticKeys is a KeySource over a fixed key set.
type StaticKeys struct{ Set *KeySet }

var (
	_ KeySource = StaticKeys{}
	_ KeySource = ExpiringKeys{}
	_ KeySource = (*RemoteKeys)(nil)
)

// ExpiringKeys is a KeySource over a fixed key set some of whose keys stop
// being accepted at a time of their own: client keys replaced by a
// rotation, valid for an overlap. Every lookup reads the clock, so that a
// key stops at its time by each replica's own clock, whether or not
// anything is written or read anywhere else.
type ExpiringKeys struct {
	Set *KeySet
	// Until says when a key stops being accepted, by kid; a key not in it
	// does not expire.
	Until map[string]time.Time
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Key returns the key with kid, unless its time is past.
func (s ExpiringKeys) Key(_ context.Context, kid string) (*Key, error) {
	k, ok := s.Set.Lookup(kid)
	if !ok {
		return nil, fmt.Errorf("%w: kid %s", ErrKeyNotFound, quoted(kid))
	}
	if until, ok := s.Until[kid]; ok {
		now := time.Now
		if s.Now != nil {
			now = s.Now
		}
		if !now().Before(until) {
			return nil, fmt.Errorf("%w: kid %s was replaced, and stopped being accepted at %s", ErrKeyNotFound, quoted(kid), until.UTC().Format(time.RFC3339))
		}
	}
	return k, nil
}

// Key returns the key with kid.
func (s StaticKeys) Key(_ context.Context, kid string) (*Key, error) {
	if k, ok := s.Set.Lookup(kid); ok {
		return k, nil
	}
	return nil, fmt.Errorf("%w: kid %s", ErrKeyNotFound, quoted(kid))
}

// RemoteKeysConfig describes where a provider's keys are published.
type RemoteKeysConfig struct {
	Name string // the provider's name, for logs and errors
	// Either WellKnownURL (OpenID Connect discovery or RFC 8414 metadata,
	// whose issuer must equal Issuer) or JWKSURI.
	WellKnownURL string
	JWKSURI      string
	Issuer       string
	// ExpectJWKSURI, when set with WellKnownURL, is the jwks_uri the
	// discovery document must give: a document that gives another is a
	// fetch error (logged; the provider's tokens fail as an outage until a
	// discovery agrees), and its keys are never fetched. ExpectSource names
	// where the two addresses were set, for that error (e.g.
	// "TOKEN_X_WELL_KNOWN_URL and TOKEN_X_JWKS_URI"); optional.
	ExpectJWKSURI string
	ExpectSource  string
	Client        *http.Client // http.DefaultClient's transport when nil, with a timeout
	// NoRedirects fetches from the URL given and nowhere else: a redirect
	// is a fetch error. For key sets a tenant named, which vakt fetches
	// only from hosts granted to it (kubernetes.grants).
	NoRedirects bool
	// Wait bounds how long a lookup waits for a fetch it needs (the first
	// one, or one for an unknown kid); DefaultKeyWait when zero.
	Wait   time.Duration
	Logger *slog.Logger     // slog.Default() when nil
	Now    func() time.Time // time.Now when nil
}

// RemoteKeys is a KeySource that fetches a JWK Set over HTTP.
//
//   - Run refreshes the set in the background, as often as the response's
//     Cache-Control max-age says (clamped to MinRefreshInterval –
//     MaxRefreshInterval), and retries with backoff while the provider is down.
//   - A kid the current set lacks triggers a fetch, at most once per
//     MinRefetchInterval; concurrent misses wait for that one fetch.
//   - A failed fetch keeps the last good set in use.
//   - Before the first successful fetch every lookup fails with
//     ErrKeysUnavailable, naming the last fetch error.
type RemoteKeys struct {
	cfg    RemoteKeysConfig
	client *http.Client
	log    *slog.Logger
	now    func() time.Time
	after  func(time.Duration) <-chan time.Time // time.After; tests replace it

	state atomic.Pointer[remoteState]

	mu        sync.Mutex
	inflight  *fetchCall
	lastFetch time.Time // start of the last fetch, for the refetch limit
	jwksURI   string    // resolved by discovery; touched only by fetch

	fetchesOK, fetchesFailed atomic.Uint64
	lastSuccess              atomic.Int64 // unix nanoseconds; 0 before the first
}

// KeyStats are a remote key set's fetches so far, for metrics.
type KeyStats struct {
	FetchesOK, FetchesFailed uint64
	LastSuccess              time.Time // zero before the first success
	Keys                     int       // keys in the set in use
	// LastError is why the last fetch failed; nil when it succeeded, or
	// before the first.
	LastError error
}

// Stats returns the key set's fetches so far and its size.
func (r *RemoteKeys) Stats() KeyStats {
	s := KeyStats{FetchesOK: r.fetchesOK.Load(), FetchesFailed: r.fetchesFailed.Load()}
	if ns := r.lastSuccess.Load(); ns != 0 {
		s.LastSuccess = time.Unix(0, ns)
	}
	if st := r.state.Load(); st != nil {
		if st.keys != nil {
			s.Keys = st.keys.Len()
		}
		s.LastError = st.err
	}
	return s
}

type remoteState struct {
	keys    *KeySet // last good set; nil before the first success
	err     error   // error of the last fetch, nil when it succeeded
	maxAge  time.Duration
	fetched time.Time
}

type fetchCall struct {
	done    chan struct{}
	err     error
	waiters int // lookups waiting on it; guarded by RemoteKeys.mu
}

var (
	errRefetchTooSoon = errors.New("key set was fetched less than 10s ago")
	errKeyWait        = errors.New("the key set is being fetched, and the wait for it is over")
	errTooManyWaiting = errors.New("too many requests wait for the key set already")
)

// NewRemoteKeys returns a remote key set. It fetches nothing until Run
// starts or a key is looked up.
func NewRemoteKeys(cfg RemoteKeysConfig) (*RemoteKeys, error) {
	if (cfg.WellKnownURL == "") == (cfg.JWKSURI == "") {
		return nil, errors.New("exactly one of wellKnownUrl and jwksUri is required")
	}
	if cfg.ExpectJWKSURI != "" && cfg.WellKnownURL == "" {
		return nil, errors.New("an expected jwks_uri needs wellKnownUrl")
	}
	r := &RemoteKeys{cfg: cfg, client: cfg.Client, log: cfg.Logger, now: cfg.Now, jwksURI: cfg.JWKSURI}
	if r.client == nil {
		r.client = &http.Client{Timeout: FetchTimeout}
	}
	if cfg.NoRedirects {
		c := *r.client
		c.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
			return fmt.Errorf("redirected to %s: the key set is fetched from its own URL only", req.URL.Redacted())
		}
		r.client = &c
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("identity_provider", cfg.Name)
	if r.now == nil {
		r.now = time.Now
	}
	if r.cfg.Wait <= 0 {
		r.cfg.Wait = DefaultKeyWait
	}
	r.after = time.After
	return r, nil
}

// Key returns the key with kid, fetching the set again when kid is unknown
// and the last fetch is at least MinRefetchInterval old.
func (r *RemoteKeys) Key(ctx context.Context, kid string) (*Key, error) {
	if st := r.state.Load(); st != nil {
		if k, ok := st.keys.Lookup(kid); ok {
			return k, nil
		}
	}
	err := r.fetch(ctx, false)
	st := r.state.Load()
	if st == nil || st.keys == nil {
		if err == nil || errors.Is(err, errRefetchTooSoon) {
			if st != nil && st.err != nil {
				err = st.err
			} else if err == nil {
				err = errors.New("no keys fetched yet")
			}
		}
		// The fetch error names URLs: it wraps with %w so that the log has
		// it, and the reason table keeps it from clients.
		return nil, fmt.Errorf("%w: %s: %w", ErrKeysUnavailable, r.cfg.Name, err)
	}
	if k, ok := st.keys.Lookup(kid); ok {
		return k, nil
	}
	// A kid is known to be absent only from a set fetched just now. While
	// the fetch is under way, or when it (or the last one) failed, the kid
	// may be in the set vakt could not get: an outage, not a refusal (a
	// provider that rotated its key as it went down must not see its new
	// tokens refused).
	switch {
	case errors.Is(err, errRefetchTooSoon):
		if st.err != nil {
			return nil, fmt.Errorf("%w: %s: kid %s: the last fetch failed: %w", ErrKeysUnavailable, r.cfg.Name, quoted(kid), st.err)
		}
	case err != nil:
		return nil, fmt.Errorf("%w: %s: kid %s: %w", ErrKeysUnavailable, r.cfg.Name, quoted(kid), err)
	}
	return nil, fmt.Errorf("%w: kid %s", ErrKeyNotFound, quoted(kid))
}

// Run keeps the key set fresh until ctx ends.
func (r *RemoteKeys) Run(ctx context.Context) {
	retry := firstRetry
	for {
		wait := DefaultRefreshInterval
		if err := r.fetch(ctx, true); err != nil {
			if ctx.Err() != nil {
				return
			}
			wait, retry = retry, min(2*retry, maxRetry)
		} else {
			retry = firstRetry
			if st := r.state.Load(); st != nil && st.maxAge > 0 {
				wait = st.maxAge
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-r.after(wait):
		}
	}
}

// fetch fetches the key set once, joining a fetch already under way. Unless
// scheduled, it refuses to start a fetch within MinRefetchInterval of the
// last one, and waits for it at most the configured Wait (and not at all
// when maxKeyWaiters wait already). The fetch itself is not cancelled by
// ctx or the wait, which belong to one of possibly many waiting requests.
func (r *RemoteKeys) fetch(ctx context.Context, scheduled bool) error {
	r.mu.Lock()
	call := r.inflight
	if call == nil {
		now := r.now()
		if !scheduled && !r.lastFetch.IsZero() && now.Sub(r.lastFetch) < MinRefetchInterval {
			r.mu.Unlock()
			return errRefetchTooSoon
		}
		call = &fetchCall{done: make(chan struct{})}
		r.inflight = call
		r.lastFetch = now
		go func() {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), FetchTimeout)
			call.err = r.fetchOnce(fctx)
			cancel()
			r.mu.Lock()
			r.inflight = nil
			r.mu.Unlock()
			close(call.done)
		}()
	}
	if scheduled {
		r.mu.Unlock()
		select {
		case <-call.done:
			return call.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if call.waiters >= maxKeyWaiters {
		r.mu.Unlock()
		return errTooManyWaiting
	}
	call.waiters++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		call.waiters--
		r.mu.Unlock()
	}()
	t := time.NewTimer(r.cfg.Wait)
	defer t.Stop()
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errKeyWait
	}
}

func (r *RemoteKeys) fetchOnce(ctx context.Context) error {
	set, maxAge, err := r.download(ctx)
	prev := r.state.Load()
	next := &remoteState{fetched: r.now()}
	if prev != nil {
		next.keys, next.maxAge = prev.keys, prev.maxAge
	}
	if err != nil {
		r.fetchesFailed.Add(1)
		next.err = err
		r.state.Store(next)
		if next.keys != nil {
			r.log.Warn("key set fetch failed; keeping the last good keys", "error", err)
		} else {
			r.log.Error("key set fetch failed; tokens of this provider are rejected until keys arrive", "error", err)
		}
		return err
	}
	next.keys, next.maxAge = set, maxAge
	r.state.Store(next)
	r.fetchesOK.Add(1)
	r.lastSuccess.Store(next.fetched.UnixNano())
	r.log.Debug("key set fetched", "keys", set.Len(), "refresh_in", maxAge)
	return nil
}

func (r *RemoteKeys) download(ctx context.Context) (*KeySet, time.Duration, error) {
	if r.jwksURI == "" {
		uri, err := r.discover(ctx)
		if err != nil {
			return nil, 0, err
		}
		r.jwksURI = uri
	}
	body, hdr, err := r.get(ctx, r.jwksURI)
	if err != nil {
		return nil, 0, err
	}
	set, skipped, err := ParseKeySet(body)
	if err != nil {
		return nil, 0, fmt.Errorf("jwks from %s: %w", r.jwksURI, err)
	}
	for _, s := range skipped {
		r.log.Warn("skipping a key in the key set", "reason", s)
	}
	if set.Len() == 0 {
		return nil, 0, fmt.Errorf("jwks from %s has no usable keys", r.jwksURI)
	}
	return set, refreshInterval(hdr.Get("Cache-Control")), nil
}

func (r *RemoteKeys) discover(ctx context.Context) (string, error) {
	body, _, err := r.get(ctx, r.cfg.WellKnownURL)
	if err != nil {
		return "", err
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("discovery document %s is not valid JSON: %w", r.cfg.WellKnownURL, err)
	}
	// OpenID Connect Discovery §4.3: the issuer must match exactly, or the
	// document may be serving another issuer's keys.
	if doc.Issuer != r.cfg.Issuer {
		return "", fmt.Errorf("discovery document %s names issuer %q, not %q", r.cfg.WellKnownURL, doc.Issuer, r.cfg.Issuer)
	}
	u, err := url.Parse(doc.JWKSURI)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("discovery document %s has no valid jwks_uri", r.cfg.WellKnownURL)
	}
	if want := r.cfg.ExpectJWKSURI; want != "" && doc.JWKSURI != want {
		source := r.cfg.ExpectSource
		if source == "" {
			source = "the well-known URL and the expected jwks_uri"
		}
		return "", fmt.Errorf("discovery document %s gives jwks_uri %q, not %q: %s disagree", r.cfg.WellKnownURL, doc.JWKSURI, want, source)
	}
	return doc.JWKSURI, nil
}

func (r *RemoteKeys) get(ctx context.Context, uri string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/json")
	// Errors name the URL without its query or user info, which may hold
	// a secret (an API key in a key set's URL): errors reach logs.
	shown := req.URL.Scheme + "://" + req.URL.Host + req.URL.Path
	resp, err := r.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return nil, nil, fmt.Errorf("GET %s: %w", shown, ue.Err)
		}
		return nil, nil, err
	}
	defer resp.Body.Close()
	uri = shown
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET %s: status %s", uri, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", uri, err)
	}
	if len(body) > maxDocumentSize {
		return nil, nil, fmt.Errorf("GET %s: response is larger than %d bytes", uri, maxDocumentSize)
	}
	return body, resp.Header, nil
}

// refreshInterval reads max-age from a Cache-Control header, clamped to
// MinRefreshInterval – MaxRefreshInterval; DefaultRefreshInterval without one.
func refreshInterval(cacheControl string) time.Duration {
	for _, d := range strings.Split(cacheControl, ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), "=")
		switch strings.ToLower(name) {
		case "no-cache", "no-store":
			return MinRefreshInterval
		case "max-age":
			secs, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64)
			if err != nil || secs < 0 {
				return DefaultRefreshInterval
			}
			if secs > int64(MaxRefreshInterval/time.Second) {
				return MaxRefreshInterval
			}
			return max(time.Duration(secs)*time.Second, MinRefreshInterval)
		}
	}
	return DefaultRefreshInterval
}
