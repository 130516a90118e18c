// Package devidp is the development identity provider: it stands in for
// ID-porten on vakt's embedded development defaults, so that a newcomer can
// see vakt work without an identity provider of their own.
//
// It issues tokens to anyone who asks. It exists only on the development
// defaults (vakt serve without --config, and vakt demo), which add it in
// code: no configuration file can name it, so no file enables it by
// accident, and vakt logs loudly whenever it runs.
package devidp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/vakt-dev/vakt/exchange"
)

// Name is the identity provider name the development defaults give it.
const Name = "idporten"

// PathPrefix is where vakt's HTTP server mounts it.
const PathPrefix = "/devidp"

// IDP is a development identity provider with an ephemeral key.
type IDP struct {
	issuer string
	signer *exchange.Signer
	now    func() time.Time
}

// New makes an identity provider whose issuer is base + PathPrefix.
func New(base string, now func() time.Time) (*IDP, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := exchange.NewSigner(&exchange.SigningKey{ID: "devidp-" + uuid.NewString()[:8], Alg: "ES256", Private: priv})
	if err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	return &IDP{issuer: strings.TrimRight(base, "/") + PathPrefix, signer: signer, now: now}, nil
}

// Issuer is the identity provider's issuer identifier.
func (d *IDP) Issuer() string { return d.issuer }

// WellKnownURL is its discovery document.
func (d *IDP) WellKnownURL() string { return d.issuer + "/.well-known/openid-configuration" }

// Token issues a citizen's token: sub, pid, acr, scope, lasting ttl (a
// negative ttl makes an expired token).
func (d *IDP) Token(sub, pid, scope string, ttl time.Duration) (string, error) {
	now := d.now()
	return d.signer.Sign("JWT", map[string]any{
		"iss": d.issuer, "sub": sub, "pid": pid, "acr": "idporten-loa-high", "amr": []string{"BankID"},
		"scope": scope, "client_id": "devidp-login", "iat": now.Unix(), "nbf": now.Add(min(ttl, 0)).Unix(),
		"exp": now.Add(ttl).Unix(), "jti": uuid.NewString(),
	})
}

// Handler serves discovery, the key set, and GET /token?sub=&pid=&scope=&ttl=
// (ttl in seconds; default 3600), all under PathPrefix.
func (d *IDP) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathPrefix+"/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": d.issuer, "jwks_uri": d.issuer + "/jwks", "token_endpoint": d.issuer + "/token",
			"id_token_signing_alg_values_supported": []string{"ES256"}, "subject_types_supported": []string{"public"},
			"response_types_supported": []string{},
		})
	})
	mux.HandleFunc("GET "+PathPrefix+"/jwks", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(d.signer.JWKS())
	})
	mux.HandleFunc("GET "+PathPrefix+"/token", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		ttl := time.Hour
		if s := q.Get("ttl"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < -86400 || n > 86400 {
				http.Error(w, "ttl must be seconds between -86400 and 86400", http.StatusBadRequest)
				return
			}
			ttl = time.Duration(n) * time.Second
		}
		sub := q.Get("sub")
		if sub == "" {
			sub = "citizen-1"
		}
		tok, err := d.Token(sub, q.Get("pid"), q.Get("scope"), ttl)
		if err != nil {
			http.Error(w, "cannot sign", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": int(ttl / time.Second)})
	})
	return mux
}

// String says what it is, for logs.
func (d *IDP) String() string {
	return fmt.Sprintf("DEVELOPMENT identity provider %s: it issues tokens to anyone; never use it in production", d.issuer)
}
