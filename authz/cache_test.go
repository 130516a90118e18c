package authz

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"strconv"
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

	// exp is re-checked on every hit; past exp the entry is no hit, and the
	// token is refused before any key lookup.
	clock.Advance(time.Hour)
	if _, err := v.Validate(ctx, "a", tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("after exp: %v", err)
	}
	if n := keys.n.Load(); n != 1 {
		t.Fatalf("%d key lookups after exp", n)
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
			if c, err := v.Validate(ctx, "a", tok); err != nil || c.Subject() != "user-1" || keys.n.Load() != 3 {
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
	if v.cache.Stats().Entries != 0 {
		t.Fatal("a failure was cached")
	}
	clock.Advance(time.Minute)
	if _, err := v.Validate(context.Background(), "a", tok); err != nil {
		t.Fatal(err)
	}
	if keys.n.Load() != 1 || v.cache.Stats().Entries != 1 {
		t.Fatalf("lookups %d, cached %d", keys.n.Load(), v.cache.Stats().Entries)
	}
}

// The cache holds at most its bound in entries and in bytes, whatever
// tokens come.
func TestCacheBound(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	p, _ := staticProvider(t, "a", "https://a.example", k)
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	big := strings.Repeat("x", 4000)
	for _, tt := range []struct {
		name    string
		entries int
		bytes   int64
		extra   []any
	}{
		{"entries", 100, 1 << 30, nil},
		{"bytes", 100_000, 256 << 10, []any{"blob", big}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, CacheSize: tt.entries, CacheBytes: tt.bytes, Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 1000 {
				tok := token(t, k, "https://a.example", clock.Now().Add(time.Hour), append([]any{"jti", fmt.Sprint(i)}, tt.extra...)...)
				if _, err := v.Validate(context.Background(), "a", tok); err != nil {
					t.Fatal(err)
				}
			}
			st := v.cache.Stats()
			if st.Entries > tt.entries || st.Bytes > tt.bytes || st.Entries == 0 {
				t.Fatalf("%+v, bound %d entries, %d bytes", st, tt.entries, tt.bytes)
			}
		})
	}
}

// An entry is counted at what it costs: the count agrees with the heap it
// takes, within a tenth, for a typical token and for a large one (the
// claims are two allocations, each counted at its size class).
func TestCacheEntrySize(t *testing.T) {
	k := idptest.NewKey(t, "k1", "RS256")
	p, _ := staticProvider(t, "a", "https://a.example", k)
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	for _, tt := range []struct {
		name  string
		extra []any
	}{
		{"typical", []any{"aud", "my-api", "scope", "openid profile read:users", "pid", "12345678901", "acr", "idporten-loa-high",
			"amr", []string{"BankID"}, "client_id", "dev-gcp:team-a:app-1", "sid", "f3b1c8a0-5d1e-4c2f-9b7a-0e1d2c3b4a59", "auth_time", 1_799_999_000}},
		{"many claims", []any{"groups", strings.Split(strings.Repeat("group-name,", 200), ","), "roles", map[string]any{"a": 1, "b": []int{1, 2, 3}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const n = 2000
			toks := make([]string, n)
			for i := range toks {
				toks[i] = token(t, k, "https://a.example", clock.Now().Add(time.Hour), append([]any{"jti", fmt.Sprintf("%08d", i)}, tt.extra...)...)
			}
			v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			before := heapInUse()
			for _, tok := range toks {
				if _, err := v.Validate(context.Background(), "a", tok); err != nil {
					t.Fatal(err)
				}
			}
			after := heapInUse()
			st := v.cache.Stats()
			if st.Entries != n {
				t.Fatalf("%d entries", st.Entries)
			}
			counted := float64(st.Bytes) / n
			measured := float64(after-before) / n
			t.Logf("%s: %.0f bytes counted, %.0f measured per entry (%d-byte token)", tt.name, counted, measured, len(toks[0]))
			if counted < measured*0.9 || counted > measured*1.1 {
				t.Fatalf("counted %.0f bytes per entry, measured %.0f", counted, measured)
			}
			runtime.KeepAlive(toks)
			runtime.KeepAlive(v)
		})
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// Raw re-derives every claim from the signed part the cache keeps, with or
// without a cache, and verbatim (numbers as the token wrote them).
func TestRawFromCachedToken(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	p, _ := staticProvider(t, "a", "https://a.example", k)
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	exp := clock.Now().Add(time.Hour)
	tok := token(t, k, "https://a.example", exp, "nested", map[string]any{"n": 1.5, "l": []any{"x", nil, true}}, "big", json.Number("12345678901234567890"))
	want := map[string]any{
		"iss": "https://a.example", "sub": "user-1", "exp": json.Number(strconv.FormatInt(exp.Unix(), 10)),
		"nested": map[string]any{"n": json.Number("1.5"), "l": []any{"x", nil, true}}, "big": json.Number("12345678901234567890"),
	}
	for _, size := range []int{0, -1} {
		v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, CacheSize: size, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 { // the second from the cache, when there is one
			c, err := v.Validate(context.Background(), "a", tok)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Raw(); !reflect.DeepEqual(got, want) {
				t.Fatalf("cache %d, validation %d: Raw() = %v, want %v", size, i, got, want)
			}
		}
	}
}

// The claims of a verified token are copies, in a buffer of their own:
// every string of the claims lies in it, none in the token the caller
// passed (a gRPC server reuses its buffers), and a hit is the same claims.
func TestClaimsOwnTheirBytes(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	p, keys := staticProvider(t, "a", "https://a.example", k)
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	tok := token(t, k, "https://a.example", clock.Now().Add(time.Hour),
		"aud", []string{"api-1", "api-2"}, "scope", "openid read:users", "scp", []string{"write"}, "client_id", "dev:ns:app",
		"idp", "https://idporten.example/", "jti", "id-1", "note", "two\nlines")
	c, err := v.Validate(context.Background(), "a", tok)
	if err != nil {
		t.Fatal(err)
	}
	wantRaw := c.Raw()
	check := func(c *Claims) {
		t.Helper()
		if c.Issuer() != "https://a.example" || c.Subject() != "user-1" || !slices.Equal(c.Audience(), []string{"api-1", "api-2"}) ||
			!slices.Equal(c.Scopes(), []string{"openid", "read:users", "write"}) || c.ScopeText() != "openid read:users write" ||
			c.Caller() != "dev:ns:app" || c.IDP() != "https://idporten.example/" || c.ID() != "id-1" ||
			!slices.Equal(c.strings(listUnsafe, false), []string{"note"}) ||
			c.signed() != tok[:strings.LastIndexByte(tok, '.')] || !reflect.DeepEqual(c.Raw(), wantRaw) ||
			!c.HasAudience("api-2") || c.HasAudience("api") || !c.HasScope("read:users") || c.HasScope("read") {
			t.Fatalf("claims %+v", c)
		}
	}
	check(c)
	again, err := v.Validate(context.Background(), "a", strings.Clone(tok))
	if err != nil || again != c || keys.n.Load() != 1 {
		t.Fatalf("no hit on a copy of the token: %v", err)
	}
	check(again)

	strs := slices.Concat([]string{c.signed(), c.Issuer(), c.Subject(), c.ScopeText(), c.Caller(), c.IDP(), c.ID()},
		c.Audience(), c.Scopes(), c.strings(listUnsafe, false))
	for _, s := range strs {
		if !within(s, c.buf) || within(s, tok) {
			t.Errorf("%q is not in the claims' buffer", s)
		}
	}
}

// within reports whether the bytes of s lie in those of in.
func within(s, in string) bool {
	at, base := reflect.ValueOf(s).Pointer(), reflect.ValueOf(in).Pointer()
	return base <= at && at+uintptr(len(s)) <= base+uintptr(len(in))
}

// claimsAlloc is what a Claims' struct takes: the smallest of Go's size
// classes that holds it, so that the cache counts a Claims at what it costs
// (newClaims: claimsAlloc and its buffer's capacity, which strings.Builder
// rounds up to a class).
func TestClaimsSize(t *testing.T) {
	var sink *Claims
	if allocs := testing.AllocsPerRun(10, func() { sink = &Claims{} }); allocs != 1 {
		t.Fatalf("%v allocations for a Claims", allocs)
	}
	_ = sink
	size := reflect.TypeFor[Claims]().Size()
	classes := []uintptr{8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160}
	for _, c := range classes {
		if c >= size {
			if c != claimsAlloc {
				t.Fatalf("a Claims is %d bytes, of class %d; claimsAlloc %d", size, c, claimsAlloc)
			}
			return
		}
	}
	t.Fatalf("a Claims is %d bytes", size)
}

// What a Claims costs on the heap, for a token like the load benchmark's:
// its struct and its buffer, two objects in all, counted (Claims.size) at
// what they take; and a copy of a Claims is the same claims (the zero
// Claims a token with no claims). The whole of a cached token, its entry
// and Check answer included, is bounded by server's TestCachedTokenHeap.
func TestClaimsHeap(t *testing.T) {
	const n = 2000
	payloads := make([]string, n)
	signed := make([]string, n)
	for i := range payloads {
		payloads[i] = fmt.Sprintf(`{"iss":"http://127.0.0.1:8080","sub":"user-%07d","aud":"dev-gcp:team-b:app-b",`+
			`"client_id":"dev-gcp:team-a:app-1","idp":"https://idporten.example/","acr":"idporten-loa-high","pid":"%011d",`+
			`"scope":"openid read:users","iat":1800000000,"exp":1800003600,"jti":"%08x-0000-4000-8000-%012x"}`, i, i, i, i)
		signed[i] = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0." + base64.RawURLEncoding.EncodeToString([]byte(payloads[i]))
	}
	claims := make([]*Claims, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range claims {
		c, _, err := parseClaims(payloads[i], signed[i], 0)
		if err != nil {
			t.Fatal(err)
		}
		claims[i] = c
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	bytes := float64(after.HeapAlloc-before.HeapAlloc) / n
	objects := float64(after.HeapObjects-before.HeapObjects) / n
	t.Logf("a %d-byte signed part: %.0f bytes and %.1f objects per Claims, %d bytes counted", len(signed[0]), bytes, objects, claims[0].size)
	if objects > 2.2 || bytes > float64(len(signed[0]))+300 || float64(claims[0].size) < bytes-16 || float64(claims[0].size) > bytes+64 {
		t.Errorf("%.0f bytes and %.1f objects per Claims, counted at %d: want 2 objects, within 300 bytes of the signed part, and counted at what they take",
			bytes, objects, claims[0].size)
	}

	c := claims[0]
	cp := *c
	if cp.Subject() != c.Subject() || !slices.Equal(cp.Scopes(), c.Scopes()) || !cp.HasScope("read:users") ||
		!cp.HasAudience("dev-gcp:team-b:app-b") || cp.signed() != c.signed() || !reflect.DeepEqual(cp.Raw(), c.Raw()) {
		t.Errorf("a copy of the claims says otherwise: %+v", cp)
	}
	var zero Claims
	if zero.Subject() != "" || zero.Audience() != nil || zero.Scopes() != nil || zero.HasScope("") || zero.ScopeText() != "" ||
		!zero.forwardable("sub") {
		t.Error("the zero Claims is not empty")
	}
	runtime.KeepAlive(claims)
	runtime.KeepAlive(payloads)
	runtime.KeepAlive(signed)
}

// ValidateRaw parses a new token's payload once: verifying it and having
// every claim costs about the allocations of verifying it alone, and the
// claims are those Raw finds, from the cache as from the verification; each
// caller's map is its own.
func TestValidateRawParsesOnce(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	p, _ := staticProvider(t, "a", "https://a.example", k)
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	const runs = 20
	toks := make([]string, 2*(runs+1))
	for i := range toks {
		toks[i] = token(t, k, "https://a.example", clock.Now().Add(time.Hour), "jti", fmt.Sprint(i), "amr", []string{"pwd"}, "acr", "high")
	}
	uncached, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, CacheSize: -1, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	next := 0
	validate := testing.AllocsPerRun(runs, func() {
		if _, err := uncached.Validate(ctx, "a", toks[next]); err != nil {
			t.Fatal(err)
		}
		next++
	})
	withRaw := testing.AllocsPerRun(runs, func() {
		if _, raw, err := uncached.ValidateRaw(ctx, "a", toks[next]); err != nil || len(raw) != 6 {
			t.Fatal(raw, err)
		}
		next++
	})
	c, err := uncached.Validate(ctx, "a", toks[0])
	if err != nil {
		t.Fatal(err)
	}
	parse := testing.AllocsPerRun(runs, func() { _ = c.Raw() })
	if withRaw > validate+parse/2 {
		t.Fatalf("Validate %.0f allocations, ValidateRaw %.0f, a parse %.0f: the payload was parsed twice", validate, withRaw, parse)
	}

	v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	for i, validate := range []func() (*Claims, map[string]any, error){
		func() (*Claims, map[string]any, error) { return v.ValidateRaw(ctx, "a", toks[0]) },
		func() (*Claims, map[string]any, error) {
			c, raw, _, err := v.ValidateByIssuerRaw(ctx, toks[0])
			return c, raw, err
		},
	} {
		c, raw, err := validate()
		if err != nil || !reflect.DeepEqual(raw, c.Raw()) || raw["acr"] != "high" {
			t.Fatalf("%d: %v %v", i, raw, err)
		}
		raw["acr"] = "changed"
		if c.Raw()["acr"] != "high" {
			t.Fatalf("%d: a caller's map is shared", i)
		}
	}
	if st := v.cache.Stats(); st.Misses != 1 || st.Hits != 1 || st.Entries != 1 {
		t.Fatalf("cache %+v: want a miss, then a hit", st)
	}
}

// ExpiresAt, NotBefore and IssuedAt are the token's dates, made on demand
// from its numbers: zero when absent, and a date present as 0 is 1970, not
// absent.
func TestClaimsDates(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	p, _ := staticProvider(t, "a", "https://a.example", k)
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	exp := clock.Now().Add(time.Hour)
	for _, tt := range []struct {
		name     string
		extra    []any
		nbf, iat time.Time
	}{
		{"absent", nil, time.Time{}, time.Time{}},
		{"zero", []any{"nbf", 0, "iat", 0}, time.Unix(0, 0).UTC(), time.Unix(0, 0).UTC()},
		{"fractions", []any{"nbf", json.Number("1799999999.5"), "iat", 1_799_999_000}, time.Unix(1_799_999_999, 5e8).UTC(), time.Unix(1_799_999_000, 0).UTC()},
	} {
		c, err := v.Validate(context.Background(), "a", token(t, k, "https://a.example", exp, tt.extra...))
		if err != nil {
			t.Fatal(err)
		}
		if !c.ExpiresAt().Equal(exp) || !c.NotBefore().Equal(tt.nbf) || !c.IssuedAt().Equal(tt.iat) ||
			c.NotBefore().IsZero() != tt.nbf.IsZero() || c.IssuedAt().IsZero() != tt.iat.IsZero() {
			t.Errorf("%s: exp %v nbf %v iat %v", tt.name, c.ExpiresAt(), c.NotBefore(), c.IssuedAt())
		}
	}
}

// The parser's strings, names and numbers are substrings of what it read,
// but for those it had to unescape; the claims a cache keeps are copies
// (TestClaimsOwnTheirBytes).
func TestParseJSONObjectViews(t *testing.T) {
	data := `{"name":"plain","num":-12.5e3,"esc":"a\"b","list":["x"]}`
	m, err := parseJSONObject(data)
	if err != nil {
		t.Fatal(err)
	}
	in := func(s string) bool { return within(s, data) }
	for k := range m {
		if !in(k) {
			t.Errorf("name %q is a copy", k)
		}
	}
	if s := m["name"].(string); s != "plain" || !in(s) {
		t.Errorf("name: %q", s)
	}
	if n := m["num"].(json.Number); n != "-12.5e3" || !in(string(n)) {
		t.Errorf("num: %q", n)
	}
	if s := m["list"].([]any)[0].(string); s != "x" || !in(s) {
		t.Errorf("list: %q", s)
	}
	if s := m["esc"].(string); s != `a"b` || in(s) {
		t.Errorf("esc: %q", s)
	}
}

// signatureKey is the SHA-256 of the signature, whatever its length (across
// the hash's blocks), and costs a cache hit no allocation.
func TestSignatureKey(t *testing.T) {
	sig := strings.Repeat("0123456789abcdef-_", 80)
	for n := range len(sig) {
		if got, want := signatureKey(sig[:n]), sha256.Sum256([]byte(sig[:n])); got != want {
			t.Fatalf("%d bytes: %x, want %x", n, got, want)
		}
	}
	for _, n := range []int{86, 342, 1366} {
		if allocs := testing.AllocsPerRun(100, func() { _ = signatureKey(sig[:n]) }); allocs != 0 {
			t.Errorf("a %d-byte signature: %v allocations", n, allocs)
		}
	}
}
