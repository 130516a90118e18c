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
// show the client, and the cause, for logs.
type Error struct {
	Code        string
	Description string
	Err         error
}

func (e *Error) Error() string { return e.Code + ": " + e.Description }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func refuse(code, description string, cause error) *Error {
	return &Error{Code: code, Description: description, Err: cause}
}

// AsError returns err as an *Error; anything else becomes server_error.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: CodeServerError, Description: "internal error", Err: err}
}
