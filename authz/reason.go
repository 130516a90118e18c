package authz

import (
	"errors"
	"strconv"
)

// Reason is why vakt refused a request or could not decide it: a fixed,
// public code. Responses, logs and metrics all name refusals by their
// Reason, and server maps each one to an HTTP status, a gRPC code and an
// OAuth or RFC 6750 error code in one table. A Reason's Description is the
// text a client may see; what caused it (a URL that did not answer, a
// library's error) goes to the log only.
type Reason uint8

// Every reason, in the order of the tables that list them. Adding one means
// adding its row below and in server's transport table; tests fail until
// both exist.
const (
	ReasonNone Reason = iota // allowed, or no refusal

	// The bearer token, in Check and Introspect (and the subject token and
	// client assertion of an exchange, as their causes).
	ReasonTokenMissing
	ReasonTokenTooLarge
	ReasonTokenUnsupported
	ReasonTokenMalformed
	ReasonTokenHeader
	ReasonTokenAlgorithm
	ReasonTokenSignature
	ReasonTokenKeyNotFound
	ReasonTokenIssuer
	ReasonTokenAudience
	ReasonTokenExpired
	ReasonTokenNotYetValid
	ReasonTokenClaim
	ReasonTokenType
	ReasonProviderUnknown
	ReasonKeysUnavailable // an outage: the keys could not be had

	// The request, and the policy of Check.
	ReasonRequestInvalid
	ReasonPathInvalid
	ReasonAuthorizationInvalid
	ReasonApplicationUnknown
	ReasonRouteNotFound
	ReasonCallerMissing
	ReasonCallerDenied
	ReasonScopeInsufficient
	ReasonClaimNotForwardable

	// Token exchange.
	ReasonGrantTypeUnsupported
	ReasonClientAuthentication
	ReasonClientMismatch
	ReasonClientUnknown
	ReasonAssertionInvalid
	ReasonAssertionReplayed
	ReasonAssertionQuota
	ReasonReplayUnavailable // an outage
	ReasonSubjectTokenInvalid
	ReasonTargetUnknown
	ReasonTargetDenied
	ReasonTargetAmbiguous
	ReasonScopeInvalid
	ReasonUpstreamUnavailable // an outage (the agent's token endpoint)
	ReasonUpstreamRefused     // the agent's token endpoint said no
	ReasonUpstreamInvalid     // the agent's token endpoint answered nonsense

	// vakt itself.
	ReasonOverloaded // an outage
	ReasonInternal   // an outage

	reasonCount
)

type reasonInfo struct {
	code        string // stable, for metrics and logs: lowercase_with_underscores
	description string // public: what a client may be told
	outage      bool   // vakt could not decide; never answered as a refusal
}

// reasonTable is indexed by Reason. It is never written.
var reasonTable = [reasonCount]reasonInfo{
	ReasonNone: {"none", "", false},

	ReasonTokenMissing:     {"token_missing", "a bearer token is required", false},
	ReasonTokenTooLarge:    {"token_too_large", "token is too large", false},
	ReasonTokenUnsupported: {"token_unsupported", "token format is not supported", false},
	ReasonTokenMalformed:   {"token_malformed", "token is malformed", false},
	ReasonTokenHeader:      {"token_header_not_allowed", "token header is not allowed", false},
	ReasonTokenAlgorithm:   {"token_algorithm_not_allowed", "token algorithm is not allowed", false},
	ReasonTokenSignature:   {"token_signature_invalid", "token signature is invalid", false},
	ReasonTokenKeyNotFound: {"token_key_not_found", "signing key not found", false},
	ReasonTokenIssuer:      {"token_issuer_untrusted", "token issuer is not trusted", false},
	ReasonTokenAudience:    {"token_audience_invalid", "token audience is invalid", false},
	ReasonTokenExpired:     {"token_expired", "token is expired", false},
	ReasonTokenNotYetValid: {"token_not_yet_valid", "token is not valid yet", false},
	ReasonTokenClaim:       {"token_claim_invalid", "token claim is invalid", false},
	ReasonTokenType:        {"token_type_invalid", "token type is not accepted here", false},
	ReasonProviderUnknown:  {"provider_unknown", "identity provider is not configured", false},
	ReasonKeysUnavailable:  {"keys_unavailable", "identity provider is unavailable", true},

	ReasonRequestInvalid:       {"request_invalid", "request is invalid", false},
	ReasonPathInvalid:          {"path_invalid", "request path is not acceptable", false},
	ReasonAuthorizationInvalid: {"authorization_invalid", "authorization header must be exactly one bearer token", false},
	ReasonApplicationUnknown:   {"application_unknown", "no application is configured for the request", false},
	ReasonRouteNotFound:        {"route_not_found", "no route of the application matches the request", false},
	ReasonCallerMissing:        {"caller_missing", "token names no calling application", false},
	ReasonCallerDenied:         {"caller_denied", "the calling application is not allowed by the access policy", false},
	ReasonScopeInsufficient:    {"scope_insufficient", "token lacks a scope the request needs", false},
	ReasonClaimNotForwardable:  {"claim_not_forwardable", "token has a claim that cannot be forwarded as a header", false},

	ReasonGrantTypeUnsupported: {"grant_type_unsupported", "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange", false},
	ReasonClientAuthentication: {"client_authentication_unsupported", "client authentication must be private_key_jwt (RFC 7523)", false},
	ReasonClientMismatch:       {"client_id_mismatch", "client_id is not the client the assertion names", false},
	ReasonClientUnknown:        {"client_unknown", "client authentication failed", false},
	ReasonAssertionInvalid:     {"assertion_invalid", "client assertion is invalid", false},
	ReasonAssertionReplayed:    {"assertion_replayed", "client assertion is invalid: jti has been used before", false},
	ReasonAssertionQuota:       {"assertion_quota", "too many client assertions in flight; try again later", false},
	ReasonReplayUnavailable:    {"replay_unavailable", "replay protection is unavailable; try again later", true},
	ReasonSubjectTokenInvalid:  {"subject_token_invalid", "invalid subject_token", false},
	ReasonTargetUnknown:        {"target_unknown", "token exchange audience is invalid", false},
	ReasonTargetDenied:         {"target_denied", "token exchange audience is invalid", false},
	ReasonTargetAmbiguous:      {"target_ambiguous", "audience and resource name more than one target", false},
	ReasonScopeInvalid:         {"scope_invalid", "a requested scope is not one the subject token holds", false},
	ReasonUpstreamUnavailable:  {"upstream_unavailable", "the token endpoint cannot be reached; try again later", true},
	ReasonUpstreamRefused:      {"upstream_refused", "the token endpoint refused the exchange", false},
	ReasonUpstreamInvalid:      {"upstream_invalid", "the token endpoint's answer is not usable", true},

	ReasonOverloaded: {"overloaded", "vakt is overloaded; try again later", true},
	ReasonInternal:   {"internal", "internal error", true},
}

// String returns the reason's stable code, e.g. "token_expired".
func (r Reason) String() string {
	if r >= reasonCount {
		return "unknown"
	}
	return reasonTable[r].code
}

// Description returns the fixed text a client may be shown.
func (r Reason) Description() string {
	if r >= reasonCount {
		return reasonTable[ReasonInternal].description
	}
	return reasonTable[r].description
}

// Outage reports whether the reason means vakt could not decide (keys,
// replay store or upstream unavailable, overload, an internal error). An
// outage is never answered as a refusal: a proxy must see it as an error.
func (r Reason) Outage() bool { return r >= reasonCount || reasonTable[r].outage }

// Reasons returns every reason but ReasonNone, in table order.
func Reasons() []Reason {
	out := make([]Reason, 0, reasonCount-1)
	for r := ReasonNone + 1; r < reasonCount; r++ {
		out = append(out, r)
	}
	return out
}

// rejection is a sentinel error that carries its reason; its text is the
// reason's description.
type rejection struct{ reason Reason }

func (e *rejection) Error() string { return e.reason.Description() }

// Reason returns the reason the sentinel stands for.
func (e *rejection) Reason() Reason { return e.reason }

// ReasonOf returns the reason of an engine error: the reason of the first
// error in its chain that carries one (every sentinel of this package and
// exchange's refusals do), ReasonNone for nil, and ReasonInternal for an
// error that carries none.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonNone
	}
	var r interface{ Reason() Reason }
	if errors.As(err, &r) {
		return r.Reason()
	}
	return ReasonInternal
}

// maxQuoted bounds what an error message repeats of a client's input.
const maxQuoted = 64

// quoted quotes a value a client sent (a kid, an alg) for an error message
// that Introspect may return: escaped, and cut at maxQuoted bytes so that an
// answer never repeats kilobytes of a hostile token.
func quoted(s string) string {
	if len(s) > maxQuoted {
		return strconv.Quote(s[:maxQuoted]) + "…"
	}
	return strconv.Quote(s)
}
