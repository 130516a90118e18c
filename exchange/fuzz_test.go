package exchange

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/internal/idptest"
)

// FuzzClientAssertion: any assertion is refused with invalid_client (never a
// panic, never another code, never a token) except the genuine seed.
func FuzzClientAssertion(f *testing.F) {
	const issuer, client, target = "https://vakt.example", "dev:a:app-1", "dev:b:app-b"
	idp := idptest.NewKey(f, "idp-1", "ES256")
	clientKey := idptest.NewKey(f, "c-1", "ES256")
	key := func(k *idptest.Key) authz.KeySource {
		vk, _ := authz.NewKey(k.ID, k.Alg, k.Public())
		set, _ := authz.NewKeySet(vk)
		return authz.StaticKeys{Set: set}
	}
	sp, _ := authz.NewProvider(authz.ProviderConfig{Name: "idp", Issuer: "https://idp.example", Keys: key(idp)})
	subjects, _ := authz.NewValidator(authz.ValidatorConfig{Providers: []*authz.Provider{sp}})
	policy, _ := authz.NewPolicy([]authz.ApplicationPolicy{{ID: target, Inbound: []string{client}}})
	sk, _ := GenerateSigningKey("ES256")
	signer, _ := NewSigner(sk)
	a, err := NewAuthority(AuthorityConfig{
		Issuer: issuer, Subjects: subjects, Clients: map[string]authz.KeySource{client: key(clientKey)},
		Policy: policy, Signer: signer, Replay: NewMemoryReplay(MemoryReplayConfig{}), Logger: quietLog,
	})
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	subject := idptest.Sign(f, idp, "ES256", map[string]any{"alg": "ES256", "kid": "idp-1"}, map[string]any{"iss": "https://idp.example", "sub": "u", "exp": now.Add(time.Hour).Unix()})
	genuine := idptest.Sign(f, clientKey, "ES256", map[string]any{"alg": "ES256", "kid": "c-1"}, map[string]any{
		"iss": client, "sub": client, "aud": issuer + "/token", "jti": "seed", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
	})
	f.Add(genuine)
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJkZXY6YTphcHAtMSJ9.")
	f.Add("")
	f.Fuzz(func(t *testing.T, assertion string) {
		res, err := a.Exchange(context.Background(), Request{
			GrantType: GrantTypeTokenExchange, ClientAssertionType: ClientAssertionTypeJWT, ClientAssertion: assertion,
			SubjectTokenType: TokenTypeJWT, SubjectToken: subject, Audience: []string{target},
		})
		if err == nil {
			if assertion != genuine || res.AccessToken == "" {
				t.Fatalf("accepted %q", assertion)
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%q: %v", assertion, err)
		}
		switch r := e.Reason(); {
		case r == authz.ReasonClientUnknown, r == authz.ReasonAssertionInvalid, r == authz.ReasonAssertionReplayed:
		case assertion == "" && r == authz.ReasonClientAuthentication:
		default:
			t.Fatalf("%q: %v", assertion, err)
		}
	})
}
