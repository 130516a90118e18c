package server

import (
	"net/http"
	"strconv"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vakt-dev/vakt/authz"
)

// AuthzPathPrefix is where the HTTP authorization face answers:
// /authz/<application id>[/<the original path>], or /authz alone, the
// application then found by host.
const AuthzPathPrefix = "/authz"

// The headers proxies send the original request in: nginx's auth_request
// convention, and Traefik's and Caddy's forward_auth. When present they win
// over the request line.
const (
	headerOriginalMethod  = "X-Original-Method"
	headerOriginalURI     = "X-Original-Uri"
	headerForwardedMethod = "X-Forwarded-Method"
	headerForwardedURI    = "X-Forwarded-Uri"
	headerForwardedHost   = "X-Forwarded-Host"
	// headerStatus carries the status vakt would have answered when it
	// answers nginx 403 instead (see ServeHTTP).
	headerStatus = "X-Vakt-Status"
)

// httpAuthz is the HTTP authorization face: Envoy's ext_authz http_service
// and Istio's envoyExtAuthzHttp, nginx's auth_request, Caddy's and
// Traefik's forward_auth. Each request becomes the CheckRequest Envoy would
// have sent over gRPC, and is decided, counted, logged and traced by Check
// itself: one engine, one decision, whichever face asked.
//
// It trusts X-Original-* and X-Forwarded-* headers, which say what the
// request was: it must be reachable by the proxies only (listen.authz).
type httpAuthz struct{ check *authorizationService }

func (h *httpAuthz) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, ok := checkRequestFromHTTP(r)
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found", "error_description": "the authorization endpoint is " + AuthzPathPrefix + "/<application id>[/<path>], or " + AuthzPathPrefix + " with the original request in X-Original-* or X-Forwarded-* headers"})
		return
	}
	res, err := h.check.checkWire(r.Context(), req)
	if err != nil {
		// An outage, never a refusal: 503, which every proxy turns into
		// an error of its own rather than letting the request through.
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": codeTemporarilyUnavailable, "error_description": authz.ReasonOf(err).Description()})
		return
	}
	var cr *authv3.CheckResponse
	switch v := res.(type) {
	case *preMarshalled:
		cr = v.message()
	case *authv3.CheckResponse:
		cr = v
	}
	if ok := cr.GetOkResponse(); ok != nil {
		// The identity headers, for the proxy to copy upstream. Removals
		// are the proxy's to make: its example configurations set every
		// identity header from this answer, which also drops a client's.
		for _, hv := range ok.GetHeaders() {
			w.Header().Set(hv.GetHeader().GetKey(), hv.GetHeader().GetValue())
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	d := cr.GetDeniedResponse()
	for _, hv := range d.GetHeaders() {
		w.Header().Set(hv.GetHeader().GetKey(), hv.GetHeader().GetValue())
	}
	w.Header().Set("Cache-Control", "no-store")
	status := int(d.GetStatus().GetCode())
	if status != http.StatusUnauthorized && status != http.StatusForbidden && r.Header.Get(headerOriginalURI) != "" {
		// nginx's auth_request takes any status but 2xx, 401 and 403 for
		// its own error (500): a request vakt refuses as malformed (400)
		// is answered 403, with the status it would have had.
		w.Header().Set(headerStatus, strconv.Itoa(status))
		status = http.StatusForbidden
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(d.GetBody()))
}

// checkRequestFromHTTP is the CheckRequest a proxy's HTTP question stands
// for. The application is the path's first segment after /authz, which
// the proxy's configuration sets; a path of /authz alone finds it by host.
// Anything else after /authz is refused, not guessed at: were a segment
// that is no application id read as the original path, a client could
// choose the application whose policy applies (/authz + /team:x:app/...).
// The original method, path and host come from X-Original-* (nginx), else
// X-Forwarded-* (Traefik, Caddy), else the request itself (Envoy appends
// the original path to its path_prefix). The path is taken as sent,
// undecoded, so that Check's path rules see what the upstream will. It
// reports false for a path it does not serve.
func checkRequestFromHTTP(r *http.Request) (*authv3.CheckRequest, bool) {
	rest, ok := strings.CutPrefix(r.RequestURI, AuthzPathPrefix)
	if !ok || (rest != "" && rest[0] != '/' && rest[0] != '?') {
		return nil, false
	}
	var app string
	if strings.HasPrefix(rest, "/") {
		seg := rest[1:]
		if i := strings.IndexAny(seg, "/?"); i >= 0 {
			seg = seg[:i]
		}
		if _, err := authz.ParseAppID(seg); err != nil {
			return nil, false
		}
		app, rest = seg, rest[1+len(seg):]
	}
	if rest == "" || rest[0] == '?' {
		rest = "/" + rest
	}
	method, ok1 := originalHeader(r, headerOriginalMethod, headerForwardedMethod)
	path, ok2 := originalHeader(r, headerOriginalURI, headerForwardedURI)
	host, ok3 := originalHeader(r, headerForwardedHost)
	if !ok1 || !ok2 || !ok3 {
		// Two accounts of the request: a client's own header beside the
		// proxy's. Which one the proxy wrote cannot be told, so neither is
		// believed: a CheckRequest without a request is refused as
		// request_invalid.
		return &authv3.CheckRequest{}, true
	}
	if method == "" {
		method = r.Method
	}
	if path == "" {
		path = rest
	}
	if host == "" {
		host = r.Host
	}
	headers := make(map[string]string, len(r.Header))
	for name, values := range r.Header {
		headers[strings.ToLower(name)] = strings.Join(values, ",")
	}
	attrs := &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: host, Headers: headers,
		}},
	}
	if app != "" {
		attrs.ContextExtensions = map[string]string{ContextExtensionApp: app}
	}
	return &authv3.CheckRequest{Attributes: attrs}, true
}

// originalHeader is the value the proxy gave of the original request under
// one of the names (nginx's, or Traefik's and Caddy's), "" when none is
// sent. It reports false when they say different things, or one is sent
// twice: a client's header passed on beside the proxy's, which a proxy
// that forwards client headers unchanged would let choose the request vakt
// decides on.
func originalHeader(r *http.Request, names ...string) (string, bool) {
	var v string
	for _, n := range names {
		values := r.Header.Values(n)
		switch {
		case len(values) == 0:
			continue
		case len(values) > 1, v != "" && values[0] != v:
			return "", false
		}
		v = values[0]
	}
	return v, true
}
