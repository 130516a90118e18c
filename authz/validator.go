package authz

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vakt-dev/vakt/internal/cache"
)

// ValidatorConfig configures a Validator.
type ValidatorConfig struct {
	Providers []*Provider
	// Aliases maps extra names to a provider's name ("vakt" → "tokenx").
	Aliases map[string]string
	// MaxTokenSize caps tokens in bytes; DefaultMaxTokenSize when zero.
	MaxTokenSize int
	// Cache, when set, is the verified-token cache, shared with the
	// Validators of other configurations (see TokenCache). Without it the
	// Validator makes its own, of CacheSize and CacheBytes.
	Cache *TokenCache
	// CacheSize bounds the verified-token cache in entries; DefaultCacheSize
	// when zero, no cache when negative.
	CacheSize int
	// CacheBytes bounds it in bytes; DefaultCacheBytes when zero.
	CacheBytes int64
	// Registered reports whether an application id is registered: the
	// tokens of a provider with ApplicationAudience must name one in aud.
	// Nil registers none, and refuses all of them.
	Registered func(id string) bool
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Validator validates tokens against named identity providers, remembering
// tokens that passed so that a repeated token costs a hash and a lookup.
//
// A Validator is immutable and safe for concurrent use. A configuration
// change builds a new one, over the same cache (ValidatorConfig.Cache):
// the cache holds what the providers verified, and depends on nothing
// else. A provider whose configuration did not change is the same
// *Provider, and its tokens stay cached; one that changed or was removed
// is retired (TokenCache.Retire), and its tokens are served by no
// Validator from then on, so a tightened audience or a removed provider
// takes effect at once. What depends on the applications (an own token's
// aud, ApplicationAudience) is this Validator's, checked on every result.
type Validator struct {
	providers  map[string]*Provider
	byIssuer   map[string]*Provider
	maxSize    int
	cache      *tokenCache
	registered func(id string) bool
	now        func() time.Time
}

// NewValidator returns a Validator over cfg's providers.
func NewValidator(cfg ValidatorConfig) (*Validator, error) {
	v := &Validator{
		providers:  make(map[string]*Provider, len(cfg.Providers)+len(cfg.Aliases)),
		byIssuer:   make(map[string]*Provider, len(cfg.Providers)),
		maxSize:    cfg.MaxTokenSize,
		registered: cfg.Registered,
		now:        cfg.Now,
	}
	for _, p := range cfg.Providers {
		if _, dup := v.providers[p.name]; dup {
			return nil, fmt.Errorf("identity provider %q is configured twice", p.name)
		}
		v.providers[p.name] = p
		if _, dup := v.byIssuer[p.issuer]; dup {
			return nil, fmt.Errorf("issuer %q belongs to two identity providers", p.issuer)
		}
		v.byIssuer[p.issuer] = p
	}
	for alias, name := range cfg.Aliases {
		p, ok := v.providers[name]
		if !ok {
			return nil, fmt.Errorf("alias %q names unknown identity provider %q", alias, name)
		}
		if _, dup := v.providers[alias]; dup {
			return nil, fmt.Errorf("alias %q is already an identity provider", alias)
		}
		v.providers[alias] = p
	}
	if v.maxSize <= 0 {
		v.maxSize = DefaultMaxTokenSize
	}
	tc := cfg.Cache
	if tc == nil {
		tc = NewTokenCache(cfg.CacheSize, cfg.CacheBytes)
	}
	if tc != nil {
		v.cache = tc.c
	}
	if v.now == nil {
		v.now = time.Now
	}
	return v, nil
}

// CacheStats counts the verified-token cache: entries, bytes, evictions,
// hits and misses. ok is false when the cache is off.
func (v *Validator) CacheStats() (_ CacheStats, ok bool) {
	if v.cache == nil {
		return CacheStats{}, false
	}
	return v.cache.Stats(), true
}

// Provider returns the provider with a name or alias.
func (v *Validator) Provider(name string) (*Provider, bool) {
	p, ok := v.providers[name]
	return p, ok
}

// Validate checks token against the named identity provider (see
// Provider.verify for every step) and returns its claims. Every rejection
// wraps one of the package's sentinel errors.
func (v *Validator) Validate(ctx context.Context, provider, token string) (*Claims, error) {
	c, _, err := v.validateRaw(ctx, provider, token, false)
	return c, err
}

// ValidateRaw is Validate, also returning every claim as Claims.Raw does:
// the map the verification parsed when the token was not in the cache, so
// that a new token's payload is parsed once.
func (v *Validator) ValidateRaw(ctx context.Context, provider, token string) (*Claims, map[string]any, error) {
	return v.validateRaw(ctx, provider, token, true)
}

func (v *Validator) validateRaw(ctx context.Context, provider, token string, wantRaw bool) (*Claims, map[string]any, error) {
	p, ok := v.providers[provider]
	if !ok {
		return nil, nil, fmt.Errorf("%w: %s", ErrUnknownProvider, quoted(provider))
	}
	c, raw, err := v.validate(ctx, p, token)
	if err == nil && raw == nil && wantRaw {
		raw = c.Raw()
	}
	return c, raw, err
}

// ValidateByIssuer checks token against the provider whose issuer is the
// token's iss, for callers that accept tokens of every configured provider.
// It returns the provider too. A token whose iss no provider has is
// ErrIssuerNotTrusted.
func (v *Validator) ValidateByIssuer(ctx context.Context, token string) (*Claims, *Provider, error) {
	if e, _, ok, err := v.cachedByIssuer(token); ok {
		if err == nil {
			err = v.admit(e.provider, e.claims)
		}
		if err != nil {
			return nil, nil, err
		}
		return e.claims, e.provider, nil
	}
	c, _, p, _, err := v.verifyByIssuer(ctx, token)
	if err == nil {
		err = v.admit(p, c)
	}
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

// ValidateByIssuerRaw is ValidateByIssuer, also returning every claim as
// ValidateRaw does.
func (v *Validator) ValidateByIssuerRaw(ctx context.Context, token string) (*Claims, map[string]any, *Provider, error) {
	if e, _, ok, err := v.cachedByIssuer(token); ok {
		if err == nil {
			err = v.admit(e.provider, e.claims)
		}
		if err != nil {
			return nil, nil, nil, err
		}
		return e.claims, e.claims.Raw(), e.provider, nil
	}
	c, raw, p, _, err := v.verifyByIssuer(ctx, token)
	if err == nil {
		err = v.admit(p, c)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	return c, raw, p, nil
}

// verifyByIssuer is ValidateByIssuer after a cache miss, without the
// Validator's own rule (admit), which its callers apply. The token is
// parsed once: its iss chooses whose keys verify it. It returns every claim
// too, as the verification parsed them (the caller's own map), and the
// token's key in the cache.
func (v *Validator) verifyByIssuer(ctx context.Context, token string) (*Claims, map[string]any, *Provider, cache.Key, error) {
	pt, err := parseCompact(token, v.maxSize)
	if err != nil {
		return nil, nil, nil, cache.Key{}, err
	}
	top, err := scanTop(pt.payload)
	if err != nil {
		return nil, nil, nil, cache.Key{}, fmt.Errorf("%w: payload %v", ErrMalformed, err)
	}
	// exp, nbf and iat are read now, whoever the issuer: a malformed date is
	// the same answer for every provider.
	var t timeClaims
	if err := t.read(&top); err != nil {
		return nil, nil, nil, cache.Key{}, err
	}
	iss, _, err := top.str(top.iss, "iss")
	if err != nil {
		return nil, nil, nil, cache.Key{}, err
	}
	p, ok := v.byIssuer[iss]
	if !ok {
		return nil, nil, nil, cache.Key{}, ErrIssuerNotTrusted
	}
	now := v.now()
	c, raw, err := p.verifyParsed(ctx, pt, &top, now)
	if err != nil {
		return nil, nil, nil, cache.Key{}, err
	}
	key := v.store(token, p, c, now)
	return c, raw, p, key, nil
}

// validate is Validate with p chosen; on a cache miss it returns every
// claim too (nil on a hit).
func (v *Validator) validate(ctx context.Context, p *Provider, token string) (*Claims, map[string]any, error) {
	if len(token) > v.maxSize {
		return nil, nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(token), v.maxSize)
	}
	if v.cache != nil {
		if e, _, ok, err := v.cached(token, p); ok {
			if err == nil {
				err = v.admit(p, e.claims)
			}
			if err != nil {
				return nil, nil, err
			}
			return e.claims, nil, nil
		}
	}
	now := v.now()
	c, raw, err := p.verify(ctx, token, now, v.maxSize)
	if err != nil {
		return nil, nil, err
	}
	// Stored whatever admit says: the cache holds what the provider
	// verified, and admit is asked again on every hit.
	v.store(token, p, c, now)
	if err := v.admit(p, c); err != nil {
		return nil, nil, err
	}
	return c, raw, nil
}

// admit is the Validator's own rule, after the provider's: a provider with
// ApplicationAudience accepts a token only with an aud that is a
// registered application (ErrAudienceInvalid). It is asked of every
// result, cached or not, as the applications are this Validator's
// configuration and the cache is not; and only once the signature has
// verified, so that a forged token says nothing of which applications
// exist.
func (v *Validator) admit(p *Provider, c *Claims) error {
	if !p.appAud {
		return nil
	}
	if v.registered != nil && c.anyOf(listAud, v.registered) {
		return nil
	}
	return ErrAudienceInvalid
}

// store remembers a token that passed verification, and returns its key:
// unless its provider is retired, whose tokens are served no more.
func (v *Validator) store(token string, p *Provider, c *Claims, now time.Time) cache.Key {
	if v.cache == nil || p.retired.Load() {
		return cache.Key{}
	}
	dot := signatureDot(token)
	key := signatureKey(token[dot+1:])
	// The claims hold a copy of the signed part, never the caller's buffer.
	e := cacheEntry{provider: p, claims: c}
	v.cache.Put(&key, e, entrySize(&e), expiryNanos(c.exp, p), now.UnixNano())
	// Retired meanwhile, its sweep may have passed this key before the
	// Put: Retire sets the flag before it sweeps, so one of the two sees
	// the entry. (Were the same token stored under the provider configured
	// now at this instant, it would be verified once more.)
	if p.retired.Load() {
		v.cache.Remove(&key)
	}
	return key
}

// cached looks token up. The cache is keyed by the SHA-256 of the signature
// segment, and an entry keeps the signed part (header.payload) it was
// verified with; a hit needs both to match, so only a byte-identical token
// hits. Hashing the signature instead of the whole token keeps a hit cheap
// (86 bytes for ES256 rather than the whole token) while the cache still
// holds no credential: the signature is kept only as a digest. An entry of
// a retired provider is a miss (one atomic load), and with want set, so is
// an entry of another provider. ok reports a hit; err is set when the hit
// has expired since (exp and nbf are re-checked on every hit).
func (v *Validator) cached(token string, want *Provider) (e cacheEntry, key cache.Key, ok bool, err error) {
	dot := signatureDot(token)
	if dot < 0 {
		return cacheEntry{}, key, false, nil
	}
	key = signatureKey(token[dot+1:])
	now := v.now()
	e, hit := v.cache.Get(&key, now.UnixNano())
	if !hit || e.provider.retired.Load() || (want != nil && e.provider != want) || e.claims.signed() != token[:dot] {
		return cacheEntry{}, key, false, nil
	}
	if err := e.claims.checkTimes(now, e.provider.leeway); err != nil {
		if errors.Is(err, ErrExpired) {
			v.cache.Remove(&key)
		}
		return cacheEntry{}, key, true, err
	}
	return e, key, true, nil
}

// cachedByIssuer is the cache half of ValidateByIssuer, for the Checker. A
// token over the size limit is a "hit" with ErrTooLarge: it is refused
// before anything is hashed or parsed.
func (v *Validator) cachedByIssuer(token string) (cacheEntry, cache.Key, bool, error) {
	if len(token) > v.maxSize {
		return cacheEntry{}, cache.Key{}, true, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(token), v.maxSize)
	}
	if v.cache == nil {
		return cacheEntry{}, cache.Key{}, false, nil
	}
	return v.cached(token, nil)
}

// signatureDot is the index of the dot before a compact JWS's signature:
// the second dot, found scanning forward (IndexByte is vectorised; the
// signature is the token's tail, often a third of it); -1 without two.
func signatureDot(token string) int {
	first := strings.IndexByte(token, '.')
	if first < 0 {
		return -1
	}
	second := strings.IndexByte(token[first+1:], '.')
	if second < 0 {
		return -1
	}
	return first + 1 + second
}

// signatureKey is the SHA-256 of the signature, through an array on the
// stack (a signature of up to a 3072-bit RSA key's in one piece): a hit
// allocates nothing, where sha256.Sum256([]byte(sig)) would copy the
// signature to the heap (the conversion escapes into the hash's assembly).
// It costs 2–4 % more than hashing the string's bytes in place would
// (5 ns for ES256's 86 bytes, 8 for RS256's 342).
func signatureKey(sig string) (sum [32]byte) {
	h := sha256.New() // inlined, and on the stack
	var buf [8 * sha256.BlockSize]byte
	for sig != "" {
		n := copy(buf[:], sig)
		h.Write(buf[:n])
		sig = sig[n:]
	}
	h.Sum(sum[:0])
	return sum
}
