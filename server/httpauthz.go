package server

import (
	"net/http"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/trace"

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
	headerOriginalURL     = "X-Original-Url" // ingress-nginx's auth-url
	headerForwardedMethod = "X-Forwarded-Method"
	headerForwardedURI    = "X-Forwarded-Uri"
	headerForwardedHost   = "X-Forwarded-Host"
	// headerStatus carries the status vakt would have answered when it
	// answers nginx 403 instead (see ServeHTTP).
	headerStatus = "X-Vakt-Status"
)

// httpAuthz is the HTTP authorization face: Envoy's ext_authz http_service
// and Istio's envoyExtAuthzHttp, nginx's auth_request, Caddy's and
// Traefik's forward_auth. Each request is read into the request Check
// decides (checkRequest), and decided, counted, logged and traced as
// Check's are: one engine, one decision, whichever face asked; its answer
// rendered as an HTTP response.
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
	ctx := r.Context()
	var span trace.Span
	if h.check.obs.tracer != nil {
		ctx, span = h.check.startCheck(ctx, &req)
		defer endOnPanic(span)
	}
	o := h.check.check(ctx, &req, span)
	a := &o.answer
	switch {
	case a.outage:
		// An outage, never a refusal: 503, which every proxy turns into
		// an error of its own rather than letting the request through.
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": codeTemporarilyUnavailable, "error_description": o.d.Reason.Description()})
		return
	case a.allow:
		// The identity headers, for the proxy to copy upstream. Removals
		// are the proxy's to make: its example configurations set every
		// identity header from this answer, which also drops a client's.
		if a.id != nil {
			a.id.headers(func(name, value []byte) { w.Header().Set(string(name), string(value)) })
		}
		if len(a.remove) > 0 {
			// Envoy's http_service removes what this lists from the
			// request it forwards: a client's x-vakt-* headers, and
			// Authorization under stripAuthorization. Other proxies ignore
			// it; their examples strip those headers themselves.
			w.Header().Set("X-Envoy-Auth-Headers-To-Remove", strings.Join(a.remove, ","))
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	for _, hv := range a.headers {
		w.Header().Set(hv.name, hv.value)
	}
	w.Header().Set("Cache-Control", "no-store")
	status := a.status
	if status != http.StatusUnauthorized && status != http.StatusForbidden && present(r, headerOriginalMethod, headerOriginalURI, headerOriginalURL) {
		// nginx's auth_request takes any status but 2xx, 401 and 403 for
		// its own error (500): a request vakt refuses as malformed (400)
		// is answered 403, with the status it would have had.
		w.Header().Set(headerStatus, strconv.Itoa(status))
		status = http.StatusForbidden
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(a.body))
}

// checkRequestFromHTTP is the request a proxy's HTTP question stands for. A proxy tells vakt the original request in one of three ways, and
// the request must be one of them exactly:
//
//   - the request line (Envoy's http_service): /authz/<app>/<original path>,
//     the original method; no X-Original-* or X-Forwarded-* account may
//     come with it (a client's would be a second account);
//   - nginx: /authz/<app>, X-Original-Method and X-Original-URI (or
//     ingress-nginx's X-Original-URL, a whole URL); nginx passes a client's
//     headers on, so the application must be in the path;
//   - forwarded (Traefik, Caddy, which overwrite every X-Forwarded-* a
//     client sends): /authz/<app>, or /authz with X-Forwarded-Host naming
//     the application by host; X-Forwarded-Method and X-Forwarded-Uri.
//
// Anything else is refused, never guessed at: no account, half of one,
// two of them, a header given twice, a segment after /authz that is no
// application id (a client would choose the policy), a fragment in the
// path. It reports false for a path it does not serve; a request it
// refuses is an invalid one (request_invalid).
// Paths are taken as sent, undecoded, so that Check's path rules see what
// the upstream will.
func checkRequestFromHTTP(r *http.Request) (checkRequest, bool) {
	rest, ok := strings.CutPrefix(r.RequestURI, AuthzPathPrefix)
	if !ok || (rest != "" && rest[0] != '/' && rest[0] != '?') {
		return checkRequest{}, false
	}
	var app string
	if strings.HasPrefix(rest, "/") {
		seg := rest[1:]
		if i := strings.IndexAny(seg, "/?"); i >= 0 {
			seg = seg[:i]
		}
		if _, err := authz.ParseAppID(seg); err != nil {
			return checkRequest{}, false
		}
		app, rest = seg, rest[1+len(seg):]
	}
	refused := checkRequest{invalid: true}
	nginx := present(r, headerOriginalMethod, headerOriginalURI, headerOriginalURL)
	forwarded := present(r, headerForwardedMethod, headerForwardedURI)
	var method, path, host string
	switch {
	case strings.HasPrefix(rest, "/"):
		if nginx || forwarded {
			return refused, true
		}
		method, path, host = r.Method, rest, r.Host
	case nginx && forwarded:
		return refused, true
	case nginx:
		var uri, full string
		var ok1, ok2, ok3 bool
		method, ok1 = single(r, headerOriginalMethod)
		uri, ok2 = single(r, headerOriginalURI)
		full, ok3 = single(r, headerOriginalURL)
		if !ok1 || !ok2 || !ok3 || app == "" {
			return refused, true
		}
		path = uri
		if full != "" {
			p, ok := requestTarget(full)
			if !ok || (uri != "" && uri != p) {
				return refused, true
			}
			path = p
		}
		host = r.Host
	case forwarded:
		var ok1, ok2, ok3 bool
		method, ok1 = single(r, headerForwardedMethod)
		path, ok2 = single(r, headerForwardedURI)
		host, ok3 = single(r, headerForwardedHost)
		if !ok1 || !ok2 || !ok3 || (app == "" && host == "") {
			return refused, true
		}
	default:
		// No account of the original request at all.
		return refused, true
	}
	if method == "" || path == "" || path[0] != '/' || strings.IndexByte(path, '#') >= 0 {
		// A fragment is no part of a request target: a path that had
		// one would be read by vakt up to it, and by the upstream whole.
		return refused, true
	}
	if len(r.Header) > maxCheckHeaders {
		// As Check refuses a CheckRequest with more (envoyRequest).
		return refused, true
	}
	return checkRequest{appID: app, host: host, method: method, path: path, headers: httpHeaders{r.Header}, face: httpFace}, true
}

// present reports whether any of the headers is sent.
func present(r *http.Request, names ...string) bool {
	for _, n := range names {
		if len(r.Header.Values(n)) > 0 {
			return true
		}
	}
	return false
}

// single is a header's one value ("" when absent); false when it is sent
// more than once.
func single(r *http.Request, name string) (string, bool) {
	v := r.Header.Values(name)
	if len(v) > 1 {
		return "", false
	}
	if len(v) == 0 {
		return "", true
	}
	return v[0], true
}

// requestTarget is the request target (path and query, as sent) of a whole
// URL as ingress-nginx writes X-Original-URL ($scheme://$host$request_uri).
func requestTarget(u string) (string, bool) {
	_, after, ok := strings.Cut(u, "://")
	if !ok {
		return "", false
	}
	// The authority ends at the first '/', '?' or '#'; only a path may
	// follow it. "http://host?/public/x" (a request to "/" whose query nginx
	// copied behind the host) has no path: read from its first '/', it
	// would be the public route it is not.
	i := strings.IndexAny(after, "/?#")
	if i < 0 || after[i] != '/' {
		return "", false
	}
	return after[i:], true
}
