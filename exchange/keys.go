// Package exchange is vakt's token exchange authority (RFC 8693): it
// verifies client assertions (RFC 7523) against each client's own keys,
// remembers their ids against replay (in memory or in Redis), validates the
// subject token, checks the target's access policy and mints a token for the
// target with vakt's signing keys, which it also rotates. The agent's side
// of an exchange is package agent.
package exchange

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"

	"github.com/google/uuid"

	"github.com/vakt-dev/vakt/authz"
)

// SigningKey is one of vakt's own private keys.
type SigningKey struct {
	ID      string
	Alg     string
	Private crypto.Signer
}

// GenerateSigningKey makes a fresh key for alg: RS256 (2048-bit RSA), ES256
// or EdDSA (Ed25519). Its kid is a random UUID.
func GenerateSigningKey(alg string) (*SigningKey, error) {
	var (
		priv crypto.Signer
		err  error
	)
	switch alg {
	case "RS256":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("signing algorithm %q is not supported (RS256, ES256 or EdDSA)", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("generating a %s key: %w", alg, err)
	}
	return &SigningKey{ID: uuid.NewString(), Alg: alg, Private: priv}, nil
}

// VerificationKey returns the public half for the validation engine.
func (k *SigningKey) VerificationKey() (*authz.Key, error) {
	return authz.NewKey(k.ID, k.Alg, k.Private.Public())
}
