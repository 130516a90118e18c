package authz_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/waittest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// setup is one provider ("idp") over a real issuer, plus a second trusted
// provider ("other") with keys of its own.
type setup struct {
	iss, other *idptest.Issuer
	clock      *idptest.Clock
	v          *authz.Validator
}

func newSetup(t *testing.T, alg string, cfg func(*authz.ProviderConfig)) *setup {
	t.Helper()
	s := &setup{
		iss:   idptest.NewIssuer(t, alg),
		other: idptest.NewIssuer(t, "RS256"),
		clock: idptest.NewClock(time.Now().Truncate(time.Second)),
	}
	mk := func(name string, iss *idptest.Issuer, edit func(*authz.ProviderConfig)) *authz.Provider {
		keys, err := authz.NewRemoteKeys(authz.RemoteKeysConfig{
			Name: name, WellKnownURL: iss.WellKnownURL(), Issuer: iss.URL, Logger: quiet, Now: s.clock.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		pc := authz.ProviderConfig{Name: name, Issuer: iss.URL, Audiences: []string{"my-api"}, Keys: keys}
		if edit != nil {
			edit(&pc)
		}
		p, err := authz.NewProvider(pc)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	v, err := authz.NewValidator(authz.ValidatorConfig{
		Providers: []*authz.Provider{mk("idp", s.iss, cfg), mk("other", s.other, nil)},
		Aliases:   map[string]string{"alias": "idp"},
		Now:       s.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.v = v
	return s
}

func (s *setup) claims() map[string]any { return s.iss.Claims(s.clock.Now(), "my-api") }

func with(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

func TestValidateRejections(t *testing.T) {
	s := newSetup(t, "RS256", nil)
	es := newSetup(t, "ES256", nil)
	now := s.clock.Now()
	key := s.iss.Key()
	hdr := map[string]any{"alg": "RS256", "kid": key.ID, "typ": "JWT"}
	good := s.iss.Token(s.claims())
	attacker := idptest.NewKey(t, "attacker", "RS256")
	payload := s.claims()

	// HS256 keyed with the issuer's public key, the classic confusion.
	pubDER, _ := x509.MarshalPKIXPublicKey(key.Public())
	hsInput := idptest.Segment(t, map[string]any{"alg": "HS256", "kid": key.ID}) + "." + idptest.Segment(t, payload)
	mac := hmac.New(sha256.New, pubDER)
	mac.Write([]byte(hsInput))
	hs256 := hsInput + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))

	parts := strings.Split(good, ".")
	esKey := es.iss.Key()
	esGood := es.iss.Token(es.claims())
	esParts := strings.Split(esGood, ".")

	tests := []struct {
		name     string
		setup    *setup
		provider string
		token    string
		want     error
		wantMsg  string
	}{
		{name: "valid RS256", token: good},
		{name: "valid via alias", provider: "alias", token: good},
		{name: "valid ES256", setup: es, token: esGood},
		{name: "empty", token: "", want: authz.ErrMalformed},
		{name: "alg none", token: idptest.Segment(t, `{"alg":"none"}`) + "." + parts[1] + ".", want: authz.ErrAlgorithmNotAllowed},
		{name: "alg None", token: idptest.Segment(t, `{"alg":"None"}`) + "." + parts[1] + ".", want: authz.ErrAlgorithmNotAllowed},
		{name: "alg NONE with signature", token: idptest.Segment(t, `{"alg":"NONE"}`) + "." + parts[1] + "." + parts[2], want: authz.ErrAlgorithmNotAllowed},
		{name: "alg nOnE", token: idptest.Segment(t, `{"alg":"nOnE","kid":"key-1"}`) + "." + parts[1] + ".", want: authz.ErrAlgorithmNotAllowed},
		{name: "HS256 with the RSA public key", token: hs256, want: authz.ErrAlgorithmNotAllowed},
		{name: "alg not on the allowlist", token: idptest.Sign(t, key, "RS384", with(hdr, "alg", "RS384"), payload), want: authz.ErrAlgorithmNotAllowed},
		{name: "alg differs from the key's", token: idptest.Sign(t, key, "PS256", with(hdr, "alg", "PS256"), payload), want: authz.ErrAlgorithmNotAllowed},
		{name: "embedded jwk", token: idptest.Sign(t, attacker, "RS256", with(hdr, "kid", "attacker", "jwk", attacker.JWK(t)), payload), want: authz.ErrHeaderNotAllowed},
		{name: "jku", token: idptest.Sign(t, attacker, "RS256", with(hdr, "jku", "http://127.0.0.1:1/jwks"), payload), want: authz.ErrHeaderNotAllowed},
		{name: "x5u", token: idptest.Sign(t, attacker, "RS256", with(hdr, "x5u", "http://127.0.0.1:1/cert"), payload), want: authz.ErrHeaderNotAllowed},
		{name: "kid with a path", token: idptest.Sign(t, attacker, "RS256", with(hdr, "kid", "../../../../dev/null"), payload), want: authz.ErrKeyNotFound},
		{name: "kid with SQL", token: idptest.Sign(t, attacker, "RS256", with(hdr, "kid", "x' UNION SELECT 'secret' --"), payload), want: authz.ErrKeyNotFound},
		{name: "kid in other case", token: idptest.Sign(t, key, "RS256", with(hdr, "kid", "KEY-1"), payload), want: authz.ErrKeyNotFound},
		{name: "KID member is not kid", token: idptest.Sign(t, key, "RS256", map[string]any{"alg": "RS256", "KID": key.ID}, payload), want: nil},
		{name: "kid not a string", token: idptest.Sign(t, key, "RS256", with(hdr, "kid", 1), payload), want: authz.ErrMalformed},
		{name: "signed by an attacker's key", token: idptest.Sign(t, attacker, "RS256", hdr, payload), want: authz.ErrSignatureInvalid},
		{name: "ES256 r=s=0", setup: es, token: esParts[0] + "." + esParts[1] + "." + base64.RawURLEncoding.EncodeToString(make([]byte, 64)), want: authz.ErrSignatureInvalid},
		{name: "ES256 short signature", setup: es, token: esParts[0] + "." + esParts[1] + ".AAAA", want: authz.ErrSignatureInvalid},
		{name: "ES256 signature over other payload", setup: es, token: esParts[0] + "." + idptest.Segment(t, with(es.claims(), "sub", "admin")) + "." + esParts[2], want: authz.ErrSignatureInvalid},
		{name: "ES256 key, RS256 alg", setup: es, token: idptest.Sign(t, key, "RS256", map[string]any{"alg": "RS256", "kid": esKey.ID}, es.claims()), want: authz.ErrAlgorithmNotAllowed},
		{name: "tampered payload", token: parts[0] + "." + idptest.Segment(t, with(payload, "sub", "admin")) + "." + parts[2], want: authz.ErrSignatureInvalid},
		{name: "crit", token: idptest.Sign(t, key, "RS256", with(hdr, "crit", []string{"exp"}, "exp", 1), payload), want: authz.ErrHeaderNotAllowed},
		{name: "b64 false", token: idptest.Sign(t, key, "RS256", with(hdr, "b64", false, "crit", nil), payload), want: authz.ErrHeaderNotAllowed},
		{name: "JWE", token: idptest.Segment(t, `{"alg":"RSA-OAEP","enc":"A256GCM"}`) + ".a.b.c.d", want: authz.ErrUnsupported},
		{name: "enc header in three segments", token: idptest.Sign(t, key, "RS256", with(hdr, "enc", "A256GCM"), payload), want: authz.ErrUnsupported},
		{name: "JSON serialization", token: `{"payload":"` + parts[1] + `","signatures":[{"protected":"` + parts[0] + `","signature":"` + parts[2] + `"}]}`, want: authz.ErrUnsupported},
		{name: "two segments", token: parts[0] + "." + parts[1], want: authz.ErrMalformed},
		{name: "four segments", token: good + ".x", want: authz.ErrMalformed},
		{name: "padded header", token: parts[0] + "==." + parts[1] + "." + parts[2], want: authz.ErrMalformed},
		{name: "padded signature", token: good + "=", want: authz.ErrMalformed},
		{name: "standard base64 alphabet", token: strings.NewReplacer("-", "+", "_", "/").Replace(good), want: authz.ErrMalformed},
		{name: "newline inside", token: parts[0] + ".\n" + parts[1] + "." + parts[2], want: authz.ErrMalformed},
		{name: "space inside", token: parts[0] + " ." + parts[1] + "." + parts[2], want: authz.ErrMalformed},
		{name: "non-canonical trailing bits", token: nonCanonical(t, parts[0]) + "." + parts[1] + "." + parts[2], want: authz.ErrMalformed},
		{name: "empty payload", token: parts[0] + ".." + parts[2], want: authz.ErrMalformed},
		{name: "header is an array", token: idptest.Segment(t, `["RS256"]`) + "." + parts[1] + "." + parts[2], want: authz.ErrMalformed},
		{name: "header not JSON", token: idptest.Segment(t, `{alg:RS256}`) + "." + parts[1] + "." + parts[2], want: authz.ErrMalformed},
		{name: "header with trailing data", token: idptest.Sign(t, key, "RS256", `{"alg":"RS256","kid":"key-1"}{}`, payload), want: authz.ErrMalformed},
		{name: "duplicate alg", token: idptest.Sign(t, key, "RS256", `{"alg":"HS256","alg":"RS256","kid":"key-1"}`, payload), want: authz.ErrMalformed},
		{name: "duplicate sub", token: idptest.Sign(t, key, "RS256", hdr, strings.Replace(idptest.JSON(t, payload), `"sub":"user-1"`, `"sub":"user-1","sub":"admin"`, 1)), want: authz.ErrMalformed},
		{name: "duplicate sub, escaped", token: idptest.Sign(t, key, "RS256", hdr, strings.Replace(idptest.JSON(t, payload), `"sub":"user-1"`, `"sub":"user-1","s\u0075b":"admin"`, 1)), want: authz.ErrMalformed},
		{name: "duplicate nested", token: idptest.Sign(t, key, "RS256", hdr, strings.Replace(idptest.JSON(t, with(payload, "x", map[string]any{"a": 1})), `"a":1`, `"a":1,"a":2`, 1)), want: authz.ErrMalformed},
		{name: "payload is an array", token: idptest.Sign(t, key, "RS256", hdr, `[1]`), want: authz.ErrMalformed},
		{name: "oversize", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "pad", strings.Repeat("x", 16<<10))), want: authz.ErrTooLarge},
		{name: "exp a numeric string", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "exp", fmt.Sprint(now.Add(time.Hour).Unix()))), want: authz.ErrClaimInvalid},
		{name: "exp missing", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "exp", nil)), want: authz.ErrClaimInvalid},
		{name: "exp 0", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "exp", 0)), want: authz.ErrExpired, wantMsg: "token is expired"},
		{name: "exp null", token: idptest.Sign(t, key, "RS256", hdr, strings.Replace(idptest.JSON(t, payload), `"exp":`, `"exp":null,"x":`, 1)), want: authz.ErrClaimInvalid},
		// A number no float64 holds is malformed, in any claim: every face
		// must read one token one way.
		{name: "exp out of range", token: idptest.Sign(t, key, "RS256", hdr, strings.Replace(idptest.JSON(t, payload), `"exp":`, `"exp":1e400,"x":`, 1)), want: authz.ErrClaimInvalid},
		{name: "a claim out of float64 range", token: idptest.Sign(t, key, "RS256", hdr, strings.Replace(idptest.JSON(t, payload), `"exp":`, `"big":-1e999,"exp":`, 1)), want: authz.ErrMalformed},
		{name: "exp far future", token: idptest.Sign(t, key, "RS256", hdr, strings.Replace(idptest.JSON(t, payload), `"exp":`, `"exp":1e300,"x":`, 1))},
		{name: "expired", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "exp", now.Add(-time.Minute).Unix())), want: authz.ErrExpired, wantMsg: "token is expired"},
		{name: "expiring now", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "exp", now.Unix())), want: authz.ErrExpired},
		{name: "not valid yet", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "nbf", now.Add(time.Minute).Unix())), want: authz.ErrNotYetValid, wantMsg: "token is not valid yet"},
		{name: "issued in the future", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "iat", now.Add(time.Minute).Unix())), want: authz.ErrNotYetValid},
		{name: "nbf a string", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "nbf", "0")), want: authz.ErrClaimInvalid},
		{name: "wrong iss", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "iss", s.iss.URL+"/")), want: authz.ErrIssuerNotTrusted, wantMsg: "token issuer is not trusted"},
		{name: "no iss", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "iss", nil)), want: authz.ErrIssuerNotTrusted},
		{name: "iss not a string", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "iss", 7)), want: authz.ErrClaimInvalid},
		{name: "wrong aud", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "aud", "your-api")), want: authz.ErrAudienceInvalid, wantMsg: "token audience is invalid"},
		{name: "aud array containing ours", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "aud", []string{"x", "my-api"}))},
		{name: "aud array without ours", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "aud", []string{"x", "y"})), want: authz.ErrAudienceInvalid},
		{name: "no aud", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "aud", nil)), want: authz.ErrAudienceInvalid},
		{name: "aud a number", token: idptest.Sign(t, key, "RS256", hdr, with(payload, "aud", 5)), want: authz.ErrClaimInvalid},
		{name: "another trusted issuer's key, our iss", token: idptest.Sign(t, s.other.Key(), "RS256", hdr, payload), want: authz.ErrSignatureInvalid},
		{name: "another trusted issuer's token", token: s.other.Token(s.other.Claims(now, "my-api")), want: authz.ErrIssuerNotTrusted},
		{name: "unknown provider", provider: "nope", token: good, want: authz.ErrUnknownProvider},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := tt.setup
			if st == nil {
				st = s
			}
			p := tt.provider
			if p == "" {
				p = "idp"
			}
			c, err := st.v.Validate(context.Background(), p, tt.token)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if c.Subject() != "user-1" {
					t.Fatalf("subject %q", c.Subject())
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Validate error = %v, want %v", err, tt.want)
			}
			if tt.wantMsg != "" && err.Error() != tt.wantMsg {
				t.Fatalf("message %q, want %q", err, tt.wantMsg)
			}
		})
	}
}

// nonCanonical flips the unused low bits of the last character, which a
// lenient decoder ignores.
func nonCanonical(t *testing.T, seg string) string {
	t.Helper()
	if len(seg)%4 == 0 {
		t.Skip("segment has no spare bits")
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, seg[len(seg)-1])
	return seg[:len(seg)-1] + string(alphabet[last|1])
}

func TestValidateAlgorithms(t *testing.T) {
	for _, alg := range []string{"RS256", "PS256", "ES256", "EdDSA", "RS512", "ES384"} {
		t.Run(alg, func(t *testing.T) {
			s := newSetup(t, alg, func(pc *authz.ProviderConfig) { pc.Algorithms = []string{alg} })
			c, err := s.v.Validate(context.Background(), "idp", s.iss.Token(s.claims()))
			if err != nil {
				t.Fatal(err)
			}
			if c.Issuer() != s.iss.URL || c.Audience()[0] != "my-api" {
				t.Fatalf("claims %+v", c)
			}
		})
	}
}

func TestLeeway(t *testing.T) {
	s := newSetup(t, "ES256", func(pc *authz.ProviderConfig) { pc.Leeway = 30 * time.Second })
	now := s.clock.Now()
	k := s.iss.Key()
	hdr := map[string]any{"alg": k.Alg, "kid": k.ID}
	for _, tt := range []struct {
		name   string
		claims map[string]any
		want   error
	}{
		{"expired within leeway", with(s.claims(), "exp", now.Add(-20*time.Second).Unix()), nil},
		{"expired beyond leeway", with(s.claims(), "exp", now.Add(-40*time.Second).Unix()), authz.ErrExpired},
		{"nbf within leeway", with(s.claims(), "nbf", now.Add(20*time.Second).Unix()), nil},
		{"nbf beyond leeway", with(s.claims(), "nbf", now.Add(40*time.Second).Unix()), authz.ErrNotYetValid},
		{"iat within leeway", with(s.claims(), "iat", now.Add(20*time.Second).Unix()), nil},
		{"iat beyond leeway", with(s.claims(), "iat", now.Add(40*time.Second).Unix()), authz.ErrNotYetValid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.v.Validate(context.Background(), "idp", idptest.Sign(t, k, k.Alg, hdr, tt.claims))
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestKeyRotation(t *testing.T) {
	s := newSetup(t, "RS256", nil)
	ctx := context.Background()
	old := s.iss.Token(s.claims())
	if _, err := s.v.Validate(ctx, "idp", old); err != nil {
		t.Fatal(err)
	}
	oldKey := s.iss.Key()
	s.iss.Rotate("key-2", "ES256", false)
	rotated := s.iss.Token(s.claims())

	// Within 10 s of the last fetch the unknown kid is not fetched.
	if _, err := s.v.Validate(ctx, "idp", rotated); !errors.Is(err, authz.ErrKeyNotFound) {
		t.Fatalf("before the refetch interval: %v", err)
	}
	s.clock.Advance(authz.MinRefetchInterval)
	before := s.iss.JWKSRequests()
	if _, err := s.v.Validate(ctx, "idp", rotated); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if got := s.iss.JWKSRequests() - before; got != 1 {
		t.Fatalf("%d fetches for the new kid, want 1", got)
	}
	// The old key stays published, so a new token it signed still verifies.
	byOld := idptest.Sign(t, oldKey, "RS256", map[string]any{"alg": "RS256", "kid": oldKey.ID}, with(s.claims(), "n", 1))
	if _, err := s.v.Validate(ctx, "idp", byOld); err != nil {
		t.Fatal(err)
	}
}

func TestRefetchFloodIsBounded(t *testing.T) {
	s := newSetup(t, "ES256", nil)
	ctx := context.Background()
	if _, err := s.v.Validate(ctx, "idp", s.iss.Token(s.claims())); err != nil {
		t.Fatal(err)
	}
	s.clock.Advance(time.Minute)
	before := s.iss.JWKSRequests()
	k := s.iss.Key()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok := idptest.Sign(t, k, "ES256", map[string]any{"alg": "ES256", "kid": fmt.Sprintf("unknown-%d", i)}, s.claims())
			// Not found once the one fetch is done; past the lookups that
			// may wait on it, an outage at once rather than another wait.
			if _, err := s.v.Validate(ctx, "idp", tok); !errors.Is(err, authz.ErrKeyNotFound) && !errors.Is(err, authz.ErrKeysUnavailable) {
				t.Errorf("unknown kid: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := s.iss.JWKSRequests() - before; got != 1 {
		t.Fatalf("200 unknown kids caused %d fetches, want 1", got)
	}
}

func TestProviderDown(t *testing.T) {
	s := newSetup(t, "RS256", nil)
	ctx := context.Background()
	if _, err := s.v.Validate(ctx, "idp", s.iss.Token(s.claims())); err != nil {
		t.Fatal(err)
	}
	s.iss.SetDown(true)
	s.clock.Advance(time.Minute)
	// A new token (not in the cache) with a known kid verifies on the kept keys.
	if _, err := s.v.Validate(ctx, "idp", s.iss.Token(with(s.claims(), "sub", "user-1", "n", 2))); err != nil {
		t.Fatalf("with the provider down: %v", err)
	}
	// An unknown kid tries one fetch, which fails: the kid may be a key the
	// provider rotated to as it went down, so it is an outage, not a
	// refusal; so it stays until a fetch succeeds.
	tok := idptest.Sign(t, s.iss.Key(), "RS256", map[string]any{"alg": "RS256", "kid": "new"}, s.claims())
	for range 2 {
		if _, err := s.v.Validate(ctx, "idp", tok); !errors.Is(err, authz.ErrKeysUnavailable) {
			t.Fatalf("unknown kid while down: %v", err)
		}
	}
	// Back up, with the key rotated: the new kid verifies after a fetch.
	s.iss.SetDown(false)
	k := s.iss.Rotate("new", "RS256", false)
	s.clock.Advance(authz.MinRefetchInterval)
	tok = idptest.Sign(t, k, "RS256", map[string]any{"alg": "RS256", "kid": "new"}, s.claims())
	if _, err := s.v.Validate(ctx, "idp", tok); err != nil {
		t.Fatalf("after the provider came back: %v", err)
	}
	// A kid the fresh set lacks is refused.
	tok = idptest.Sign(t, k, "RS256", map[string]any{"alg": "RS256", "kid": "absent"}, s.claims())
	if _, err := s.v.Validate(ctx, "idp", tok); !errors.Is(err, authz.ErrKeyNotFound) {
		t.Fatalf("absent kid: %v", err)
	}
}

func TestProviderDownAtStart(t *testing.T) {
	s := newSetup(t, "RS256", nil)
	ctx := context.Background()
	s.iss.SetDown(true)
	tok := s.iss.Token(s.claims())
	_, err := s.v.Validate(ctx, "idp", tok)
	if !errors.Is(err, authz.ErrKeysUnavailable) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("down at start: %v", err)
	}
	// Failures are not cached: once keys arrive, the same token passes.
	s.iss.SetDown(false)
	if _, err := s.v.Validate(ctx, "idp", tok); !errors.Is(err, authz.ErrKeysUnavailable) {
		t.Fatalf("within the refetch interval: %v", err)
	}
	s.clock.Advance(authz.MinRefetchInterval)
	if _, err := s.v.Validate(ctx, "idp", tok); err != nil {
		t.Fatalf("after the provider came back: %v", err)
	}
}

func TestDiscoveryIssuerMismatch(t *testing.T) {
	iss := idptest.NewIssuer(t, "RS256")
	keys, err := authz.NewRemoteKeys(authz.RemoteKeysConfig{Name: "idp", WellKnownURL: iss.WellKnownURL(), Issuer: "https://elsewhere.example/", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	_, err = keys.Key(context.Background(), "key-1")
	if !errors.Is(err, authz.ErrKeysUnavailable) || !strings.Contains(err.Error(), "names issuer") {
		t.Fatalf("got %v", err)
	}
}

func TestRunFetchesAndStops(t *testing.T) {
	iss := idptest.NewIssuer(t, "RS256")
	keys, err := authz.NewRemoteKeys(authz.RemoteKeysConfig{Name: "idp", JWKSURI: iss.JWKSURI(), Issuer: iss.URL, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { keys.Run(ctx); close(done) }()
	waittest.Until(t, 5*time.Second, "Run did not fetch", func() bool { return iss.JWKSRequests() > 0 })
	cancel()
	<-done
	if _, err := keys.Key(context.Background(), "key-1"); err != nil {
		t.Fatal(err)
	}
}

func TestValidateByIssuer(t *testing.T) {
	s := newSetup(t, "ES256", nil)
	ctx := context.Background()
	now := s.clock.Now()
	first := s.iss.Token(s.claims())
	for _, tt := range []struct {
		name, token, provider string
		want                  error
	}{
		{"first provider", first, "idp", nil},
		{"first provider, from the cache", first, "idp", nil},
		{"second provider", s.other.Token(s.other.Claims(now, "my-api")), "other", nil},
		{"unknown issuer", s.iss.Token(with(s.claims(), "iss", "https://elsewhere.example/")), "", authz.ErrIssuerNotTrusted},
		{"our iss, other's key", idptest.Sign(t, s.other.Key(), "RS256", map[string]any{"alg": "RS256", "kid": s.other.Key().ID}, s.claims()), "", authz.ErrAlgorithmNotAllowed},
		{"malformed", "x.y", "", authz.ErrMalformed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, p, err := s.v.ValidateByIssuer(ctx, tt.token)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if tt.want == nil && (p.Name() != tt.provider || c.Issuer() != p.Issuer()) {
				t.Fatalf("provider %s, iss %s", p.Name(), c.Issuer())
			}
		})
	}
}
