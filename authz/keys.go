package authz

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// Algorithms vakt can verify. HMAC and "none" are not among them and can never
// be configured: a verifier holding only public keys has no business with them.
var supportedAlgorithms = []string{
	"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512", "EdDSA",
}

// DefaultAlgorithms is the allowlist of a provider that names none.
var DefaultAlgorithms = []string{"RS256", "PS256", "ES256", "EdDSA"}

// SupportedAlgorithm reports whether alg can be put on an allowlist.
func SupportedAlgorithm(alg string) bool { return slices.Contains(supportedAlgorithms, alg) }

// MinRSABits is the smallest RSA modulus accepted in a key set.
const MinRSABits = 2048

// Key is one public verification key.
type Key struct {
	ID     string
	public any      // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	algs   []string // algorithms this key may verify
}

// Allows reports whether the key may verify a signature made with alg: the
// JWK's own "alg" when it has one, otherwise any algorithm of its type.
func (k *Key) Allows(alg string) bool { return slices.Contains(k.algs, alg) }

// KeySet is an immutable set of verification keys, looked up by kid.
type KeySet struct {
	byID map[string]*Key
	only *Key // the single key of a one-key set, used for tokens without kid
}

// Len returns the number of keys.
func (s *KeySet) Len() int {
	if s == nil {
		return 0
	}
	return len(s.byID)
}

// Lookup returns the key whose kid is exactly kid. A token without kid
// matches only when the set holds exactly one key.
func (s *KeySet) Lookup(kid string) (*Key, bool) {
	if s == nil {
		return nil, false
	}
	if kid == "" {
		return s.only, s.only != nil
	}
	k, ok := s.byID[kid]
	return k, ok
}

// ParseKeySet parses a JWK Set (RFC 7517 §5). Keys that cannot verify
// signatures (encryption keys, symmetric keys, unknown types, RSA keys under
// 2048 bits) are skipped and reported in skipped, so one odd key does not cost
// a provider all of its keys. Private keys are rejected: a key set names
// public keys, and a private one published by mistake must not be used. Two
// keys with one kid are rejected too, as lookups by kid would be ambiguous.
func ParseKeySet(data []byte) (set *KeySet, skipped []error, err error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, nil, fmt.Errorf("key set is not valid JSON: %w", err)
	}
	if doc.Keys == nil {
		return nil, nil, errors.New(`key set has no "keys" array`)
	}
	set = &KeySet{byID: make(map[string]*Key, len(doc.Keys))}
	var unnamed []*Key
	for i, raw := range doc.Keys {
		k, err := parseKey(raw)
		if errors.Is(err, errPrivateKey) {
			return nil, nil, fmt.Errorf("keys[%d]: %w", i, err)
		}
		if err != nil {
			skipped = append(skipped, fmt.Errorf("keys[%d]: %w", i, err))
			continue
		}
		if k.ID == "" {
			unnamed = append(unnamed, k)
			continue
		}
		if _, dup := set.byID[k.ID]; dup {
			return nil, nil, fmt.Errorf("keys[%d]: kid %q appears twice", i, k.ID)
		}
		set.byID[k.ID] = k
	}
	switch {
	case len(unnamed) == 1 && len(set.byID) == 0:
		set.byID[""], set.only = unnamed[0], unnamed[0]
	case len(unnamed) > 0:
		// A key without kid in a set of several could never be chosen.
		skipped = append(skipped, fmt.Errorf("%d key(s) without kid in a set of several cannot be selected", len(unnamed)))
	case len(set.byID) == 1:
		for _, k := range set.byID {
			set.only = k
		}
	}
	return set, skipped, nil
}

var errPrivateKey = errors.New("key set contains a private key; publish only public keys")

func parseKey(raw json.RawMessage) (*Key, error) {
	jk, err := jwk.ParseKey(raw)
	if err != nil {
		return nil, fmt.Errorf("not a valid JWK: %w", err)
	}
	if use, ok := jk.KeyUsage(); ok && use != "sig" {
		return nil, fmt.Errorf("key use is %q, not sig", use)
	}
	var pub any
	if err := jwk.Export(jk, &pub); err != nil {
		return nil, fmt.Errorf("cannot use key: %w", err)
	}
	var algs []string
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if p.N.BitLen() < MinRSABits {
			return nil, fmt.Errorf("RSA key has %d bits, at least %d are required", p.N.BitLen(), MinRSABits)
		}
		algs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	case *ecdsa.PublicKey:
		switch p.Curve {
		case elliptic.P256():
			algs = []string{"ES256"}
		case elliptic.P384():
			algs = []string{"ES384"}
		case elliptic.P521():
			algs = []string{"ES512"}
		default:
			return nil, errors.New("unsupported elliptic curve")
		}
	case ed25519.PublicKey:
		algs = []string{"EdDSA"}
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
		return nil, errPrivateKey
	default:
		return nil, fmt.Errorf("key type %s cannot verify signatures", jk.KeyType())
	}
	if a, ok := jk.Algorithm(); ok {
		if !slices.Contains(algs, a.String()) {
			return nil, fmt.Errorf("key alg %q does not fit its key type", a.String())
		}
		algs = []string{a.String()}
	}
	kid, _ := jk.KeyID()
	return &Key{ID: kid, public: pub, algs: algs}, nil
}

// NewKey wraps a public key for use in a static key set. It is meant for
// keys vakt holds itself (its signing keys), which need no parsing.
func NewKey(kid, alg string, public any) (*Key, error) {
	switch public.(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("key type %T cannot verify signatures", public)
	}
	if !SupportedAlgorithm(alg) {
		return nil, fmt.Errorf("algorithm %q is not supported", alg)
	}
	return &Key{ID: kid, public: public, algs: []string{alg}}, nil
}

// Equal reports whether s and o hold the same keys: the same kids, each
// with the same public key and algorithms.
func (s *KeySet) Equal(o *KeySet) bool {
	if s.Len() != o.Len() {
		return false
	}
	if s == nil || s == o {
		return true
	}
	for kid, k := range s.byID {
		ko, found := o.byID[kid]
		if !found || !slices.Equal(k.algs, ko.algs) {
			return false
		}
		pub, comparable := k.public.(interface{ Equal(crypto.PublicKey) bool })
		if !comparable || !pub.Equal(ko.public) {
			return false
		}
	}
	return (s.only == nil) == (o.only == nil)
}

// NewKeySet builds a key set from keys with distinct ids.
func NewKeySet(keys ...*Key) (*KeySet, error) {
	set := &KeySet{byID: make(map[string]*Key, len(keys))}
	for _, k := range keys {
		if _, dup := set.byID[k.ID]; dup {
			return nil, fmt.Errorf("kid %q appears twice", k.ID)
		}
		set.byID[k.ID] = k
	}
	if len(keys) == 1 {
		set.only = keys[0]
	}
	return set, nil
}
