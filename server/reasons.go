package server

import (
	"net/http"
	"strings"
	"unicode"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/exchange"
)

// errorDomain names vakt in google.rpc.ErrorInfo.
const errorDomain = "vakt.dev"

// OAuth 2.0 (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707) and RFC 6750 §3.1
// error codes, as vakt answers them.
const (
	codeInvalidRequest         = "invalid_request"
	codeInvalidClient          = "invalid_client"
	codeUnsupportedGrantType   = "unsupported_grant_type"
	codeInvalidTarget          = "invalid_target"
	codeTemporarilyUnavailable = "temporarily_unavailable"
	codeServerError            = "server_error"
	codeInvalidToken           = "invalid_token"
	codeInsufficientScope      = "insufficient_scope"
	codeAccessDenied           = "access_denied"
	codeInvalidScope           = "invalid_scope"
)

// answer is how every face says one reason: the HTTP status, the gRPC code,
// and the OAuth or RFC 6750 error code ("" where RFC 6750 §3.1 wants none:
// no credentials, or nothing a token could fix).
type answer struct {
	http int
	grpc codes.Code
	code string
}

// answers is the one table from reasons to answers; every face reads it.
// Outages (Reason.Outage) are never a refusal: Check answers them with a
// gRPC error (Envoy's status_on_error), /token with 503 or 500.
var answers = [...]answer{
	authz.ReasonTokenMissing:     {http.StatusUnauthorized, codes.Unauthenticated, ""},
	authz.ReasonTokenTooLarge:    {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenUnsupported: {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenMalformed:   {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenHeader:      {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenAlgorithm:   {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenSignature:   {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenKeyNotFound: {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenIssuer:      {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenAudience:    {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenExpired:     {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenNotYetValid: {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenClaim:       {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonTokenType:        {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonProviderUnknown:  {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},
	authz.ReasonKeysUnavailable:  {http.StatusServiceUnavailable, codes.Unavailable, codeTemporarilyUnavailable},

	authz.ReasonRequestInvalid:       {http.StatusBadRequest, codes.InvalidArgument, codeInvalidRequest},
	authz.ReasonPathInvalid:          {http.StatusBadRequest, codes.InvalidArgument, codeInvalidRequest},
	authz.ReasonAuthorizationInvalid: {http.StatusBadRequest, codes.InvalidArgument, codeInvalidRequest},
	authz.ReasonApplicationUnknown:   {http.StatusForbidden, codes.PermissionDenied, ""},
	authz.ReasonRouteNotFound:        {http.StatusForbidden, codes.PermissionDenied, ""},
	authz.ReasonCallerMissing:        {http.StatusForbidden, codes.PermissionDenied, codeAccessDenied},
	authz.ReasonCallerDenied:         {http.StatusForbidden, codes.PermissionDenied, codeAccessDenied},
	authz.ReasonScopeInsufficient:    {http.StatusForbidden, codes.PermissionDenied, codeInsufficientScope},
	// The token is signed and valid, but what it says cannot be told to the
	// application truthfully: invalid_token (RFC 6750 §3.1, "invalid for
	// other reasons").
	authz.ReasonClaimNotForwardable: {http.StatusUnauthorized, codes.Unauthenticated, codeInvalidToken},

	authz.ReasonGrantTypeUnsupported: {http.StatusBadRequest, codes.InvalidArgument, codeUnsupportedGrantType},
	// invalid_client is 400: RFC 6749 §5.2 has 401 say which HTTP
	// authentication schemes a token endpoint supports, and vakt's is none
	// (private_key_jwt travels in the body). A client that did use the
	// Authorization header gets 401 and a challenge for its scheme
	// (tokenHandler).
	authz.ReasonClientAuthentication: {http.StatusBadRequest, codes.Unauthenticated, codeInvalidClient},
	authz.ReasonClientMismatch:       {http.StatusBadRequest, codes.Unauthenticated, codeInvalidClient},
	authz.ReasonClientUnknown:        {http.StatusBadRequest, codes.Unauthenticated, codeInvalidClient},
	authz.ReasonAssertionInvalid:     {http.StatusBadRequest, codes.Unauthenticated, codeInvalidClient},
	authz.ReasonAssertionReplayed:    {http.StatusBadRequest, codes.Unauthenticated, codeInvalidClient},
	// One client past its share of the replay store: its own load, not an
	// outage; it retries later, as 429 says.
	authz.ReasonAssertionQuota:      {http.StatusTooManyRequests, codes.ResourceExhausted, codeTemporarilyUnavailable},
	authz.ReasonReplayUnavailable:   {http.StatusServiceUnavailable, codes.Unavailable, codeTemporarilyUnavailable},
	authz.ReasonSubjectTokenInvalid: {http.StatusBadRequest, codes.InvalidArgument, codeInvalidRequest},
	authz.ReasonTargetUnknown:       {http.StatusBadRequest, codes.PermissionDenied, codeInvalidTarget},
	authz.ReasonTargetDenied:        {http.StatusBadRequest, codes.PermissionDenied, codeInvalidTarget},
	authz.ReasonTargetAmbiguous:     {http.StatusBadRequest, codes.InvalidArgument, codeInvalidTarget},
	authz.ReasonScopeInvalid:        {http.StatusBadRequest, codes.PermissionDenied, codeInvalidScope},
	authz.ReasonUpstreamUnavailable: {http.StatusServiceUnavailable, codes.Unavailable, codeTemporarilyUnavailable},
	// The upstream's own code replaces this one (oauthAnswer).
	authz.ReasonUpstreamRefused: {http.StatusBadRequest, codes.InvalidArgument, codeInvalidRequest},
	authz.ReasonUpstreamInvalid: {http.StatusBadGateway, codes.Unavailable, codeServerError},

	authz.ReasonOverloaded: {http.StatusServiceUnavailable, codes.ResourceExhausted, codeTemporarilyUnavailable},
	authz.ReasonInternal:   {http.StatusInternalServerError, codes.Internal, codeServerError},
}

// answerFor returns the answer to a reason; anything outside the table is an
// internal error, so that a reason added without a row fails closed.
func answerFor(r authz.Reason) answer {
	if int(r) < len(answers) && answers[r].http != 0 {
		return answers[r]
	}
	return answers[authz.ReasonInternal]
}

// oauthCodes maps an OAuth error code an upstream token endpoint answered to
// what the agent passes on; other codes become server_error.
var oauthCodes = map[string]answer{
	codeInvalidRequest:         {http.StatusBadRequest, codes.InvalidArgument, codeInvalidRequest},
	codeUnsupportedGrantType:   {http.StatusBadRequest, codes.InvalidArgument, codeUnsupportedGrantType},
	codeInvalidClient:          {http.StatusBadRequest, codes.Unauthenticated, codeInvalidClient},
	codeInvalidTarget:          {http.StatusBadRequest, codes.PermissionDenied, codeInvalidTarget},
	"invalid_grant":            {http.StatusBadRequest, codes.InvalidArgument, "invalid_grant"},
	codeInvalidScope:           {http.StatusBadRequest, codes.PermissionDenied, codeInvalidScope},
	"unauthorized_client":      {http.StatusBadRequest, codes.PermissionDenied, "unauthorized_client"},
	codeTemporarilyUnavailable: {http.StatusServiceUnavailable, codes.Unavailable, codeTemporarilyUnavailable},
	codeServerError:            {http.StatusBadGateway, codes.Unavailable, codeServerError},
}

// oauthAnswer is the answer to a refused exchange: the table's, or for a
// refusal passed on from an upstream token endpoint, the upstream's code.
func oauthAnswer(e *exchange.Error) answer {
	if e.Reason() == authz.ReasonUpstreamRefused {
		if a, ok := oauthCodes[e.UpstreamCode]; ok {
			return a
		}
		return oauthCodes[codeServerError]
	}
	return answerFor(e.Reason())
}

// publicText keeps what RFC 6749 §5.2 allows in error_description (and RFC
// 6750 §3 in a quoted WWW-Authenticate value): %x20-21 / %x23-5B / %x5D-7E.
// A double quote becomes a single one, anything else outside is dropped. vakt's own texts pass
// unchanged; this guards what came from elsewhere (an upstream's answer).
func publicText(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r == '"':
			return '\''
		case r == '\\' || r < 0x20 || r > 0x7e:
			return -1
		}
		return r
	}, s)
}

// oauthGRPCError is a refused exchange as a gRPC status: the table's code,
// the public description as the message, and an ErrorInfo whose reason is
// the OAuth error code and whose metadata names vakt's reason.
func oauthGRPCError(e *exchange.Error) error {
	a := oauthAnswer(e)
	desc := publicText(e.Description())
	st, err := status.New(a.grpc, desc).WithDetails(&errdetails.ErrorInfo{
		Reason: a.code, Domain: errorDomain, Metadata: map[string]string{"vakt_reason": e.Reason().String()},
	})
	if err != nil {
		return status.Error(a.grpc, desc)
	}
	return st.Err()
}

// requestError is a gRPC request vakt cannot use, as InvalidArgument.
func grpcRequestError(description string) error {
	return status.Error(codes.InvalidArgument, description)
}

// grpcName is a code as gRPC's documentation spells it: PERMISSION_DENIED.
func grpcName(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}
