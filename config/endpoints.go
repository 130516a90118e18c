package config

import (
	"net/url"
	"strings"
)

// The paths vakt serves for its issuer (RFC 8414 §3): the token endpoint
// and the key set under the issuer's path, the metadata at MetadataPath
// with the issuer's path appended.
const (
	TokenPath    = "/token"
	JWKSPath     = "/jwks"
	MetadataPath = "/.well-known/oauth-authorization-server"
)

// IssuerPath is the path of an issuer URL without its trailing slash: ""
// for https://vakt.example, "/tenant" for https://vakt.example/tenant/.
func IssuerPath(issuer string) string {
	u, err := url.Parse(issuer)
	if err != nil {
		return ""
	}
	return strings.TrimRight(u.Path, "/") // validation refuses paths that need escaping
}

// Endpoints are the URLs of what vakt serves for an issuer.
type Endpoints struct {
	Token, JWKS, Metadata string
}

// EndpointsAt are the issuer's endpoints as served at base, the scheme and
// authority (https://vakt.example, http://vakt.vakt.svc:8080) of a listener
// serving them: the issuer's own when base is "".
func EndpointsAt(issuer, base string) Endpoints {
	if base == "" {
		if u, err := url.Parse(issuer); err == nil {
			base = u.Scheme + "://" + u.Host
		}
	}
	base = strings.TrimRight(base, "/")
	p := IssuerPath(issuer)
	return Endpoints{Token: base + p + TokenPath, JWKS: base + p + JWKSPath, Metadata: base + MetadataPath + p}
}
