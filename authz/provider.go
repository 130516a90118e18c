package authz

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"
)

// KeySource gives the verification key with a kid. A remote source may fetch
// on a miss; every source returns ErrKeyNotFound for a kid it cannot find and
// ErrKeysUnavailable while it has no keys at all.
type KeySource interface {
	Key(ctx context.Context, kid string) (*Key, error)
}

// ProviderConfig describes an identity provider: whose tokens, verified with
// which keys, for which audiences.
type ProviderConfig struct {
	Name      string
	Issuer    string   // compared to iss exactly
	Audiences []string // when set, aud must contain one of them
	// RequireAudience makes an empty Audiences reject every token instead of
	// skipping the audience check, for providers whose audiences come from
	// a list that may be empty.
	RequireAudience bool
	// AudienceAfterSignature checks aud only once the signature has
	// verified, for providers whose audiences are the registered
	// applications: checking it first would answer a forged token for a
	// registered application differently (and later) than one for an
	// unregistered one, telling a prober which exist.
	AudienceAfterSignature bool
	// SignatureFirst checks the signature before anything the token claims
	// (iss, exp, nbf, iat, typ, aud), for providers whose mere existence a
	// prober must not learn from the answer: a client's assertions. Only
	// the structure and the alg allowlist, the same for every client, come
	// first.
	SignatureFirst bool
	Algorithms     []string      // allowlist; DefaultAlgorithms when empty
	Leeway         time.Duration // clock skew allowed on exp, nbf and iat
	Keys           KeySource     // this issuer's keys, and no one else's
	// Type, when set, is the typ header every token must have (RFC 8725
	// §3.11: "at+jwt" for RFC 9068 access tokens). RejectType is a typ no
	// token may have ("at+jwt" for client assertions, so that an access
	// token is never taken for one). Both compare as RFC 7515 §4.1.9 says:
	// without case, and with or without "application/".
	Type, RejectType string
	// Own marks vakt's own tokens: the only ones whose idp claim is
	// believed (see IdentityProvider).
	Own bool
	// ApplicationAudience requires an aud that is a registered application,
	// which the Validator checks (ValidatorConfig.Registered) on every
	// token of the provider, cached or not, after its signature, so that a
	// forged token says nothing of which applications exist. The provider
	// then does not depend on the applications: a policy change keeps it,
	// and the tokens it verified stay in the cache (vakt's own tokens).
	ApplicationAudience bool
}

// Provider verifies tokens of one issuer.
type Provider struct {
	name string
	// retired is set once the provider's configuration changed or it was
	// removed (TokenCache.Retire): its cached tokens are served no more,
	// and none is stored, even for a request still reading a validator
	// that has it. One atomic load on a cache hit, beside the name Check
	// reads.
	retired     atomic.Bool
	issuer      string
	audiences   []string
	audienceSet map[string]struct{}
	checkAud    bool
	audLate     bool
	sigFirst    bool
	algorithms  []string
	leeway      time.Duration
	keys        KeySource
	typ         string // normalised; "" when not required
	notTyp      string // normalised; "" when none is refused
	own         bool
	appAud      bool
	// config is what the provider was made of, for SameConfig.
	config ProviderConfig
}

// NewProvider checks cfg and returns a Provider.
func NewProvider(cfg ProviderConfig) (*Provider, error) {
	if cfg.Name == "" || cfg.Issuer == "" || cfg.Keys == nil {
		return nil, errors.New("identity provider needs a name, an issuer and keys")
	}
	algs := cfg.Algorithms
	if len(algs) == 0 {
		algs = DefaultAlgorithms
	}
	for _, a := range algs {
		if !SupportedAlgorithm(a) {
			return nil, fmt.Errorf("identity provider %s: algorithm %q is not supported", cfg.Name, a)
		}
	}
	if cfg.Leeway < 0 {
		return nil, fmt.Errorf("identity provider %s: leeway is negative", cfg.Name)
	}
	set := make(map[string]struct{}, len(cfg.Audiences))
	for _, a := range cfg.Audiences {
		set[a] = struct{}{}
	}
	config := cfg
	config.Audiences, config.Algorithms = slices.Clone(cfg.Audiences), slices.Clone(cfg.Algorithms)
	return &Provider{
		config:      config,
		audienceSet: set,
		name:        cfg.Name,
		issuer:      cfg.Issuer,
		audiences:   slices.Clone(cfg.Audiences),
		checkAud:    cfg.RequireAudience || len(cfg.Audiences) > 0,
		audLate:     cfg.AudienceAfterSignature,
		sigFirst:    cfg.SignatureFirst,
		algorithms:  slices.Clone(algs),
		leeway:      cfg.Leeway,
		keys:        cfg.Keys,
		typ:         normalType(cfg.Type),
		notTyp:      normalType(cfg.RejectType),
		own:         cfg.Own,
		appAud:      cfg.ApplicationAudience,
	}, nil
}

// SameConfig reports whether p was made of a configuration equal to cfg, so
// that it may serve in its place and keep its cached tokens: every setting
// equal, and the same keys (the same KeySource, or static sets of the same
// keys, as vakt's own are when its signing keys did not change).
func (p *Provider) SameConfig(cfg ProviderConfig) bool {
	a := &p.config
	return a.Name == cfg.Name && a.Issuer == cfg.Issuer &&
		slices.Equal(a.Audiences, cfg.Audiences) && a.RequireAudience == cfg.RequireAudience &&
		a.AudienceAfterSignature == cfg.AudienceAfterSignature && a.SignatureFirst == cfg.SignatureFirst &&
		slices.Equal(a.Algorithms, cfg.Algorithms) && a.Leeway == cfg.Leeway &&
		a.Type == cfg.Type && a.RejectType == cfg.RejectType && a.Own == cfg.Own &&
		a.ApplicationAudience == cfg.ApplicationAudience && sameKeys(a.Keys, cfg.Keys)
}

// sameKeys reports whether two key sources are the same keys: static sets
// by their keys, any other source by identity (a *RemoteKeys the server's
// KeySets keeps for settings that did not change). A source of another
// kind is never the same: a new provider costs a signature check per token,
// a wrong match a token served that its keys no longer verify.
func sameKeys(a, b KeySource) bool {
	if sa, ok := a.(StaticKeys); ok {
		sb, ok := b.(StaticKeys)
		return ok && sa.Set.Equal(sb.Set)
	}
	ta := reflect.TypeOf(a)
	return ta != nil && ta.Kind() == reflect.Pointer && ta == reflect.TypeOf(b) && a == b
}

// normalType is a typ value as RFC 7515 §4.1.9 compares it: without case,
// and without an "application/" prefix.
func normalType(t string) string {
	t = strings.ToLower(t)
	return strings.TrimPrefix(t, "application/")
}

// IdentityProvider names who authenticated the user of a token this
// provider verified. Only vakt's own tokens are believed when they say
// (idp: they carry over the provider of the token they were exchanged
// for); for any other token it is the provider's issuer, whatever the
// token claims, so that no provider can pass as another.
func (p *Provider) IdentityProvider(c *Claims) string {
	if idp := c.IDP(); p.own && idp != "" {
		return idp
	}
	return p.issuer
}

// Own reports whether the provider verifies tokens vakt issued.
func (p *Provider) Own() bool { return p.own }

// Name returns the provider's configured name.
func (p *Provider) Name() string { return p.name }

// Issuer returns the issuer identifier the provider trusts.
func (p *Provider) Issuer() string { return p.issuer }

// verify checks a token from scratch. The steps, each with its own error:
//  1. structure (parseCompact): size, compact serialization, strict base64url,
//     a header that is a JSON object without repeated names, no
//     crit/b64/jku/x5u/jwk headers;
//  2. the payload's top-level members scanned (scanTop), reading iss, exp,
//     nbf, iat and aud only; exp present; exp, nbf and iat numbers;
//  3. alg on this provider's allowlist (never none or HMAC);
//  4. iss equal to this provider's issuer, byte for byte;
//  5. exp and nbf with leeway; iat not in the future;
//  6. typ, when the provider requires or refuses one;
//  7. aud contains a configured audience, when audiences are configured or
//     required (an empty required list rejects every token: fail closed);
//  8. the key with the token's kid from this issuer's key set only, and alg
//     one that key may verify;
//  9. the signature;
//  10. the payload parsed in full, strictly (no repeated member name, no
//     number a float64 cannot hold, bounded nesting and size), and the
//     claims derived (scopes, the audience, what may become a header).
//
// Nothing a client controls costs more than a scan of its bytes before the
// signature has verified; the cheap checks before the key lookup mean that
// tokens of other issuers, expired tokens or tokens for other audiences cost
// no key fetch and no signature check. The audience check moves after the
// signature for providers that ask for it (AudienceAfterSignature), and
// steps 4–7 with it for SignatureFirst.
func (p *Provider) verify(ctx context.Context, token string, now time.Time, maxSize int) (*Claims, map[string]any, error) {
	pt, err := parseCompact(token, maxSize)
	if err != nil {
		return nil, nil, err
	}
	top, err := scanTop(pt.payload)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: payload %v", ErrMalformed, err)
	}
	return p.verifyParsed(ctx, pt, &top, now)
}

// verifyParsed is verify from step 3 on, for a token already parsed and
// scanned (steps 1 and 2), so that choosing the provider by iss costs no
// second scan. It returns the claims, and every claim as parseClaims read
// it (the caller's own map).
func (p *Provider) verifyParsed(ctx context.Context, pt *parsedToken, top *topClaims, now time.Time) (*Claims, map[string]any, error) {
	if !slices.Contains(p.algorithms, pt.alg) {
		return nil, nil, fmt.Errorf("%w: %s", ErrAlgorithmNotAllowed, quoted(pt.alg))
	}
	if !p.sigFirst {
		if err := p.preCheck(pt, top, now); err != nil {
			return nil, nil, err
		}
	}
	key, err := p.keys.Key(ctx, pt.kid)
	if err != nil {
		return nil, nil, err
	}
	if !key.Allows(pt.alg) {
		return nil, nil, fmt.Errorf("%w: %s does not match key %s", ErrAlgorithmNotAllowed, pt.alg, quoted(pt.kid))
	}
	// A copy of the signing input (the token's header.payload): jwsbb takes
	// bytes, and hands them on through interfaces.
	if err := jwsbb.Verify(key.public, pt.alg, []byte(pt.signingInput), pt.signature); err != nil {
		return nil, nil, ErrSignatureInvalid
	}
	c, raw, err := parseClaims(pt.payload, pt.signingInput, top.members)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case p.sigFirst:
		if err := p.checkClaims(pt, c, now, true); err != nil {
			return nil, nil, err
		}
	case p.audLate:
		if err := p.checkAudience(c); err != nil {
			return nil, nil, err
		}
	}
	return c, raw, nil
}

// preCheck is steps 4 to 7 on the scanned claims, before the signature:
// iss, exp, nbf, iat, typ and (unless it must wait) aud.
func (p *Provider) preCheck(pt *parsedToken, top *topClaims, now time.Time) error {
	iss, _, err := top.str(top.iss, "iss")
	if err != nil {
		return err
	}
	if iss != p.issuer {
		return ErrIssuerNotTrusted
	}
	var t timeClaims
	if err := t.read(top); err != nil {
		return err
	}
	if err := t.check(now, p.leeway); err != nil {
		return err
	}
	if err := p.checkType(pt.typ); err != nil {
		return err
	}
	if p.audLate || !p.checkAud {
		return nil
	}
	ok, err := top.audience(p.hasAudience)
	if err != nil {
		return err
	}
	if !ok {
		return ErrAudienceInvalid
	}
	return nil
}

// checkClaims checks what the parsed token says of itself: iss, exp, nbf,
// iat, typ and, with aud, its audience.
func (p *Provider) checkClaims(pt *parsedToken, c *Claims, now time.Time, aud bool) error {
	if c.Issuer() != p.issuer {
		return ErrIssuerNotTrusted
	}
	if err := c.checkTimes(now, p.leeway); err != nil {
		return err
	}
	if err := c.checkIssuedAt(now, p.leeway); err != nil {
		return err
	}
	if err := p.checkType(pt.typ); err != nil {
		return err
	}
	if aud {
		return p.checkAudience(c)
	}
	return nil
}

func (p *Provider) checkAudience(c *Claims) error {
	if !p.checkAud {
		return nil
	}
	if c.anyOf(listAud, p.hasAudience) {
		return nil
	}
	return ErrAudienceInvalid
}

// hasAudience reports whether a is one of the provider's audiences: a map
// lookup, as the list may be every registered application.
func (p *Provider) hasAudience(a string) bool {
	_, ok := p.audienceSet[a]
	return ok
}

func (p *Provider) checkType(typ string) error {
	if p.typ == "" && p.notTyp == "" {
		return nil
	}
	t := normalType(typ)
	switch {
	case p.typ != "" && t != p.typ:
		if typ == "" {
			return fmt.Errorf("%w: typ is missing, %s is required", ErrTypeNotAllowed, p.typ)
		}
		return fmt.Errorf("%w: typ %s, %s is required", ErrTypeNotAllowed, quoted(typ), p.typ)
	case p.notTyp != "" && t == p.notTyp:
		return fmt.Errorf("%w: typ %s", ErrTypeNotAllowed, quoted(typ))
	}
	return nil
}
