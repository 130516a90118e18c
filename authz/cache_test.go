package authz

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/internal/idptest"
)

// countingKeys counts lookups on real keys, to see whether a validation
// reached the signature check.
type countingKeys struct {
	StaticKeys
	n atomic.Int64
}

func (c *countingKeys) Key(ctx context.Context, kid string) (*Key, error) {
	c.n.Add(1)
	return c.StaticKeys.Key(ctx, kid)
}

func staticProvider(t testing.TB, name, issuer string, k *idptest.Key) (*Provider, *countingKeys) {
	t.Helper()
	key, err := NewKey(k.ID, k.Alg, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	set, err := NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	keys := &countingKeys{StaticKeys: StaticKeys{Set: set}}
	p, err := NewProvider(ProviderConfig{Name: name, Issuer: issuer, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	return p, keys
}

func token(t testing.TB, k *idptest.Key, iss string, exp time.Time, extra ...any) string {
	claims := map[string]any{"iss": iss, "sub": "user-1", "exp": exp.Unix()}
	for i := 0; i < len(extra); i += 2 {
		claims[extra[i].(string)] = extra[i+1]
	}
	return idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID}, claims)
}

func TestCacheHitSkipsVerification(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	p, keys := staticProvider(t, "a", "https://a.example", k)
	q, _ := staticProvider(t, "b", "https://b.example", k)
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p, q}, Aliases: map[string]string{"alias": "a"}, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok := token(t, k, "https://a.example", clock.Now().Add(time.Hour))
	first, err := v.Validate(ctx, "a", tok)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "alias"} {
		again, err := v.Validate(ctx, name, tok)
		if err != nil || again != first {
			t.Fatalf("%s: second validation %v, same claims %v", name, err, again == first)
		}
	}
	if n := keys.n.Load(); n != 1 {
		t.Fatalf("%d key lookups, want 1 (hits must not verify again)", n)
	}
	// Another provider never reuses the entry: it checks from scratch.
	if _, err := v.Validate(ctx, "b", tok); !errors.Is(err, ErrIssuerNotTrusted) {
		t.Fatalf("other provider: %v", err)
	}

	// exp is re-checked on every hit, and an expired entry is dropped.
	clock.Advance(time.Hour)
	if _, err := v.Validate(ctx, "a", tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("after exp: %v", err)
	}
	if v.cache.len() != 0 {
		t.Fatal("expired entry still cached")
	}
}

// A token that reuses a cached token's signature with another header or
// payload is not a hit: it is verified, and fails.
func TestCacheHitNeedsTheWholeToken(t *testing.T) {
	for _, alg := range []string{"ES256", "RS256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			k := idptest.NewKey(t, "k1", alg)
			p, keys := staticProvider(t, "a", "https://a.example", k)
			v, _ := NewValidator(ValidatorConfig{Providers: []*Provider{p}})
			ctx := context.Background()
			exp := time.Now().Add(time.Hour)
			tok := token(t, k, "https://a.example", exp)
			if _, err := v.Validate(ctx, "a", tok); err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(tok, ".")
			forgedPayload := idptest.Segment(t, map[string]any{"iss": "https://a.example", "sub": "admin", "exp": exp.Unix()})
			for _, forged := range []string{
				parts[0] + "." + forgedPayload + "." + parts[2],
				idptest.Segment(t, map[string]any{"alg": alg, "kid": "k1", "x": 1}) + "." + parts[1] + "." + parts[2],
			} {
				if _, err := v.Validate(ctx, "a", forged); !errors.Is(err, ErrSignatureInvalid) {
					t.Fatalf("forged token: %v", err)
				}
			}
			if n := keys.n.Load(); n != 3 {
				t.Fatalf("%d verifications, want 3 (forgeries must not hit)", n)
			}
			// The genuine token still hits.
			if c, err := v.Validate(ctx, "a", tok); err != nil || c.Subject != "user-1" || keys.n.Load() != 3 {
				t.Fatalf("genuine token after forgeries: %v", err)
			}
		})
	}
}

func TestCacheFailuresNotCached(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	p, keys := staticProvider(t, "a", "https://a.example", k)
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	v, _ := NewValidator(ValidatorConfig{Providers: []*Provider{p}, Now: clock.Now})
	tok := token(t, k, "https://a.example", clock.Now().Add(time.Hour), "nbf", clock.Now().Add(time.Minute).Unix())
	for range 2 {
		if _, err := v.Validate(context.Background(), "a", tok); !errors.Is(err, ErrNotYetValid) {
			t.Fatal(err)
		}
	}
	if v.cache.len() != 0 {
		t.Fatal("a failure was cached")
	}
	clock.Advance(time.Minute)
	if _, err := v.Validate(context.Background(), "a", tok); err != nil {
		t.Fatal(err)
	}
	if keys.n.Load() != 1 || v.cache.len() != 1 {
		t.Fatalf("lookups %d, cached %d", keys.n.Load(), v.cache.len())
	}
}

func TestCacheBound(t *testing.T) {
	for _, size := range []int{1, 10, 100, 5000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			c := newTokenCache(size)
			claims := &Claims{exp: 2e9}
			for i := range size * 3 {
				key := sha256.Sum256(fmt.Appendf(nil, "token-%d", i))
				c.put(&key, cacheEntry{claims: claims}, 1e9)
			}
			if n := c.len(); n > size || n < size/2 {
				t.Fatalf("%d entries, bound %d", n, size)
			}
		})
	}
}

func TestCacheEvictsExpiredFirst(t *testing.T) {
	c := newTokenCache(8)
	live, dead := &Claims{exp: 2e9}, &Claims{exp: 1}
	var liveKeys [][32]byte
	for i := range 8 {
		key := sha256.Sum256(fmt.Appendf(nil, "t-%d", i))
		cl := live
		if i == 3 {
			cl = dead
		} else {
			liveKeys = append(liveKeys, key)
		}
		c.put(&key, cacheEntry{claims: cl}, 1e9)
	}
	key := sha256.Sum256([]byte("new"))
	c.put(&key, cacheEntry{claims: live}, 1e9)
	for _, k := range liveKeys {
		if _, ok := c.get(&k); !ok {
			t.Fatal("a live entry was evicted while an expired one was there")
		}
	}
}
