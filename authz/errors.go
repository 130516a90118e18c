package authz

import "errors"

// Rejections of a token. Each kind of rejection has one sentinel, so adapters
// map them to gRPC codes, HTTP statuses and OAuth error codes in one place.
// Errors returned by the engine wrap one of these with %w; the wrapped message
// adds detail for people ("token is malformed: header is not a JSON object").
var (
	ErrMalformed           = errors.New("token is malformed")
	ErrTooLarge            = errors.New("token is too large")
	ErrUnsupported         = errors.New("token format is not supported")
	ErrAlgorithmNotAllowed = errors.New("token algorithm is not allowed")
	ErrHeaderNotAllowed    = errors.New("token header is not allowed")
	ErrSignatureInvalid    = errors.New("token signature is invalid")
	ErrKeyNotFound         = errors.New("signing key not found")
	ErrKeysUnavailable     = errors.New("signing keys are not available")
	ErrIssuerNotTrusted    = errors.New("token issuer is not trusted")
	ErrAudienceInvalid     = errors.New("token audience is invalid")
	ErrExpired             = errors.New("token is expired")
	ErrNotYetValid         = errors.New("token is not valid yet")
	ErrClaimInvalid        = errors.New("token claim is invalid")
	ErrUnknownProvider     = errors.New("identity provider is not configured")
)
