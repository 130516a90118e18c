package agent

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/vakt-dev/vakt/exchange"
)

// Env is an agent's configuration, from the environment variables NAIS
// gives applications, so an existing NAIS application can use it as is.
//
// NAIS documents (https://docs.nais.io/auth/tokenx/reference/, "Runtime
// variables & credentials") TOKEN_X_CLIENT_ID, TOKEN_X_PRIVATE_JWK and
// TOKEN_X_TOKEN_ENDPOINT for acquiring tokens, and TOKEN_X_CLIENT_ID,
// TOKEN_X_WELL_KNOWN_URL, TOKEN_X_ISSUER and TOKEN_X_JWKS_URI for
// validating them; and (https://docs.nais.io/auth/idporten/reference/)
// IDPORTEN_AUDIENCE, IDPORTEN_WELL_KNOWN_URL, IDPORTEN_ISSUER and
// IDPORTEN_JWKS_URI. It injects both the well-known URL and the jwks_uri
// (its docs call the well-known URL optional when ISSUER and JWKS_URI are
// used). With both, the agent uses discovery and requires its jwks_uri to
// be JWKS_URI; either alone is enough. NAIS_TOKEN_*_ENDPOINT, the addresses
// of NAIS's own sidecar, are not read.
type Env struct {
	ClientID      string               // TOKEN_X_CLIENT_ID
	Key           *exchange.SigningKey // TOKEN_X_PRIVATE_JWK
	TokenEndpoint string               // TOKEN_X_TOKEN_ENDPOINT
	Issuer        string               // TOKEN_X_ISSUER
	JWKSURI       string               // TOKEN_X_JWKS_URI, and/or
	WellKnownURL  string               // TOKEN_X_WELL_KNOWN_URL
	IDPorten      *IDPortenEnv
	BindAddress   string // BIND_ADDRESS: the HTTP listen address
	// UpstreamCAFile (vakt agent --upstream-ca) holds the CAs (PEM) that
	// verify the token endpoint's certificate; the system's when empty.
	UpstreamCAFile string
}

// IDPortenEnv is the identity provider whose tokens the application receives.
type IDPortenEnv struct {
	Issuer       string // IDPORTEN_ISSUER
	JWKSURI      string // IDPORTEN_JWKS_URI, and/or
	WellKnownURL string // IDPORTEN_WELL_KNOWN_URL
	Audience     string // IDPORTEN_AUDIENCE
}

// EnvFrom reads the agent's configuration. Every problem is named by
// its variable; the private key itself never appears in an error.
func EnvFrom(getenv func(string) string) (*Env, error) {
	var errs []error
	need := func(name string, isURL bool) string {
		v := getenv(name)
		switch {
		case v == "":
			errs = append(errs, fmt.Errorf("%s is not set", name))
		case isURL && !absoluteURL(v):
			errs = append(errs, fmt.Errorf("%s is not an absolute http(s) URL", name))
		}
		return v
	}
	e := &Env{
		ClientID:      need("TOKEN_X_CLIENT_ID", false),
		TokenEndpoint: need("TOKEN_X_TOKEN_ENDPOINT", true),
		Issuer:        need("TOKEN_X_ISSUER", false),
		JWKSURI:       getenv("TOKEN_X_JWKS_URI"),
		WellKnownURL:  getenv("TOKEN_X_WELL_KNOWN_URL"),
		BindAddress:   getenv("BIND_ADDRESS"),
	}
	if jwk := getenv("TOKEN_X_PRIVATE_JWK"); jwk == "" {
		errs = append(errs, errors.New("TOKEN_X_PRIVATE_JWK is not set"))
	} else if key, err := exchange.ParsePrivateJWK([]byte(jwk)); err != nil {
		// The parser's message never quotes the key.
		errs = append(errs, fmt.Errorf("TOKEN_X_PRIVATE_JWK is %w", err))
	} else {
		e.Key = key
	}
	if e.JWKSURI == "" && e.WellKnownURL == "" {
		errs = append(errs, errors.New("TOKEN_X_JWKS_URI or TOKEN_X_WELL_KNOWN_URL must be set, to introspect tokens issued to this application"))
	}
	for _, v := range [...]struct{ name, value string }{{"TOKEN_X_JWKS_URI", e.JWKSURI}, {"TOKEN_X_WELL_KNOWN_URL", e.WellKnownURL}} {
		if v.value != "" && !absoluteURL(v.value) {
			errs = append(errs, fmt.Errorf("%s is not an absolute http(s) URL", v.name))
		}
	}
	if iss := getenv("IDPORTEN_ISSUER"); iss != "" {
		e.IDPorten = &IDPortenEnv{
			Issuer: iss, JWKSURI: getenv("IDPORTEN_JWKS_URI"), WellKnownURL: getenv("IDPORTEN_WELL_KNOWN_URL"),
			Audience: getenv("IDPORTEN_AUDIENCE"),
		}
		if e.IDPorten.JWKSURI == "" && e.IDPorten.WellKnownURL == "" {
			errs = append(errs, errors.New("IDPORTEN_JWKS_URI or IDPORTEN_WELL_KNOWN_URL must be set with IDPORTEN_ISSUER"))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return e, nil
}

func absoluteURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}
