package server

import (
	"net/http"
	"net/textproto"
	"strings"

	"github.com/vakt-dev/vakt/authz"
)

// checkRequest is a request to an application as every face puts it:
// Envoy's CheckRequest (envoyRequest), a proxy's HTTP question
// (checkRequestFromHTTP). It is decided once (decide), and the decision
// log and the trace read it; no face's types go past it.
type checkRequest struct {
	// How the application is found, the first that is set
	// (findApplication): the id the route names (Envoy's context
	// extension, the HTTP face's path), the destination's SPIFFE principal,
	// the host.
	appID, principal, host string
	method, path           string
	headers                checkHeaders
	// face is the face that asks, which renders the answer.
	face face
	// invalid is a request the face could not read: refused as
	// request_invalid, nothing of it read.
	invalid bool
}

// checkHeaders are a request's headers as a face has them, one
// implementation per face. Names are asked in lower case.
type checkHeaders interface {
	// get returns a header's value; a repeated header's values joined
	// with ",", as HTTP combines them.
	get(name string) string
	// count is how many headers there are (a bound on the work).
	count() int
	// each calls f with every name, in lower case, once per occurrence.
	each(f func(name string))
	// spoofed appends to dst, in lower case, the names of the headers
	// that would reach the application as one of vakt's identity headers
	// (spoofsIdentity): with no function value, as Check calls it on
	// every allow.
	spoofed(dst []string) []string
}

// httpHeaders are the headers of a proxy's HTTP question (the HTTP face),
// as net/http has them: canonical names, each with its values.
type httpHeaders struct{ h http.Header }

func (h httpHeaders) get(name string) string {
	vs := h.h[canonicalName(name)]
	if len(vs) == 1 {
		return vs[0]
	}
	return strings.Join(vs, ",")
}

// canonicalName is net/http's name for a header asked in lower case: for
// those a Check reads on every request, or logs, without the copy
// textproto.CanonicalMIMEHeaderKey makes.
func canonicalName(name string) string {
	switch name {
	case "authorization":
		return "Authorization"
	case "content-type":
		return "Content-Type"
	case "x-request-id":
		return "X-Request-Id"
	case "traceparent":
		return "Traceparent"
	case "b3":
		return "B3"
	case "x-b3-traceid":
		return "X-B3-Traceid"
	}
	return textproto.CanonicalMIMEHeaderKey(name)
}

func (h httpHeaders) count() int { return len(h.h) }

func (h httpHeaders) each(f func(name string)) {
	for name, vs := range h.h {
		lower := strings.ToLower(name)
		for range vs {
			f(lower)
		}
	}
}

func (h httpHeaders) spoofed(dst []string) []string {
	for name := range h.h {
		if spoofsIdentity(name) {
			dst = append(dst, strings.ToLower(name))
		}
	}
	return dst
}

// spoofsIdentity reports whether a client's header name would reach an
// application as one of vakt's: x-vakt-* in any case, and with '_' or '.'
// for '-', which CGI, WSGI and PHP upstreams read alike (x_vakt_subject and
// x.vakt.subject are HTTP_X_VAKT_SUBJECT, as x-vakt-subject is).
func spoofsIdentity(name string) bool {
	const prefix = authz.IdentityHeaderPrefix
	if len(name) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c == '_' || c == '.' {
			c = '-'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}
