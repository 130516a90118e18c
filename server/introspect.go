package server

import (
	"context"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/authz"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// introspector answers "is this token valid, and what does it say?" for
// both faces: gRPC IntrospectionService and POST /api/v1/introspect.
type introspector struct {
	// validator returns the validator in force: the runtime's (it changes on
	// reload) or the agent's.
	validator func() *authz.Validator
	metrics   *Metrics
	log       *slog.Logger
}

// introspection is the answer about one token.
type introspection struct {
	Active bool
	Reason authz.Reason   // why not active
	Error  string         // the human-readable reason, when not active
	Claims map[string]any // when active
}

// introspect validates token for provider. It returns a description of
// what is missing for an unusable request; every verdict on the token itself
// is an introspection.
func (in *introspector) introspect(ctx context.Context, provider, token string) (introspection, string) {
	start := time.Now()
	switch {
	case provider == "":
		return introspection{}, "identity_provider is required"
	case token == "":
		return introspection{}, "token is required"
	}
	c, err := in.validator().Validate(ctx, provider, token)
	if err != nil {
		r := authz.ReasonOf(err)
		if r.Outage() {
			in.log.Debug("introspection could not be decided", "identity_provider", provider, "reason", r.String(), "cause", err)
		}
		res := introspection{Reason: r, Error: introspectionError(err, r, provider)}
		in.metrics.observeIntrospection(start, res)
		return res, ""
	}
	res := introspection{Active: true, Claims: c.Raw()}
	in.metrics.observeIntrospection(start, res)
	return res, ""
}

// introspectionError is the human-readable reason a token was rejected.
// The NAIS contract asks for a specific reason, and the engine's messages
// are vakt's own words ("token is malformed: header is not a JSON object"),
// so they are shown as they are; an outage gets its fixed description only,
// as its cause names URLs and addresses. An unknown provider is named so the
// caller sees their typo.
func introspectionError(err error, r authz.Reason, provider string) string {
	switch {
	case r.Outage():
		return r.Description()
	case r == authz.ReasonProviderUnknown:
		if len(provider) > 64 {
			provider = provider[:64] + "…"
		}
		return "identity provider " + strconv.Quote(provider) + " is not configured"
	}
	return err.Error()
}

// introspectionService is vakt.v1.IntrospectionService.
type introspectionService struct {
	vaktv1.UnimplementedIntrospectionServiceServer
	in *introspector
}

var _ vaktv1.IntrospectionServiceServer = (*introspectionService)(nil)

func (s *introspectionService) Introspect(ctx context.Context, req *vaktv1.IntrospectRequest) (*vaktv1.IntrospectResponse, error) {
	res, bad := s.in.introspect(ctx, req.GetIdentityProvider(), req.GetToken())
	if bad != "" {
		return nil, grpcRequestError(bad)
	}
	out := &vaktv1.IntrospectResponse{Active: res.Active, Error: res.Error}
	if res.Active {
		claims, err := claimsStruct(res.Claims)
		if err != nil {
			// The claims came out of a JSON decoder, so this cannot happen;
			// if it does, fail closed rather than answer half.
			return nil, status.Error(codes.Internal, authz.ReasonInternal.Description())
		}
		out.Claims = claims
	}
	return out, nil
}

// writeIntrospectError answers a request that cannot be introspected as the
// NAIS contract has every answer: with active (false) and the error, and
// nothing else; the status says what was wrong with the request.
func writeIntrospectError(w http.ResponseWriter, e *requestError) {
	writeJSON(w, e.status, map[string]any{"active": false, "error": e.description})
}

// introspectHandler is POST /api/v1/introspect, the NAIS contract.
type introspectHandler struct{ in *introspector }

var _ http.Handler = (*introspectHandler)(nil)

func (h *introspectHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f, rerr := readFields(w, r, "identity_provider", "token")
	if rerr != nil {
		writeIntrospectError(w, rerr)
		return
	}
	res, bad := h.in.introspect(r.Context(), f["identity_provider"], f["token"])
	if bad != "" {
		writeIntrospectError(w, badRequest(bad))
		return
	}
	// "The response is always a HTTP 200 OK response with a JSON body."
	if !res.Active {
		writeJSON(w, http.StatusOK, map[string]any{"active": false, "error": res.Error})
		return
	}
	body := make(map[string]any, len(res.Claims)+1)
	maps.Copy(body, res.Claims) // never write into the cached claims
	body["active"] = true
	writeJSON(w, http.StatusOK, body)
}
