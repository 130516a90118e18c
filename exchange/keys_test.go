package exchange

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"strings"
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

// One private JWK, as NAIS's TOKEN_X_PRIVATE_JWK holds it: written and
// read back; anything but exactly one private key with a kid is refused,
// without quoting what was given.
func TestPrivateJWK(t *testing.T) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		k, err := GenerateSigningKey(alg)
		if err != nil {
			t.Fatal(err)
		}
		b, err := MarshalPrivateJWK(k)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParsePrivateJWK(b)
		if err != nil || got.ID != k.ID || got.Alg != alg {
			t.Fatalf("%s: %v %v", alg, got, err)
		}
		pub, err := PublicJWK(k)
		if err != nil || strings.Contains(string(pub), `"d"`) {
			t.Fatalf("%s: the public JWK %s: %v", alg, pub, err)
		}
		if _, err := ParsePrivateJWK(pub); err == nil {
			t.Errorf("%s: a public JWK was read as a private key", alg)
		}
		two := append(append(b[:len(b):len(b)], ']', '}', ','), []byte(`{"keys":[`+string(b))...)
		if _, err := ParsePrivateJWK([]byte(string(b) + "," + string(b))); err == nil {
			t.Errorf("%s: two keys were read as one", alg)
		}
		if _, err := ParsePrivateJWK(two); err == nil || strings.Contains(err.Error(), k.ID) {
			t.Errorf("%s: %v", alg, err)
		}
	}
}
