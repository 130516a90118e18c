// Package idptest runs an identity provider for tests: a real HTTP server
// with OpenID Connect discovery and a JWKS, keys that rotate, an outage
// switch, and token signing with full control over header and payload so
// tests can also build hostile tokens.
package idptest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"
)

// Key is a signing key with its kid and algorithm.
type Key struct {
	ID      string
	Alg     string
	Private crypto.Signer

	jwk []byte // the public JWK, made with the key (see publicJWK)
}

// Public returns the public half of the key.
func (k *Key) Public() crypto.PublicKey { return k.Private.Public() }

// NewKey makes a key for alg (RS*, PS*, ES256/384/512 or EdDSA).
func NewKey(tb testing.TB, kid, alg string) *Key {
	tb.Helper()
	var (
		priv crypto.Signer
		err  error
	)
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ES512":
		priv, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "EdDSA":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		err = fmt.Errorf("unsupported alg %q", alg)
	}
	if err != nil {
		tb.Fatal(err)
	}
	k := &Key{ID: kid, Alg: alg, Private: priv}
	if k.jwk, err = publicJWK(k); err != nil {
		tb.Fatal(err)
	}
	return k
}

// publicJWK is the public JWK of k, with kid, alg and use. It is made once,
// in the test's goroutine: the issuer's HTTP handlers only read it, and never
// call the test's methods from their own goroutines.
func publicJWK(k *Key) ([]byte, error) {
	jk, err := jwk.Import(k.Public())
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(jk)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	m["kid"], m["alg"], m["use"] = k.ID, k.Alg, "sig"
	return json.Marshal(m)
}

// JWK returns the public JWK of the key, with kid, alg and use.
func (k *Key) JWK(tb testing.TB) map[string]any {
	tb.Helper()
	jwkJSON := k.jwk
	if jwkJSON == nil { // a Key made by hand, not by NewKey
		var err error
		if jwkJSON, err = publicJWK(k); err != nil {
			tb.Fatal(err)
		}
	}
	var m map[string]any
	if err := json.Unmarshal(jwkJSON, &m); err != nil {
		tb.Fatal(err)
	}
	return m
}

// Sign builds a compact JWS from a header and payload given as JSON text (or
// any value, marshalled) and signs it with key under alg.
func Sign(tb testing.TB, key *Key, alg string, header, payload any) string {
	tb.Helper()
	input := Segment(tb, header) + "." + Segment(tb, payload)
	var signer any = key.Private
	if ek, ok := key.Private.(ed25519.PrivateKey); ok {
		signer = ek
	}
	sig, err := jwsbb.Sign(signer, alg, []byte(input), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// Segment base64url-encodes a JSON text given as string or []byte, or the
// JSON encoding of any other value.
func Segment(tb testing.TB, v any) string {
	tb.Helper()
	var b []byte
	switch x := v.(type) {
	case string:
		b = []byte(x)
	case []byte:
		b = x
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			tb.Fatal(err)
		}
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Issuer is an identity provider served over HTTP on loopback. Its issuer
// identifier is its base URL.
type Issuer struct {
	tb     testing.TB
	Server *httptest.Server
	URL    string

	mu           sync.Mutex
	current      *Key
	published    []*Key
	cacheControl string

	down     atomic.Bool
	hang     atomic.Bool   // requests wait until released or cancelled
	release  chan struct{} // closed when the issuer stops
	requests atomic.Int64  // JWKS requests
}

// wait holds a request while the issuer hangs, until the client gives up
// or the issuer stops.
func (i *Issuer) wait(r *http.Request) bool {
	if !i.hang.Load() {
		return false
	}
	select {
	case <-r.Context().Done():
	case <-i.release:
	}
	return true
}

// NewIssuer starts an issuer with one key of alg, published and signing.
func NewIssuer(tb testing.TB, alg string) *Issuer {
	tb.Helper()
	iss := &Issuer{tb: tb, release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		if iss.wait(r) {
			return
		}
		if iss.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": iss.URL, "jwks_uri": iss.URL + "/jwks"})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		iss.requests.Add(1)
		if iss.wait(r) {
			return
		}
		if iss.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		// Never call tb here: this is the server's goroutine, not the test's.
		keys, cc := iss.publishedJWKS()
		if cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	})
	iss.Server = httptest.NewServer(mux)
	iss.URL = iss.Server.URL
	tb.Cleanup(func() {
		close(iss.release)
		iss.Server.Close()
	})
	k := NewKey(tb, "key-1", alg)
	iss.current, iss.published = k, []*Key{k}
	return iss
}

func (i *Issuer) publishedJWKS() ([]json.RawMessage, string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	keys := make([]json.RawMessage, 0, len(i.published))
	for _, k := range i.published {
		keys = append(keys, k.jwk)
	}
	return keys, i.cacheControl
}

// WellKnownURL is the discovery document's address.
func (i *Issuer) WellKnownURL() string { return i.URL + "/.well-known/openid-configuration" }

// JWKSURI is the key set's address.
func (i *Issuer) JWKSURI() string { return i.URL + "/jwks" }

// Key returns the signing key.
func (i *Issuer) Key() *Key {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.current
}

// Rotate publishes a new key of alg and signs with it from now on; the old
// keys stay published unless dropOld.
func (i *Issuer) Rotate(kid, alg string, dropOld bool) *Key {
	k := NewKey(i.tb, kid, alg)
	i.mu.Lock()
	defer i.mu.Unlock()
	if dropOld {
		i.published = nil
	}
	i.published = append(i.published, k)
	i.current = k
	return k
}

// SetCacheControl sets the Cache-Control header of JWKS responses.
func (i *Issuer) SetCacheControl(v string) {
	i.mu.Lock()
	i.cacheControl = v
	i.mu.Unlock()
}

// SetDown makes every endpoint answer 503 (or serve again).
func (i *Issuer) SetDown(down bool) { i.down.Store(down) }

// SetHang makes the issuer hold every request without answering, as a
// provider that is down behind a load balancer does.
func (i *Issuer) SetHang(hang bool) { i.hang.Store(hang) }

// JWKSRequests counts requests for the key set so far.
func (i *Issuer) JWKSRequests() int64 { return i.requests.Load() }

// Claims returns a valid claim set of this issuer: iss, sub, aud, iat, nbf
// and exp an hour from now.
func (i *Issuer) Claims(now time.Time, aud string) map[string]any {
	return map[string]any{
		"iss": i.URL,
		"sub": "user-1",
		"aud": aud,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
		"jti": fmt.Sprintf("jti-%d", now.UnixNano()),
	}
}

// Token signs claims with the current key, header {alg, kid, typ: JWT}.
func (i *Issuer) Token(claims any) string {
	k := i.Key()
	return Sign(i.tb, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "JWT"}, claims)
}

// Clock is a clock tests move by hand.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock standing at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// JSON returns the JSON encoding of v as a string.
func JSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}
