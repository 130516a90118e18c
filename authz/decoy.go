package authz

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"math/big"

	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"
)

// decoyRSAModulus is the modulus of a public 2048-bit RSA key (a demo key of
// deploy/examples): a signature check against it costs what one against a
// client's key costs, and can never succeed for anyone's token.
const decoyRSAModulus = "vtVigcBPfbBD03GZlD1a7NgE_ZVdT3qT2mskF3HwqpQ7EDe8bB17X66TA6sYInE5i-Ak6XifWxVNwKc7sCYdOx8U73MHNaIuYyGad5jC6WhTXJQVNZeVC_t9F1id0CQ8Wv-VLkR1yR6yytKIJeZFSTnUq5-rtSSebfi_7W5n-4Nn0s6retvSqhdsDDXgST8PVBAFRG0oWP1R1uP3s3Eh_bSyA20oMp0GarMaNVodHptsOoXeMf5acRLDMLuB6cVAN_Uzrs3_ZXRZS9dG3BHAegpcX8XpGCqqcvewnh-JxeZiXELllyFcj93wTth4DJtdE3Iv7hUTqZ7-3u8x6eRrlQ"

// Decoys stand in for a key that does not exist. When a token is refused
// before its signature could be checked (its issuer is unknown, its kid is
// not in the key set), a decoy check of the same algorithm makes the
// refusal take about as long as a bad signature does, so that timing does
// not tell a prober which issuers or keys exist. The result is ignored.
type Decoys struct {
	rsa *rsa.PublicKey
	ec  *ecdsa.PublicKey
	ed  ed25519.PublicKey
}

// NewDecoys returns decoy keys for RSA, P-256 and Ed25519 signatures.
func NewDecoys() *Decoys {
	n, _ := base64.RawURLEncoding.DecodeString(decoyRSAModulus)
	// P-256's base point, uncompressed: the public key of the private key 1.
	p256 := elliptic.P256().Params()
	point := append(append([]byte{4}, p256.Gx.FillBytes(make([]byte, 32))...), p256.Gy.FillBytes(make([]byte, 32))...)
	ec, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		panic("authz: the P-256 decoy key: " + err.Error())
	}
	return &Decoys{
		rsa: &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: 65537},
		ec:  ec,
		ed:  ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public().(ed25519.PublicKey),
	}
}

// Verify checks token's signature against the decoy of its algorithm, and
// discards the answer. A token that does not parse, or whose algorithm has
// no decoy, costs nothing: it was refused as fast for everyone.
func (d *Decoys) Verify(token string, maxSize int) {
	if maxSize <= 0 {
		maxSize = DefaultMaxTokenSize
	}
	pt, err := parseCompact(token, maxSize)
	if err != nil {
		return
	}
	var key any
	switch pt.alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		key = d.rsa
	case "ES256":
		key = d.ec
	case "EdDSA":
		key = d.ed
	default:
		return
	}
	// A copy, as Provider.verifyParsed makes: the same work as a real check.
	_ = jwsbb.Verify(key, pt.alg, []byte(pt.signingInput), pt.signature)
}
