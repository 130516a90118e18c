package exchange

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"

	"github.com/vakt-dev/vakt/authz"
)

// Signer signs the tokens vakt issues. Every key it holds is published; the
// first one signs. It is immutable: a changed keys file makes a new Signer.
type Signer struct {
	keys []*SigningKey
	jwks []byte // the public JWK Set
}

// NewSigner returns a Signer over keys; keys[0] signs.
func NewSigner(keys ...*SigningKey) (*Signer, error) {
	if len(keys) == 0 {
		return nil, errors.New("no signing keys")
	}
	seen := map[string]bool{}
	pub := make([]any, 0, len(keys))
	for _, k := range keys {
		if k.ID == "" || seen[k.ID] {
			return nil, fmt.Errorf("signing key ids must be present and unique (%q)", k.ID)
		}
		seen[k.ID] = true
		jk, err := asJWK(k, k.Private.Public())
		if err != nil {
			return nil, err
		}
		pub = append(pub, jk)
	}
	jwks, err := json.Marshal(map[string]any{"keys": pub})
	if err != nil {
		return nil, err
	}
	return &Signer{keys: keys, jwks: jwks}, nil
}

// Keys returns every key, the signing one first.
func (s *Signer) Keys() []*SigningKey { return s.keys }

// JWKS returns the public JWK Set: no private member of any key.
func (s *Signer) JWKS() []byte { return s.jwks }

// Sign makes a compact JWS of claims with header {alg, kid, typ}.
func (s *Signer) Sign(typ string, claims map[string]any) (string, error) {
	k := s.keys[0]
	hdr, err := json.Marshal(map[string]string{"alg": k.Alg, "kid": k.ID, "typ": typ})
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	buf := make([]byte, 0, enc.EncodedLen(len(hdr))+enc.EncodedLen(len(payload))+2+enc.EncodedLen(512))
	buf = enc.AppendEncode(buf, hdr)
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, payload)
	sig, err := jwsbb.Sign(k.Private, k.Alg, buf, rand.Reader)
	if err != nil {
		return "", fmt.Errorf("signing with key %s: %w", k.ID, err)
	}
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, sig)
	return string(buf), nil
}

// LoadKeysFile reads a private JWK Set. Every key needs a kid; its alg is
// the JWK's own, or RS256 for RSA, ES256 for P-256 and EdDSA for Ed25519.
// The first key signs.
func LoadKeysFile(path string) ([]*SigningKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParsePrivateKeys(data)
}

// ParsePrivateKeys parses a private JWK Set (see LoadKeysFile).
func ParsePrivateKeys(data []byte) ([]*SigningKey, error) {
	set, err := jwk.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("signing keys are not a valid JWK Set: %w", err)
	}
	if set.Len() == 0 {
		return nil, errors.New("signing key set is empty")
	}
	keys := make([]*SigningKey, 0, set.Len())
	for i := range set.Len() {
		jk, _ := set.Key(i)
		kid, ok := jk.KeyID()
		if !ok || kid == "" {
			return nil, fmt.Errorf("keys[%d] has no kid", i)
		}
		var raw any
		if err := jwk.Export(jk, &raw); err != nil {
			return nil, fmt.Errorf("keys[%d] (%s): %w", i, kid, err)
		}
		var signer crypto.Signer
		var alg string
		switch p := raw.(type) {
		case *rsa.PrivateKey:
			if p.N.BitLen() < authz.MinRSABits {
				return nil, fmt.Errorf("keys[%d] (%s): RSA keys need at least %d bits", i, kid, authz.MinRSABits)
			}
			signer, alg = p, "RS256"
		case *ecdsa.PrivateKey:
			if p.Curve != elliptic.P256() {
				return nil, fmt.Errorf("keys[%d] (%s): only P-256 EC keys are supported", i, kid)
			}
			signer, alg = p, "ES256"
		case ed25519.PrivateKey:
			signer, alg = p, "EdDSA"
		default:
			return nil, fmt.Errorf("keys[%d] (%s) is not a private RSA, P-256 or Ed25519 key", i, kid)
		}
		if a, ok := jk.Algorithm(); ok {
			alg = a.String()
		}
		k := &SigningKey{ID: kid, Alg: alg, Private: signer}
		if _, err := k.VerificationKey(); err != nil {
			return nil, fmt.Errorf("keys[%d] (%s): %w", i, kid, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// MarshalPrivateKeys writes keys as a private JWK Set.
func MarshalPrivateKeys(keys []*SigningKey) ([]byte, error) {
	out := make([]any, 0, len(keys))
	for _, k := range keys {
		jk, err := asJWK(k, k.Private)
		if err != nil {
			return nil, err
		}
		out = append(out, jk)
	}
	return json.MarshalIndent(map[string]any{"keys": out}, "", "  ")
}

// MarshalPrivateJWK writes one private key as a single JWK (not a set), with
// kid, alg and use: the form NAIS gives an application in
// TOKEN_X_PRIVATE_JWK, and ParsePrivateJWK reads.
func MarshalPrivateJWK(k *SigningKey) ([]byte, error) {
	jk, err := asJWK(k, k.Private)
	if err != nil {
		return nil, err
	}
	return json.Marshal(jk)
}

// ParsePrivateJWK reads one private JWK, as MarshalPrivateJWK writes it.
// Its errors never quote the key.
func ParsePrivateJWK(data []byte) (*SigningKey, error) {
	keys, err := ParsePrivateKeys(append(append([]byte(`{"keys":[`), data...), "]}"...))
	if err != nil || len(keys) != 1 {
		return nil, errors.New("not one private JWK (RSA, P-256 or Ed25519) with a kid")
	}
	return keys[0], nil
}

// PublicJWK is the public half of k as a JWK, with kid, alg and use.
func PublicJWK(k *SigningKey) (json.RawMessage, error) {
	jk, err := asJWK(k, k.Private.Public())
	if err != nil {
		return nil, err
	}
	return json.Marshal(jk)
}

// asJWK is k's private or public key (material) as a JWK, with kid, alg
// and use.
func asJWK(k *SigningKey, material any) (jwk.Key, error) {
	jk, err := jwk.Import(material)
	if err != nil {
		return nil, err
	}
	_ = jk.Set(jwk.KeyIDKey, k.ID)
	_ = jk.Set(jwk.AlgorithmKey, jwa.NewSignatureAlgorithm(k.Alg))
	_ = jk.Set(jwk.KeyUsageKey, "sig")
	return jk, nil
}
