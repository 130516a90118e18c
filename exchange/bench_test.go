package exchange

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/internal/idptest"
)

func staticKeys(b *testing.B, k *idptest.Key) authz.KeySource {
	key, err := authz.NewKey(k.ID, k.Alg, k.Public())
	if err != nil {
		b.Fatal(err)
	}
	set, _ := authz.NewKeySet(key)
	return authz.StaticKeys{Set: set}
}

// BenchmarkExchange is one whole exchange in-process: client assertion
// verified (ES256) and recorded in the in-memory replay store, subject token
// from the verified-token cache, policy, claims copied and the new token
// signed with the named algorithm.
func BenchmarkExchange(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		b.Run("sign="+alg, func(b *testing.B) {
			const issuer = "https://vakt.example"
			const client, target = "dev:a:app-1", "dev:b:app-b"
			idp := idptest.NewKey(b, "idp-1", "ES256")
			clientKey := idptest.NewKey(b, "c-1", "ES256")
			subjectProvider, _ := authz.NewProvider(authz.ProviderConfig{Name: "idporten", Issuer: "https://idporten.example/", Keys: staticKeys(b, idp)})
			subjects, _ := authz.NewValidator(authz.ValidatorConfig{Providers: []*authz.Provider{subjectProvider}})
			policy, _ := authz.NewPolicy([]authz.ApplicationPolicy{{ID: target, Inbound: []string{client}}})
			sk, err := GenerateSigningKey(alg)
			if err != nil {
				b.Fatal(err)
			}
			signer, _ := NewSigner(sk)
			a, err := NewAuthority(AuthorityConfig{
				Issuer: issuer, Subjects: subjects, OwnProvider: "tokenx",
				Clients: map[string]authz.KeySource{client: staticKeys(b, clientKey)},
				Policy:  policy, Signer: signer, Replay: NewMemoryReplay(MemoryReplayConfig{}), Logger: quietLog,
			})
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			subject := idptest.Sign(b, idp, "ES256", map[string]any{"alg": "ES256", "kid": "idp-1"}, map[string]any{
				"iss": "https://idporten.example/", "sub": "user-1", "pid": "12345678901", "acr": "idporten-loa-high",
				"amr": []string{"BankID"}, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix(),
			})
			assertions := make([]string, b.N)
			for i := range assertions {
				assertions[i] = idptest.Sign(b, clientKey, "ES256", map[string]any{"alg": "ES256", "kid": "c-1", "typ": "JWT"}, map[string]any{
					"iss": client, "sub": client, "aud": issuer + "/token", "jti": fmt.Sprintf("%d", i),
					"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(100 * time.Second).Unix(),
				})
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := a.Exchange(ctx, Request{
					GrantType: GrantTypeTokenExchange, ClientAssertionType: ClientAssertionTypeJWT, ClientAssertion: assertions[i],
					SubjectTokenType: TokenTypeJWT, SubjectToken: subject, Audience: []string{target},
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBareSign and BenchmarkBareVerify are the floors an exchange is
// compared against: one signature made, one checked.
func BenchmarkBareSign(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		b.Run(alg, func(b *testing.B) {
			k, _ := GenerateSigningKey(alg)
			msg := make([]byte, 600)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := jwsbb.Sign(k.Private, alg, msg, rand.Reader); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkBareVerify(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		b.Run(alg, func(b *testing.B) {
			k, _ := GenerateSigningKey(alg)
			msg := make([]byte, 600)
			sig, _ := jwsbb.Sign(k.Private, alg, msg, rand.Reader)
			pub := k.Private.Public()
			b.ReportAllocs()
			for b.Loop() {
				if err := jwsbb.Verify(pub, alg, msg, sig); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
