package authz

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	// a list that may be empty (vakt's own tokens: the registered applications).
	RequireAudience bool
	Algorithms      []string      // allowlist; DefaultAlgorithms when empty
	Leeway          time.Duration // clock skew allowed on exp, nbf and iat
	Keys            KeySource     // this issuer's keys, and no one else's
}

// Provider verifies tokens of one issuer.
type Provider struct {
	name       string
	issuer     string
	audiences  []string
	checkAud   bool
	algorithms []string
	leeway     time.Duration
	keys       KeySource
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
	return &Provider{
		name:       cfg.Name,
		issuer:     cfg.Issuer,
		audiences:  slices.Clone(cfg.Audiences),
		checkAud:   cfg.RequireAudience || len(cfg.Audiences) > 0,
		algorithms: slices.Clone(algs),
		leeway:     cfg.Leeway,
		keys:       cfg.Keys,
	}, nil
}

// Name returns the provider's configured name.
func (p *Provider) Name() string { return p.name }

// Issuer returns the issuer identifier the provider trusts.
func (p *Provider) Issuer() string { return p.issuer }

// verify checks a token from scratch. The steps, each with its own error:
//  1. structure (parseCompact): size, compact serialization, strict base64url,
//     JSON objects without repeated names, no crit/b64/jku/x5u/jwk headers;
//  2. alg on this provider's allowlist (never none or HMAC);
//  3. claims decoded; exp present; exp, nbf and iat numbers;
//  4. iss equal to this provider's issuer, byte for byte;
//  5. exp and nbf with leeway; iat not in the future;
//  6. aud contains a configured audience, when audiences are configured or
//     required (an empty required list rejects every token: fail closed);
//  7. the key with the token's kid from this issuer's key set only, and alg
//     one that key may verify;
//  8. the signature.
//
// Cheap checks come before the key lookup so that tokens of other issuers or
// expired tokens cost no key fetch and no signature check.
func (p *Provider) verify(ctx context.Context, token string, now time.Time, maxSize int) (*Claims, error) {
	pt, err := parseCompact(token, maxSize)
	if err != nil {
		return nil, err
	}
	c, err := parseClaims(pt.payload)
	if err != nil {
		return nil, err
	}
	return p.verifyParsed(ctx, pt, c, now)
}

// verifyParsed is verify from step 2 on, for a token already parsed (steps
// 1 and 3), so that choosing the provider by iss costs no second parse.
func (p *Provider) verifyParsed(ctx context.Context, pt *parsedToken, c *Claims, now time.Time) (*Claims, error) {
	if !slices.Contains(p.algorithms, pt.alg) {
		return nil, fmt.Errorf("%w: %s", ErrAlgorithmNotAllowed, quoted(pt.alg))
	}
	if c.Issuer != p.issuer {
		return nil, ErrIssuerNotTrusted
	}
	if err := c.checkTimes(now, p.leeway); err != nil {
		return nil, err
	}
	if err := c.checkIssuedAt(now, p.leeway); err != nil {
		return nil, err
	}
	if p.checkAud && !slices.ContainsFunc(c.Audience, func(a string) bool {
		return slices.Contains(p.audiences, a)
	}) {
		return nil, ErrAudienceInvalid
	}
	key, err := p.keys.Key(ctx, pt.kid)
	if err != nil {
		return nil, err
	}
	if !key.Allows(pt.alg) {
		return nil, fmt.Errorf("%w: %s does not match key %s", ErrAlgorithmNotAllowed, pt.alg, quoted(pt.kid))
	}
	if err := jwsbb.Verify(key.public, pt.alg, []byte(pt.signingInput), pt.signature); err != nil {
		return nil, ErrSignatureInvalid
	}
	return c, nil
}
