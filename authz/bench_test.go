package authz

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"
	"github.com/vakt-dev/vakt/internal/idptest"
)

// benchToken is a realistic access token: an ID-porten-like claim set of
// about 900 bytes signed with RS256, or about 650 with ES256.
func benchToken(b *testing.B, k *idptest.Key, now time.Time) string {
	claims := map[string]any{
		"iss": "https://idporten.example/", "sub": "Qx1aJzPzH3yH0bGzW8CCCq1LzqRIqTQwzEL2hrm3mCU=",
		"aud": "dev-gcp:team-b:app-b", "client_id": "dev-gcp:team-a:app-1", "acr": "idporten-loa-high",
		"amr": []string{"BankID"}, "pid": "12345678901", "locale": "nb", "scope": "openid profile read:users",
		"sid": "k4Nl9c7sJ7P3dN3qZg6pC3eXh2t2m5qWqjvQ", "idp": "https://idporten.example/",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"jti": "5c7a1d1e-6b1f-4e5e-9a53-2f7a3c8d9b10",
	}
	return idptest.Sign(b, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "JWT"}, claims)
}

func benchValidator(b *testing.B, alg string, cacheSize int) (*Validator, string) {
	k := idptest.NewKey(b, "k1", alg)
	p, _ := staticProvider(b, "idporten", "https://idporten.example/", k)
	v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, CacheSize: cacheSize})
	if err != nil {
		b.Fatal(err)
	}
	return v, benchToken(b, k, time.Now())
}

// BenchmarkValidateCacheHit measures a repeated token: a SHA-256 of its
// signature, a map lookup, a comparison of the signed part and the exp/nbf
// re-check.
func BenchmarkValidateCacheHit(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		b.Run(alg, func(b *testing.B) {
			v, tok := benchValidator(b, alg, 0)
			ctx := context.Background()
			if _, err := v.Validate(ctx, "idporten", tok); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(tok)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Validate(ctx, "idporten", tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkValidateCacheMiss measures the whole verification of a token
// seen for the first time (the cache is off, so every iteration misses).
func BenchmarkValidateCacheMiss(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		b.Run(alg, func(b *testing.B) {
			v, tok := benchValidator(b, alg, -1)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Validate(ctx, "idporten", tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBareVerify is the floor a cache miss is compared against: the
// signature check alone, on an already split and decoded token.
func BenchmarkBareVerify(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		b.Run(alg, func(b *testing.B) {
			k := idptest.NewKey(b, "k1", alg)
			tok := benchToken(b, k, time.Now())
			pt, err := parseCompact(tok, DefaultMaxTokenSize)
			if err != nil {
				b.Fatal(err)
			}
			pub, _ := NewKey("k1", alg, k.Public())
			input := []byte(pt.signingInput)
			b.ReportAllocs()
			for b.Loop() {
				if err := jwsbb.Verify(pub.public, alg, input, pt.signature); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTokenDigest is the part of a cache hit spent hashing the token.
func BenchmarkTokenDigest(b *testing.B) {
	tok := strings.Repeat("x", 900)
	b.SetBytes(int64(len(tok)))
	for b.Loop() {
		_ = sha256.Sum256([]byte(tok))
	}
}
