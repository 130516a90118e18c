package server

import (
	"net/http"
	"strings"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
)

// issuerRoutes serves the endpoints whose paths follow from vakt's issuer
// (RFC 8414 §3): the token endpoint <issuer>/token, the key set
// <issuer>/jwks, and the metadata at /.well-known/oauth-authorization-server
// with the issuer's path appended (https://vakt.example/tenant has its
// metadata at /.well-known/oauth-authorization-server/tenant). The issuer is
// the running configuration's, so a reload that changes it moves them.
//
// vakt serves no /.well-known/openid-configuration: it is no OpenID
// Provider (it has no authorization endpoint and issues no ID tokens), and a
// discovery document that claimed otherwise would be invalid. OpenID
// Connect clients read RFC 8414 metadata too (openid-client: algorithm
// "oauth2").
type issuerRoutes struct {
	cur                   *Current
	token, jwks, metadata http.Handler
}

func (h *issuerRoutes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	base := config.IssuerPath(h.cur.Load().Config.Issuer)
	var next http.Handler
	method := http.MethodGet
	switch r.URL.Path {
	case base + config.TokenPath:
		next, method = h.token, http.MethodPost
	case base + config.JWKSPath:
		next = h.jwks
	case config.MetadataPath + base:
		next = h.metadata
	default:
		http.NotFound(w, r)
		return
	}
	if r.Method != method && (method != http.MethodGet || r.Method != http.MethodHead) {
		w.Header().Set("Allow", method)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	next.ServeHTTP(w, r)
}

// jwksHandler is GET /jwks: the public keys of the tokens vakt issues.
func jwksHandler(cur *Current) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, _ = w.Write(cur.Load().Signer.JWKS())
	}
}

// metadataHandler serves RFC 8414 authorization server metadata.
func metadataHandler(cur *Current) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, metadata(cur.Load()))
	}
}

// metadata is RFC 8414 authorization server metadata.
func metadata(rt *Runtime) map[string]any {
	iss := strings.TrimRight(rt.Config.Issuer, "/")
	return map[string]any{
		"issuer":                                rt.Config.Issuer,
		"token_endpoint":                        rt.Authority.TokenEndpoint(),
		"jwks_uri":                              iss + "/jwks",
		"grant_types_supported":                 []string{exchange.GrantTypeTokenExchange},
		"token_endpoint_auth_methods_supported": []string{"private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": exchange.AssertionAlgorithms,
		// REQUIRED by RFC 8414 §2; vakt has no authorization endpoint.
		"response_types_supported": []string{},
	}
}
