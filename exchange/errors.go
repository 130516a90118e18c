package exchange

import (
	"errors"

	"github.com/vakt-dev/vakt/authz"
)

// Error is a refused exchange: a reason from the one table of public reasons
// (authz.Reason; server maps it to an OAuth error code, an HTTP status and a
// gRPC code), an optional public detail, and the cause, for the log only.
type Error struct {
	reason authz.Reason
	// Detail, when set, replaces the reason's description with a more
	// specific one ("grant_type is required"). It is always vakt's own
	// text, never a cause's message: a client may see it.
	Detail string
	// Err is the cause. It may name URLs and addresses: log it, never
	// answer with it.
	Err error
	// UpstreamCode is the OAuth error code the token endpoint answered, for
	// ReasonUpstreamRefused: the agent passes it on as it came.
	UpstreamCode string
}

// Refuse returns an Error for reason; detail may be "" for the reason's own
// description.
func Refuse(reason authz.Reason, detail string, cause error) *Error {
	return &Error{reason: reason, Detail: detail, Err: cause}
}

// Reason is why the exchange was refused.
func (e *Error) Reason() authz.Reason { return e.reason }

// Description is the text a client may be shown.
func (e *Error) Description() string {
	if e.Detail != "" {
		return e.Detail
	}
	return e.reason.Description()
}

// Error is for logs: the reason, the description and the cause.
func (e *Error) Error() string {
	s := e.reason.String() + ": " + e.Description()
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// AsError returns err as an *Error; anything else is ReasonInternal.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Refuse(authz.ReasonInternal, "", err)
}

// tokenRefusal turns a token's rejection into the exchange's: what (the
// subject token or the client assertion) was rejected, and why, in public
// words. An outage stays an outage, with what was unavailable.
func tokenRefusal(as authz.Reason, what string, err error) *Error {
	r := authz.ReasonOf(err)
	if r.Outage() {
		detail := ""
		if r == authz.ReasonKeysUnavailable {
			detail = "the keys to verify the " + what + " are unavailable; try again later"
		}
		return Refuse(r, detail, err)
	}
	return Refuse(as, as.Description()+": "+r.Description(), err)
}
