package server

import (
	"net/http"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/exchange"
)

// errorDomain names vakt in google.rpc.ErrorInfo.
const errorDomain = "vakt.dev"

// The one place that maps OAuth error codes to HTTP statuses and gRPC codes.
var oauthErrors = map[string]struct {
	http int
	grpc codes.Code
}{
	exchange.CodeInvalidRequest:         {http.StatusBadRequest, codes.InvalidArgument},
	exchange.CodeUnsupportedGrantType:   {http.StatusBadRequest, codes.InvalidArgument},
	exchange.CodeInvalidClient:          {http.StatusUnauthorized, codes.Unauthenticated},
	exchange.CodeInvalidTarget:          {http.StatusBadRequest, codes.PermissionDenied},
	exchange.CodeTemporarilyUnavailable: {http.StatusServiceUnavailable, codes.Unavailable},
	exchange.CodeServerError:            {http.StatusInternalServerError, codes.Internal},
}

func oauthHTTPStatus(code string) int {
	if m, ok := oauthErrors[code]; ok {
		return m.http
	}
	return http.StatusInternalServerError
}

// oauthGRPCError is a status with the description as its message and an
// ErrorInfo whose reason is the OAuth error code.
func oauthGRPCError(e *exchange.Error) error {
	c := codes.Internal
	if m, ok := oauthErrors[e.Code]; ok {
		c = m.grpc
	}
	st, err := status.New(c, e.Description).WithDetails(&errdetails.ErrorInfo{Reason: e.Code, Domain: errorDomain})
	if err != nil {
		return status.Error(c, e.Description)
	}
	return st.Err()
}

// writeOAuthError writes an RFC 6749 §5.2 error response.
func writeOAuthError(w http.ResponseWriter, e *exchange.Error) {
	writeJSON(w, oauthHTTPStatus(e.Code), map[string]string{"error": e.Code, "error_description": e.Description})
}
