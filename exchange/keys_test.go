package exchange

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"

	"github.com/vakt-dev/vakt/authz"
)

func TestGenerateSigningKey(t *testing.T) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			k, err := GenerateSigningKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			vk, err := k.VerificationKey()
			if err != nil {
				t.Fatal(err)
			}
			if !vk.Allows(alg) || vk.ID != k.ID || k.ID == "" {
				t.Fatalf("verification key %+v for %s", vk, alg)
			}
			set, _ := authz.NewKeySet(vk)
			got, err := authz.StaticKeys{Set: set}.Key(context.Background(), k.ID)
			if err != nil || got != vk {
				t.Fatal(err)
			}
			msg := []byte("header.payload")
			var signer any = k.Private
			sig, err := jwsbb.Sign(signer, alg, msg, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if err := jwsbb.Verify(k.Private.Public(), alg, msg, sig); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := GenerateSigningKey("HS256"); err == nil {
		t.Fatal("HS256 accepted")
	}
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))
