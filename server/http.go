package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"net/url"
)

// maxIntrospectBody caps the body of POST /api/v1/introspect.
const maxIntrospectBody = 64 << 10

// NewHTTPHandler returns vakt's HTTP endpoints:
//   - POST /api/v1/introspect: the NAIS introspection contract;
//   - POST /token: RFC 8693 token exchange;
//   - GET /jwks: the public keys of the tokens vakt issues;
//   - GET /.well-known/oauth-authorization-server and
//     /.well-known/openid-configuration: RFC 8414 metadata;
//   - GET /metrics: Prometheus metrics, when m is not nil;
//   - GET /healthz: 200 while the server runs.
func NewHTTPHandler(cur *Current, m *Metrics, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /api/v1/introspect", &introspectHandler{cur: cur, metrics: m, log: log})
	mux.Handle("POST /token", &tokenHandler{cur: cur, metrics: m})
	if m != nil {
		mux.Handle("GET /metrics", m.Handler())
	}
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, _ = w.Write(cur.Load().Signer.JWKS())
	})
	wellKnown := func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, metadata(cur.Load()))
	}
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", wellKnown)
	mux.HandleFunc("GET /.well-known/openid-configuration", wellKnown)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	return mux
}

type introspectHandler struct {
	cur     *Current
	metrics *Metrics
	log     *slog.Logger
}

// requestError is an HTTP request that cannot be answered: the status and an
// OAuth-style error body.
type requestError struct {
	status      int
	code        string
	description string
}

func (e *requestError) Error() string { return e.description }

func (h *introspectHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	provider, token, rerr := readIntrospectRequest(w, r)
	if rerr != nil {
		writeJSON(w, rerr.status, map[string]string{"error": rerr.code, "error_description": rerr.description})
		return
	}
	res, err := h.cur.Load().introspect(r.Context(), provider, token)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": err.Error()})
		return
	}
	h.metrics.introspected(res.Active)
	// "The response is always a HTTP 200 OK response with a JSON body."
	if !res.Active {
		writeJSON(w, http.StatusOK, map[string]any{"active": false, "error": res.Error})
		return
	}
	body := make(map[string]any, len(res.Claims)+1)
	maps.Copy(body, res.Claims) // never write into the cached claims
	body["active"] = true
	writeJSON(w, http.StatusOK, body)
}

// readIntrospectRequest reads identity_provider and token from a JSON or
// form body. Other media types get 415, bodies over 64 KiB 413, and
// malformed bodies 400.
func readIntrospectRequest(w http.ResponseWriter, r *http.Request) (provider, token string, _ *requestError) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mt != "application/json" && mt != "application/x-www-form-urlencoded") {
		return "", "", &requestError{http.StatusUnsupportedMediaType, "invalid_request", "Content-Type must be application/json or application/x-www-form-urlencoded"}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxIntrospectBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return "", "", &requestError{http.StatusRequestEntityTooLarge, "invalid_request", "request body is larger than 64 KiB"}
		}
		return "", "", &requestError{http.StatusBadRequest, "invalid_request", "request body could not be read"}
	}
	if mt == "application/json" {
		var req struct {
			IdentityProvider string `json:"identity_provider"`
			Token            string `json:"token"`
		}
		if err := decodeStrictJSON(body, &req); err != nil {
			return "", "", &requestError{http.StatusBadRequest, "invalid_request", "request body is not a JSON object with string fields identity_provider and token"}
		}
		return req.IdentityProvider, req.Token, nil
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return "", "", &requestError{http.StatusBadRequest, "invalid_request", "request body is not valid form encoding"}
	}
	for _, name := range []string{"identity_provider", "token"} {
		if len(form[name]) > 1 {
			return "", "", &requestError{http.StatusBadRequest, "invalid_request", name + " is given more than once"}
		}
	}
	return form.Get("identity_provider"), form.Get("token"), nil
}

// decodeStrictJSON decodes exactly one JSON object into v. Unknown members
// are ignored, as clients may send more than vakt reads.
func decodeStrictJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
