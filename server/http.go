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
	"strconv"
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
	if cur.Load().Agent != nil {
		return newAgentHTTPHandler(cur, m, log)
	}
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

// readIntrospectRequest reads identity_provider and token.
func readIntrospectRequest(w http.ResponseWriter, r *http.Request) (provider, token string, _ *requestError) {
	f, rerr := readFields(w, r, "identity_provider", "token")
	if rerr != nil {
		return "", "", rerr
	}
	return f["identity_provider"], f["token"], nil
}

// readFields reads the named fields from a JSON object (string or boolean
// values) or a form body. Other media types get 415, bodies over 64 KiB 413,
// and malformed bodies, a field of another type or a form field given twice
// 400. Fields not named are ignored.
func readFields(w http.ResponseWriter, r *http.Request, names ...string) (map[string]string, *requestError) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mt != "application/json" && mt != "application/x-www-form-urlencoded") {
		return nil, &requestError{http.StatusUnsupportedMediaType, "invalid_request", "Content-Type must be application/json or application/x-www-form-urlencoded"}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxIntrospectBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, &requestError{http.StatusRequestEntityTooLarge, "invalid_request", "request body is larger than 64 KiB"}
		}
		return nil, &requestError{http.StatusBadRequest, "invalid_request", "request body could not be read"}
	}
	out := make(map[string]string, len(names))
	if mt == "application/json" {
		var obj map[string]json.RawMessage
		if err := decodeStrictJSON(body, &obj); err != nil || obj == nil {
			return nil, &requestError{http.StatusBadRequest, "invalid_request", "request body is not a JSON object"}
		}
		for _, n := range names {
			raw, ok := obj[n]
			if !ok || string(raw) == "null" {
				continue
			}
			var s string
			var b bool
			switch {
			case json.Unmarshal(raw, &s) == nil:
				out[n] = s
			case json.Unmarshal(raw, &b) == nil:
				out[n] = strconv.FormatBool(b)
			default:
				return nil, &requestError{http.StatusBadRequest, "invalid_request", n + " must be a string"}
			}
		}
		return out, nil
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, &requestError{http.StatusBadRequest, "invalid_request", "request body is not valid form encoding"}
	}
	for _, n := range names {
		if len(form[n]) > 1 {
			return nil, &requestError{http.StatusBadRequest, "invalid_request", n + " is given more than once"}
		}
		if v := form.Get(n); v != "" {
			out[n] = v
		}
	}
	return out, nil
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

// newAgentHTTPHandler serves what NAIS applications call on their agent:
// POST /api/v1/introspect, POST /api/v1/token/exchange, GET /healthz and
// GET /metrics.
func newAgentHTTPHandler(cur *Current, m *Metrics, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /api/v1/introspect", &introspectHandler{cur: cur, metrics: m, log: log})
	mux.Handle("POST /api/v1/token/exchange", &agentExchangeHandler{cur: cur, metrics: m})
	if m != nil {
		mux.Handle("GET /metrics", m.Handler())
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	return mux
}
