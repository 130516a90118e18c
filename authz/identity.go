package authz

import "strings"

// The identity headers an allowed request carries to the application: vakt's
// word about who is calling. Every adapter that answers a Check (Envoy's gRPC
// Check, the HTTP face) sets exactly these, and removes whatever a client sent
// under the prefix, so that none can be forged.
const (
	HeaderSubject          = "x-vakt-subject"
	HeaderClientID         = "x-vakt-client-id"
	HeaderIdentityProvider = "x-vakt-identity-provider"
	HeaderScope            = "x-vakt-scope"
	// IdentityHeaderPrefix starts every header vakt sets, forwarded claims'
	// included.
	IdentityHeaderPrefix = "x-vakt-"
)

// identityHeaders are the headers vakt sets itself, in the order it sets
// them. It is never written.
var identityHeaders = [...]string{HeaderSubject, HeaderClientID, HeaderIdentityProvider, HeaderScope}

// IsIdentityHeader reports whether name (lower case) is one of the headers
// vakt sets from every token, which forwardClaims may not reuse.
func IsIdentityHeader(name string) bool {
	for _, h := range identityHeaders {
		if h == name {
			return true
		}
	}
	return false
}

// HasIdentityPrefix reports whether a (lower-case) header name is in vakt's
// namespace, and so may only come from vakt.
func HasIdentityPrefix(name string) bool { return strings.HasPrefix(name, IdentityHeaderPrefix) }
