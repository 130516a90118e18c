package server

import (
	"net/http"
	"slices"
	"strings"

	"github.com/vakt-dev/vakt/exchange"
)

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

// metadata is RFC 8414 authorization server metadata, served as both
// /.well-known/oauth-authorization-server and /.well-known/openid-configuration.
func metadata(rt *Runtime) map[string]any {
	iss := strings.TrimRight(rt.Config.Issuer, "/")
	return map[string]any{
		"issuer":                                rt.Config.Issuer,
		"token_endpoint":                        rt.Authority.TokenEndpoint(),
		"jwks_uri":                              iss + "/jwks",
		"grant_types_supported":                 []string{exchange.GrantTypeTokenExchange},
		"token_endpoint_auth_methods_supported": []string{"private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": exchange.AssertionAlgorithms,
		"response_types_supported":                         []string{},
		"subject_types_supported":                          []string{"public"},
		"id_token_signing_alg_values_supported":            signingAlgorithms(rt.Signer),
	}
}

func signingAlgorithms(s *exchange.Signer) []string {
	var algs []string
	for _, k := range s.Keys() {
		if !slices.Contains(algs, k.Alg) {
			algs = append(algs, k.Alg)
		}
	}
	return algs
}
