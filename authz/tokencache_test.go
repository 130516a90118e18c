package authz

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/internal/idptest"
)

// entriesOf counts the entries of p in v's cache.
func entriesOf(v *Validator, p *Provider) int {
	n := 0
	// A predicate that picks nothing: RemoveFunc only counts here.
	v.cache.RemoveFunc(func(e *cacheEntry) bool {
		if e.provider == p {
			n++
		}
		return false
	})
	return n
}

// Validators sharing a TokenCache share what their providers verified: a
// token verified under one is a hit under the next, with no key lookup.
// Retire drops one provider's entries and serves none again, for the
// Validators built before as after, while another provider's stay hits.
func TestTokenCacheSharedAndRetire(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	p, pKeys := staticProvider(t, "a", "https://a.example", k)
	q, qKeys := staticProvider(t, "b", "https://b.example", k)
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	tc := NewTokenCache(0, 0)
	validator := func(ps ...*Provider) *Validator {
		v, err := NewValidator(ValidatorConfig{Providers: ps, Cache: tc, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	ctx := context.Background()
	exp := clock.Now().Add(time.Hour)
	tp, tq := token(t, k, "https://a.example", exp), token(t, k, "https://b.example", exp)
	old := validator(p, q)
	for _, tt := range []struct{ provider, token string }{{"a", tp}, {"b", tq}} {
		if _, err := old.Validate(ctx, tt.provider, tt.token); err != nil {
			t.Fatal(err)
		}
	}
	if pKeys.n.Load() != 1 || qKeys.n.Load() != 1 {
		t.Fatalf("lookups %d, %d", pKeys.n.Load(), qKeys.n.Load())
	}

	next := validator(p, q) // a new configuration, the same providers
	before := tc.Stats()
	if _, err := next.Validate(ctx, "a", tp); err != nil {
		t.Fatal(err)
	}
	if _, _, err := next.ValidateByIssuer(ctx, tq); err != nil {
		t.Fatal(err)
	}
	if st := tc.Stats(); st.Hits-before.Hits != 2 || st.Misses != before.Misses || pKeys.n.Load() != 1 || qKeys.n.Load() != 1 {
		t.Fatalf("the next validator: %d hits, %d misses, lookups %d, %d", st.Hits-before.Hits, st.Misses-before.Misses, pKeys.n.Load(), qKeys.n.Load())
	}
	if st, _ := next.CacheStats(); st != tc.Stats() {
		t.Fatalf("the validator counts %+v, its cache %+v", st, tc.Stats())
	}

	// a's configuration changed: a new provider takes its place.
	if n := tc.Retire(p); n != 1 {
		t.Fatalf("Retire dropped %d entries, want 1", n)
	}
	p2, p2Keys := staticProvider(t, "a", "https://a.example", k)
	current := validator(p2, q)
	for i, tt := range []struct {
		v          *Validator
		byIssuer   bool
		wantLookup int64 // lookups of p's keys after the call
		wantStored int   // entries of p after the call
	}{
		// The retired provider verifies anew, and stores nothing: not the
		// validator still in force for a request, not by issuer either.
		{old, false, 2, 0},
		{old, true, 3, 0},
		{next, false, 4, 0},
	} {
		var err error
		if tt.byIssuer {
			_, _, err = tt.v.ValidateByIssuer(ctx, tp)
		} else {
			_, err = tt.v.Validate(ctx, "a", tp)
		}
		if err != nil {
			t.Fatal(err)
		}
		if pKeys.n.Load() != tt.wantLookup || entriesOf(tt.v, p) != tt.wantStored {
			t.Fatalf("row %d: %d lookups, %d entries of the retired provider", i, pKeys.n.Load(), entriesOf(tt.v, p))
		}
	}
	// Its successor verifies once, and hits from then on.
	for range 2 {
		if _, err := current.Validate(ctx, "a", tp); err != nil {
			t.Fatal(err)
		}
	}
	if p2Keys.n.Load() != 1 || entriesOf(current, p2) != 1 {
		t.Fatalf("the new provider: %d lookups, %d entries", p2Keys.n.Load(), entriesOf(current, p2))
	}
	// The other provider's entry stayed: a hit for every validator.
	for _, v := range []*Validator{old, next, current} {
		if _, err := v.Validate(ctx, "b", tq); err != nil {
			t.Fatal(err)
		}
	}
	if qKeys.n.Load() != 1 {
		t.Fatalf("the other provider was verified again: %d lookups", qKeys.n.Load())
	}
	// An entry the sweep has not reached yet is no hit either: Retire sets
	// the flag first, and a hit checks it.
	r, rKeys := staticProvider(t, "c", "https://c.example", k)
	vr := validator(r)
	tr := token(t, k, "https://c.example", exp)
	if _, err := vr.Validate(ctx, "c", tr); err != nil {
		t.Fatal(err)
	}
	r.retired.Store(true)
	if _, err := vr.Validate(ctx, "c", tr); err != nil {
		t.Fatal(err)
	}
	if _, _, err := vr.ValidateByIssuer(ctx, tr); err != nil {
		t.Fatal(err)
	}
	if rKeys.n.Load() != 3 {
		t.Fatalf("%d lookups: an entry of a retired provider was a hit", rKeys.n.Load())
	}
	// Retiring with no cache marks the provider all the same.
	if n := (*TokenCache)(nil).Retire(q); n != 0 || !q.retired.Load() {
		t.Fatalf("Retire on no cache: %d, retired %v", n, q.retired.Load())
	}
}

// Tokens stored while their provider is retired, concurrently, are never
// left behind: once Retire and the stores are done, the cache holds none
// of the provider's. Run with -race, it checks the flag and the sweep too.
func TestRetireRacesStore(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	p, _ := staticProvider(t, "a", "https://a.example", k)
	exp := time.Now().Add(time.Hour)
	const workers, each = 4, 60
	tokens := make([][]string, workers)
	for w := range tokens {
		for i := range each {
			tokens[w] = append(tokens[w], token(t, k, "https://a.example", exp, "n", fmt.Sprint(w, "-", i)))
		}
	}
	tc := NewTokenCache(0, 0)
	v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, Cache: tc})
	if err != nil {
		t.Fatal(err)
	}
	var wg, first sync.WaitGroup
	start := make(chan struct{})
	first.Add(workers)
	for w := range workers {
		wg.Go(func() {
			<-start
			for i, tok := range tokens[w] {
				_, err := v.Validate(context.Background(), "a", tok)
				if i == 0 {
					first.Done() // a token of this worker's is in the cache
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	close(start)
	first.Wait() // retired while stores go on
	tc.Retire(p)
	wg.Wait()
	if n := entriesOf(v, p); n != 0 {
		t.Fatalf("%d entries of a retired provider left", n)
	}
}

// A provider with ApplicationAudience is verified as usual, and its token
// then accepted only with an aud the validator knows as an application:
// on every path, from the cache as from scratch. The same cached token is
// accepted or refused by validators of different applications. A forged
// token says nothing of the applications: its signature fails first.
func TestApplicationAudience(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	stranger := idptest.NewKey(t, "k1", "ES256")
	keys, err := NewKeySet(mustKey(t, k))
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingKeys{StaticKeys: StaticKeys{Set: keys}}
	own, err := NewProvider(ProviderConfig{Name: "tokenx", Issuer: "https://vakt.example", ApplicationAudience: true, Own: true, Keys: counted})
	if err != nil {
		t.Fatal(err)
	}
	registered := func(ids ...string) func(string) bool {
		return func(id string) bool {
			for _, x := range ids {
				if x == id {
					return true
				}
			}
			return false
		}
	}
	tc := NewTokenCache(0, 0)
	validator := func(reg func(string) bool) *Validator {
		v, err := NewValidator(ValidatorConfig{Providers: []*Provider{own}, Cache: tc, Registered: reg})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	vA, vB, vNone := validator(registered("app-a")), validator(registered("app-b")), validator(nil)
	exp := time.Now().Add(time.Hour)
	tokA := token(t, k, "https://vakt.example", exp, "aud", "app-a")
	paths := []struct {
		name     string
		validate func(*Validator, string) error
	}{
		{"Validate", func(v *Validator, tok string) error {
			_, err := v.Validate(context.Background(), "tokenx", tok)
			return err
		}},
		{"ValidateRaw", func(v *Validator, tok string) error {
			_, _, err := v.ValidateRaw(context.Background(), "tokenx", tok)
			return err
		}},
		{"ValidateByIssuer", func(v *Validator, tok string) error {
			_, _, err := v.ValidateByIssuer(context.Background(), tok)
			return err
		}},
		{"ValidateByIssuerRaw", func(v *Validator, tok string) error {
			_, _, _, err := v.ValidateByIssuerRaw(context.Background(), tok)
			return err
		}},
	}
	for _, tt := range []struct {
		name  string
		v     *Validator
		token string
		want  error
	}{
		{"registered aud", vA, tokA, nil},
		{"one registered aud of several", vB, token(t, k, "https://vakt.example", exp, "aud", []string{"app-x", "app-b"}), nil},
		{"aud of an application another validator has", vB, tokA, ErrAudienceInvalid},
		{"no aud", vA, token(t, k, "https://vakt.example", exp), ErrAudienceInvalid},
		{"no application registered", vNone, tokA, ErrAudienceInvalid},
		{"forged, for an unregistered application", vA, token(t, stranger, "https://vakt.example", exp, "aud", "app-x"), ErrSignatureInvalid},
		{"forged, for a registered application", vA, token(t, stranger, "https://vakt.example", exp, "aud", "app-a"), ErrSignatureInvalid},
	} {
		for _, path := range paths {
			t.Run(tt.name+"/"+path.name, func(t *testing.T) {
				before := counted.n.Load()
				// From scratch (a validator of its own, with no cache),
				// then from the shared cache, filled by any validator.
				scratch, err := NewValidator(ValidatorConfig{Providers: []*Provider{own}, CacheSize: -1, Registered: tt.v.registered})
				if err != nil {
					t.Fatal(err)
				}
				if err := path.validate(scratch, tt.token); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
					t.Fatalf("from scratch: %v, want %v", err, tt.want)
				}
				if counted.n.Load() != before+1 {
					t.Fatal("the signature was not checked first")
				}
				_ = path.validate(vA, tt.token)
				before = counted.n.Load()
				if err := path.validate(tt.v, tt.token); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
					t.Fatalf("from the cache: %v, want %v", err, tt.want)
				}
				if tt.want != ErrSignatureInvalid && counted.n.Load() != before {
					t.Fatal("a verified token was not answered from the cache")
				}
			})
		}
	}
}

func mustKey(t *testing.T, k *idptest.Key) *Key {
	t.Helper()
	key, err := NewKey(k.ID, k.Alg, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// SameConfig holds for an equal configuration only: any one field
// changed, and the provider is another. Every field of ProviderConfig is
// changed in turn, so that a field added later and left out of SameConfig
// fails here.
func TestProviderSameConfig(t *testing.T) {
	k, other := idptest.NewKey(t, "k1", "ES256"), idptest.NewKey(t, "k1", "ES256")
	set := func(keys ...*Key) StaticKeys {
		s, err := NewKeySet(keys...)
		if err != nil {
			t.Fatal(err)
		}
		return StaticKeys{Set: s}
	}
	remote := &RemoteKeys{}
	base := ProviderConfig{Name: "a", Issuer: "https://a.example", Audiences: []string{"x"}, Algorithms: []string{"ES256"},
		Leeway: time.Second, Keys: set(mustKey(t, k)), Type: "at+jwt"}
	p, err := NewProvider(base)
	if err != nil {
		t.Fatal(err)
	}
	// The same settings in new slices, the same keys in a new set.
	same := base
	same.Audiences, same.Algorithms, same.Keys = []string{"x"}, []string{"ES256"}, set(mustKey(t, k))
	if !p.SameConfig(same) {
		t.Fatal("an equal configuration is not the same")
	}
	changed := map[string]func(*ProviderConfig){
		"Name":                   func(c *ProviderConfig) { c.Name = "b" },
		"Issuer":                 func(c *ProviderConfig) { c.Issuer = "https://b.example" },
		"Audiences":              func(c *ProviderConfig) { c.Audiences = []string{"x", "y"} },
		"RequireAudience":        func(c *ProviderConfig) { c.RequireAudience = true },
		"AudienceAfterSignature": func(c *ProviderConfig) { c.AudienceAfterSignature = true },
		"SignatureFirst":         func(c *ProviderConfig) { c.SignatureFirst = true },
		"Algorithms":             func(c *ProviderConfig) { c.Algorithms = []string{"ES256", "RS256"} },
		"Leeway":                 func(c *ProviderConfig) { c.Leeway = 2 * time.Second },
		"Keys":                   func(c *ProviderConfig) { c.Keys = set(mustKey(t, other)) },
		"Type":                   func(c *ProviderConfig) { c.Type = "jwt" },
		"RejectType":             func(c *ProviderConfig) { c.RejectType = "at+jwt" },
		"Own":                    func(c *ProviderConfig) { c.Own = true },
		"ApplicationAudience":    func(c *ProviderConfig) { c.ApplicationAudience = true },
	}
	fields := reflect.TypeFor[ProviderConfig]()
	for i := range fields.NumField() {
		name := fields.Field(i).Name
		change, ok := changed[name]
		if !ok {
			t.Errorf("ProviderConfig.%s is not changed here: is SameConfig comparing it?", name)
			continue
		}
		c := same
		change(&c)
		if reflect.DeepEqual(c, same) {
			t.Errorf("%s: the change changed nothing", name)
		}
		if p.SameConfig(c) {
			t.Errorf("%s changed, and the provider is the same", name)
		}
	}
	// Keys: static sets compare by their keys, other sources by identity.
	r := idptest.NewKey(t, "r1", "RS256")
	rsaFor := func(alg string) *Key {
		key, err := NewKey("r1", alg, r.Public())
		if err != nil {
			t.Fatal(err)
		}
		return key
	}
	for _, tt := range []struct {
		name string
		a, b KeySource
		want bool
	}{
		{"one remote set", remote, remote, true},
		{"two remote sets", remote, &RemoteKeys{}, false},
		{"static and remote", set(mustKey(t, k)), remote, false},
		{"a key more", set(mustKey(t, k)), set(mustKey(t, k), mustKey(t, idptest.NewKey(t, "k2", "ES256"))), false},
		{"another kid", set(mustKey(t, k)), set(mustKey(t, &idptest.Key{ID: "k2", Alg: "ES256", Private: k.Private})), false},
		{"the same RSA key for another alg", set(rsaFor("RS256")), set(rsaFor("PS256")), false},
		{"the same RSA key", set(rsaFor("RS256")), set(rsaFor("RS256")), true},
		{"no keys", StaticKeys{}, set(), true},
		{"a value source", valueKeys{}, valueKeys{}, false},
		{"none", nil, nil, false},
	} {
		if got := sameKeys(tt.a, tt.b); got != tt.want {
			t.Errorf("%s: same %v", tt.name, got)
		}
	}
}

// valueKeys is a key source that is no pointer: never taken for the same.
type valueKeys struct{}

func (valueKeys) Key(context.Context, string) (*Key, error) { return nil, ErrKeyNotFound }

// Fits tells a cache of the configured bounds (the defaults for zero) from
// one that must be made anew.
func TestTokenCacheFits(t *testing.T) {
	for _, tt := range []struct {
		name    string
		made    *TokenCache
		entries int
		bytes   int64
		want    bool
	}{
		{"defaults, named", NewTokenCache(0, 0), DefaultCacheSize, DefaultCacheBytes, true},
		{"defaults", NewTokenCache(DefaultCacheSize, 0), 0, 0, true},
		{"fewer entries", NewTokenCache(0, 0), 10, 0, false},
		{"fewer bytes", NewTokenCache(0, 0), 0, 1 << 20, false},
		{"off, and on", nil, 0, 0, false},
		{"on, and off", NewTokenCache(0, 0), -1, 0, false},
		{"off", NewTokenCache(-1, 0), -1, 0, true},
	} {
		if got := tt.made.Fits(tt.entries, tt.bytes); got != tt.want {
			t.Errorf("%s: Fits %v", tt.name, got)
		}
	}
}
