package agent

import (
	"time"

	"github.com/google/uuid"

	"github.com/vakt-dev/vakt/exchange"
)

// AssertionLifetime is how long an agent's client assertion is valid.
const AssertionLifetime = 30 * time.Second

// AssertionBuilder makes client assertions as the NAIS documentation
// specifies: header kid, typ JWT, alg RS256 (or the key's own algorithm for
// EC and OKP keys); claims sub = iss = the client id, aud = the token
// endpoint, a fresh jti for every assertion, nbf = iat = now, exp = now + 30 s.
type AssertionBuilder struct {
	ClientID      string
	TokenEndpoint string
	Key           *exchange.SigningKey
	Now           func() time.Time
}

// Build makes one assertion.
func (b *AssertionBuilder) Build() (string, error) {
	signer, err := exchange.NewSigner(b.Key)
	if err != nil {
		return "", err
	}
	now := b.Now()
	return signer.Sign("JWT", map[string]any{
		"iss": b.ClientID, "sub": b.ClientID, "aud": b.TokenEndpoint,
		"jti": uuid.NewString(), "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(AssertionLifetime).Unix(),
	})
}
