package exchange

import "errors"

// OAuth error codes (RFC 6749 §5.2, RFC 8693 §2.2.2).
const (
	CodeInvalidRequest         = "invalid_request"
	CodeInvalidClient          = "invalid_client"
	CodeUnsupportedGrantType   = "unsupported_grant_type"
	CodeInvalidTarget          = "invalid_target"
	CodeTemporarilyUnavailable = "temporarily_unavailable"
	CodeServerError            = "server_error"
)

// Error is a refused exchange: an OAuth error code, a description safe to
// show the client, a short reason for logs and metrics (it tells apart what
// the client is deliberately told alike, such as an unknown and a forbidden
// target), and the cause.
type Error struct {
	Code        string
	Description string
	Reason      string
	Err         error
}

// Reasons of refusals.
const (
	ReasonBadRequest      = "bad_request"
	ReasonUnknownClient   = "unknown_client"
	ReasonBadAssertion    = "bad_assertion"
	ReasonReplayed        = "replayed_assertion"
	ReasonReplayStore     = "replay_store_unavailable"
	ReasonBadSubjectToken = "bad_subject_token"
	ReasonUnknownTarget   = "unknown_target"
	ReasonAccessDenied    = "access_denied"
	ReasonInternal        = "internal"
)

func (e *Error) Error() string { return e.Code + ": " + e.Description }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func refuse(code, reason, description string, cause error) *Error {
	return &Error{Code: code, Reason: reason, Description: description, Err: cause}
}

// AsError returns err as an *Error; anything else becomes server_error.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: CodeServerError, Reason: ReasonInternal, Description: "internal error", Err: err}
}
