package authz

import (
	"context"
	"fmt"
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

// BenchmarkTokenDigest is the part of a cache hit spent hashing the
// token's signature (signatureKey): ES256's, RS256's of a 2048-bit key.
func BenchmarkTokenDigest(b *testing.B) {
	for _, n := range []int{86, 342} {
		sig := strings.Repeat("x", n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				_ = signatureKey(sig)
			}
		})
	}
}

// hostileTokens are the shapes a client can send to make a token costly
// before its signature is checked, each about 15 KB, beside a normal token
// and a benign one of the same size. Each is signed, but with a kid the
// provider does not have: what is measured is all vakt does before the
// signature, up to the key lookup that refuses it.
func hostileTokens(b *testing.B, k *idptest.Key, now time.Time) []struct{ name, token string } {
	base := map[string]any{
		"iss": "https://idporten.example/", "sub": "user-1", "aud": "my-api",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	with := func(extra map[string]any) map[string]any {
		m := map[string]any{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	// Each shape is as large as fits under the default 16 KiB limit.
	name := func(i int) string {
		const digits = "abcdefghijklmnopqrstuvwxyz0123456789"
		s := ""
		for ; i > 0 || s == ""; i /= len(digits) {
			s += string(digits[i%len(digits)])
		}
		return s
	}
	words := make([]string, 3300)
	for i := range words {
		words[i] = name(i)
	}
	empties := make([]any, 3400)
	for i := range empties {
		empties[i] = map[string]any{}
	}
	auds := make([]string, 1600)
	for i := range auds {
		auds[i] = name(i)
	}
	members := map[string]any{}
	for i := range 1400 {
		members[name(i)] = 1
	}
	deep := strings.Repeat("[", 31) + strings.Repeat("]", 31)
	deepList := strings.TrimSuffix(strings.Repeat(deep+",", 160), ",")
	sign := func(claims any) string {
		return idptest.Sign(b, k, k.Alg, map[string]any{"alg": k.Alg, "kid": "unknown-kid"}, claims)
	}
	return []struct{ name, token string }{
		{"normal", sign(with(nil))},
		{"large_benign", sign(with(map[string]any{"blob": strings.Repeat("b", 11500)}))},
		{"many_scopes", sign(with(map[string]any{"scope": strings.Join(words, " ")}))},
		{"empty_objects", sign(with(map[string]any{"o": empties}))},
		{"big_aud", sign(with(map[string]any{"aud": auds}))},
		{"many_members", sign(with(members))},
		{"deep_nesting", sign(strings.Replace(idptest.JSON(b, with(nil)), `"sub"`, `"d":[`+deepList+`],"sub"`, 1))},
		// The header is parsed in full before the signature: it is capped.
		{"header_objects", idptest.Sign(b, k, k.Alg, `{"alg":"`+k.Alg+`","kid":"unknown-kid","x":[`+strings.TrimSuffix(strings.Repeat("{},", 3400), ",")+`]}`, with(nil))},
		{"header_members", idptest.Sign(b, k, k.Alg, strings.Replace(idptest.JSON(b, members), "{", `{"alg":"`+k.Alg+`","kid":"unknown-kid",`, 1), with(nil))},
	}
}

// BenchmarkHostile measures what a token a client made costs before its
// signature is checked, for each hostile shape beside a normal token and a
// benign one of the same size; the provider trusts 2,000 audiences, as
// vakt's own provider does with 2,000 applications.
func BenchmarkHostile(b *testing.B) {
	k := idptest.NewKey(b, "k1", "RS256")
	key, _ := NewKey(k.ID, k.Alg, k.Public())
	set, _ := NewKeySet(key)
	auds := make([]string, 2000)
	for i := range auds {
		auds[i] = "app-" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
	}
	auds[0] = "my-api"
	p, err := NewProvider(ProviderConfig{Name: "idporten", Issuer: "https://idporten.example/", Audiences: auds, Keys: StaticKeys{Set: set}})
	if err != nil {
		b.Fatal(err)
	}
	v, _ := NewValidator(ValidatorConfig{Providers: []*Provider{p}, CacheSize: -1})
	ctx := context.Background()
	for _, tt := range hostileTokens(b, k, time.Now()) {
		if len(tt.token) > DefaultMaxTokenSize {
			b.Fatalf("%s: %d bytes, over the limit", tt.name, len(tt.token))
		}
		b.Run(tt.name, func(b *testing.B) {
			b.SetBytes(int64(len(tt.token)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := v.ValidateByIssuer(ctx, tt.token); err == nil {
					b.Fatal("accepted")
				}
			}
		})
	}
}

// BenchmarkParseClaims measures the full parse of each shape's payload, as
// it happens after a signature verified: a trusted issuer's hostile token
// costs time linear in its size, and the caps refuse what goes too far.
// The shapes of a hostile header are refused before the payload is read.
func BenchmarkParseClaims(b *testing.B) {
	k := idptest.NewKey(b, "k1", "ES256")
	for _, tt := range hostileTokens(b, k, time.Now()) {
		pt, err := parseCompact(tt.token, DefaultMaxTokenSize)
		if err != nil {
			if strings.HasPrefix(tt.name, "header_") {
				continue
			}
			b.Fatal(err)
		}
		b.Run(tt.name, func(b *testing.B) {
			b.SetBytes(int64(len(pt.payload)))
			b.ReportAllocs()
			for b.Loop() {
				_, _, _ = parseClaims(pt.payload, pt.signingInput, 0)
			}
		})
	}
}
