package exchange

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/vakt-dev/vakt/authz"
)

// The RFC 8693 and RFC 7523 values vakt accepts.
const (
	GrantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	ClientAssertionTypeJWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	TokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
	TokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	DefaultTokenLifetime   = 15 * time.Minute
	MaxAssertionLifetime   = 120 * time.Second
	assertionLeeway        = 10 * time.Second
	// IssuedTokenType is the typ of the tokens vakt issues (RFC 9068).
	IssuedTokenType      = "at+jwt"
	maxAudienceInMessage = 200
)

// AssertionAlgorithms are the algorithms a client assertion may use.
var AssertionAlgorithms = []string{"RS256", "PS256", "ES256", "EdDSA"}

// Request is a token exchange request (RFC 8693 §2.1, RFC 7523 §2.2,
// RFC 8707). Every parameter is honoured or refused, never ignored.
type Request struct {
	GrantType           string
	ClientAssertionType string
	ClientAssertion     string
	// ClientID, when sent, must be the client the assertion names (RFC
	// 7521 §4.2). ClientSecret is client_secret_post, which vakt refuses.
	ClientID         string
	ClientSecret     string
	SubjectTokenType string
	SubjectToken     string
	// Audience and Resource (absolute URIs, RFC 8707) may each be given
	// more than once; together they must name one target application.
	Audience []string
	Resource []string
	// Scope asks for a subset of the subject token's scopes
	// (space-separated); empty for all of them.
	Scope string
	// RequestedTokenType is empty, or TokenTypeAccessToken or TokenTypeJWT
	// (the same token).
	RequestedTokenType string
	// ActorToken and ActorTokenType are refused: vakt records delegation
	// itself, from the subject token (act).
	ActorToken, ActorTokenType string
}

// Response is an issued token (RFC 8693 §2.2.1).
type Response struct {
	AccessToken     string
	IssuedTokenType string
	TokenType       string
	ExpiresIn       int64
	// Scope is the issued token's scopes, when they differ from the scopes
	// asked for; "" otherwise.
	Scope string
}

// AuthorityConfig configures an Authority.
type AuthorityConfig struct {
	// Issuer is vakt's issuer; the token endpoint is Issuer + "/token".
	Issuer string
	// TokenEndpointAliases are other URLs clients reach the token endpoint
	// at (a cluster's Service URL): a client assertion's aud may name one
	// (RFC 7523 §3: the token endpoint's URL identifies the server).
	TokenEndpointAliases []string
	// Subjects validates subject tokens: the configured identity providers
	// and vakt's own tokens.
	Subjects *authz.Validator
	// OwnProvider is the name under which Subjects knows vakt's own tokens.
	OwnProvider string
	// Clients maps each registered application id that has keys to them.
	Clients map[string]authz.KeySource
	Policy  *authz.Policy
	Signer  *Signer
	Replay  ReplayStore
	// TokenLifetime of issued tokens; DefaultTokenLifetime when zero.
	TokenLifetime time.Duration
	Now           func() time.Time
	Logger        *slog.Logger
}

// Authority is vakt's token exchange: it authenticates the client by its
// assertion, validates the subject token, checks the target's access policy
// and mints a token for the target. It is immutable.
type Authority struct {
	cfg           AuthorityConfig
	tokenEndpoint string
	assertions    *authz.Validator
	decoys        *authz.Decoys
	log           *slog.Logger
}

// NewAuthority builds an Authority.
func NewAuthority(cfg AuthorityConfig) (*Authority, error) {
	if cfg.Issuer == "" || cfg.Subjects == nil || cfg.Policy == nil || cfg.Signer == nil || cfg.Replay == nil {
		return nil, errors.New("authority needs an issuer, a subject validator, a policy, a signer and a replay store")
	}
	if cfg.TokenLifetime <= 0 {
		cfg.TokenLifetime = DefaultTokenLifetime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Authority{cfg: cfg, tokenEndpoint: TokenEndpoint(cfg.Issuer), log: cfg.Logger}
	if a.log == nil {
		a.log = slog.Default()
	}
	// Each client is an "identity provider" whose issuer is its own id and
	// whose keys are its own: an assertion is verified against the keys of
	// the client it names, and no other's.
	providers := make([]*authz.Provider, 0, len(cfg.Clients))
	for _, id := range slices.Sorted(maps.Keys(cfg.Clients)) {
		p, err := authz.NewProvider(authz.ProviderConfig{
			Name:       id,
			Issuer:     id,
			Audiences:  append([]string{a.tokenEndpoint, cfg.Issuer}, cfg.TokenEndpointAliases...),
			Algorithms: AssertionAlgorithms,
			Leeway:     assertionLeeway,
			Keys:       cfg.Clients[id],
			// RFC 8725 §3.11: a token vakt issued is never a client assertion.
			RejectType:     IssuedTokenType,
			SignatureFirst: true,
		})
		if err != nil {
			return nil, err
		}
		providers = append(providers, p)
	}
	v, err := authz.NewValidator(authz.ValidatorConfig{Providers: providers, CacheSize: -1, Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	a.assertions = v
	a.decoys = authz.NewDecoys()
	return a, nil
}

// TokenEndpoint is the token endpoint of an issuer.
func TokenEndpoint(issuer string) string {
	for len(issuer) > 0 && issuer[len(issuer)-1] == '/' {
		issuer = issuer[:len(issuer)-1]
	}
	return issuer + "/token"
}

// TokenEndpoint returns this authority's token endpoint.
func (a *Authority) TokenEndpoint() string { return a.tokenEndpoint }

// Exchange performs a token exchange. Every refusal is an *Error.
func (a *Authority) Exchange(ctx context.Context, req Request) (*Response, error) {
	o := a.Decide(ctx, req)
	if o.Err != nil {
		return nil, o.Err
	}
	return o.Response, nil
}

// Outcome is an exchange decided: its response or its refusal, and what
// the decision log and the trace say of it. The facts are filled in as the
// exchange gets to them: a refusal of the assertion names no client, one of
// the subject token no provider.
type Outcome struct {
	Response *Response // nil when refused
	Err      *Error    // nil when granted
	// Client is the client the assertion authenticated.
	Client string
	// Target is the target application once named; before, the audience
	// as asked (cut to 200 bytes).
	Target string
	// Subject is the verified subject token, issued by Provider.
	Subject  *authz.Claims
	Provider string
	// Rule is what in the target's access policy decided, once the
	// exchange got to it: "accessPolicy.inbound.rules: <client>" or
	// "accessPolicy.inbound.rules: no rule names <client>".
	Rule string
}

// Decide performs a token exchange, as Exchange does, and returns it with
// what decided it. It logs nothing of the decision: the caller does.
func (a *Authority) Decide(ctx context.Context, req Request) Outcome {
	o := Outcome{Target: truncate(strings.Join(req.Audience, " "))}
	res, err := a.exchange(ctx, req, &o)
	if err != nil {
		o.Err = AsError(err)
		return o
	}
	o.Response = res
	return o
}

func badRequest(detail string) *Error { return Refuse(authz.ReasonRequestInvalid, detail, nil) }

func (a *Authority) exchange(ctx context.Context, req Request, o *Outcome) (*Response, error) {
	if err := checkRequest(&req); err != nil {
		return nil, err
	}
	now := a.cfg.Now()

	as, err := a.authenticate(ctx, req.ClientAssertion, now)
	client := as.client
	o.Client = client
	if err != nil {
		return nil, err
	}
	if req.ClientID != "" && req.ClientID != client {
		return nil, Refuse(authz.ReasonClientMismatch, "", nil)
	}
	// The jti is recorded as soon as the assertion is known to be the
	// client's, so that a used assertion is refused before it can tell
	// anything more (which targets its client may call, whether a subject
	// token is valid); a refusal after this point releases it again, as the
	// assertion was not used, and a client may retry with it after an
	// outage.
	if err := a.record(ctx, as); err != nil {
		return nil, err
	}
	res, err := a.mint(ctx, req, as, now, o)
	if err != nil {
		if rerr := a.cfg.Replay.Release(context.WithoutCancel(ctx), as.client, as.jti); rerr != nil {
			a.log.Warn("a refused exchange's assertion could not be released; its client must make a new one", "client_id", client, "error", rerr)
		}
		return nil, err
	}
	return res, nil
}

// mint is the exchange after the client's assertion: the subject token, the
// target's access policy, and the token.
func (a *Authority) mint(ctx context.Context, req Request, as clientAssertion, now time.Time, o *Outcome) (*Response, error) {
	client := as.client

	// Every claim too: parsed by the verification of a new subject token,
	// from the cached claims' payload otherwise.
	subject, raw, provider, err := a.cfg.Subjects.ValidateByIssuerRaw(ctx, req.SubjectToken)
	if err != nil {
		return nil, tokenRefusal(authz.ReasonSubjectTokenInvalid, "subject_token", err)
	}
	o.Subject, o.Provider = subject, provider.Name()
	// A token vakt issued may be exchanged only by the application it was
	// issued to.
	own := provider.Own()
	if own && !subject.HasAudience(client) {
		return nil, tokenRefusal(authz.ReasonSubjectTokenInvalid, "subject_token", authz.ErrAudienceInvalid)
	}
	if subject.Subject() == "" {
		return nil, Refuse(authz.ReasonSubjectTokenInvalid, "invalid subject_token: sub is required", nil)
	}

	// Unknown and forbidden targets get one answer, so that clients cannot
	// probe which applications exist; the reason, in the log and metrics,
	// tells them apart.
	target, err := a.target(req, client)
	if err != nil {
		return nil, err
	}
	o.Target = truncate(target)
	if err := a.cfg.Policy.MayCall(client, target); err != nil {
		reason := authz.ReasonTargetDenied
		if errors.Is(err, authz.ErrApplicationUnknown) {
			reason = authz.ReasonTargetUnknown
			o.Rule = "applications: " + truncate(target) + " is not registered"
		} else {
			o.Rule = "accessPolicy.inbound.rules: no rule names " + client
		}
		return nil, Refuse(reason, "", err)
	}
	scopes, err := grantedScopes(req.Scope, subject)
	if err != nil {
		return nil, err
	}

	// The token never outlives the one it was exchanged for: a chain of
	// exchanges, or a cycle of applications, cannot keep a session alive.
	exp := min(now.Add(a.cfg.TokenLifetime).Unix(), subject.ExpiresAt().Unix())
	if exp <= now.Unix() {
		return nil, tokenRefusal(authz.ReasonSubjectTokenInvalid, "subject_token", authz.ErrExpired)
	}
	claims := make(map[string]any, len(raw)+4)
	for name, v := range raw {
		if !protocolClaims[name] {
			claims[name] = v // the user's identity: sub, pid, acr, amr, ...
		}
	}
	claims["iss"] = a.cfg.Issuer
	claims["aud"] = target
	claims["client_id"] = client
	claims["idp"] = provider.IdentityProvider(subject) // a chain keeps the original identity provider
	claims["iat"] = now.Unix()
	claims["nbf"] = now.Unix()
	claims["exp"] = exp
	claims["jti"] = uuid.NewString()
	if len(scopes) > 0 {
		claims["scope"] = strings.Join(scopes, " ")
	}
	if own {
		// RFC 8693 §4.1: the token was issued to another client, which now
		// acts for the user through this one; its own act, if any, nests.
		act := map[string]any{"sub": subject.Caller()}
		if prev, ok := raw["act"].(map[string]any); ok {
			act["act"] = prev
		}
		claims["act"] = act
	}
	tok, err := a.cfg.Signer.Sign(IssuedTokenType, claims)
	if err != nil {
		return nil, Refuse(authz.ReasonInternal, "", err)
	}
	res := &Response{
		AccessToken:     tok,
		IssuedTokenType: TokenTypeAccessToken,
		TokenType:       "Bearer",
		ExpiresIn:       exp - now.Unix(),
	}
	if granted := strings.Join(scopes, " "); granted != normalScope(req.Scope) {
		res.Scope = granted
	}
	// The rule is named on a grant only: a later refusal (a scope, an
	// expired subject token) was not the access policy's.
	o.Rule = "accessPolicy.inbound.rules: " + client
	return res, nil
}

// protocolClaims are the claims with a meaning to the protocol, which vakt
// sets itself or drops, never copies from the subject token: who issued the
// token, for whom and to whom, when, its id, what it is bound to (cnf: a
// Bearer token has no proof-of-possession key), who acts (act, may_act),
// its scopes (scope, scp, permissions: one scope claim, vakt's) and type,
// and the identity provider. What an ID token carries for its client
// (nonce and the hashes) is dropped too.
var protocolClaims = map[string]bool{
	"iss": true, "aud": true, "exp": true, "nbf": true, "iat": true, "jti": true,
	"client_id": true, "azp": true, "cnf": true, "act": true, "may_act": true,
	"scope": true, "scp": true, "permissions": true, "typ": true, "idp": true,
	"nonce": true, "at_hash": true, "c_hash": true, "s_hash": true,
}

// checkRequest refuses what is wrong with a request before anything is
// verified: the grant type, the client's way of authenticating, actor
// tokens, the token types and a missing target.
func checkRequest(req *Request) error {
	switch {
	case req.GrantType == "":
		return badRequest("grant_type is required")
	case req.GrantType != GrantTypeTokenExchange:
		return Refuse(authz.ReasonGrantTypeUnsupported, "", nil)
	case req.ClientSecret != "":
		return Refuse(authz.ReasonClientAuthentication, "", nil)
	case req.ClientAssertionType == "" && req.ClientAssertion == "":
		return Refuse(authz.ReasonClientAuthentication, "client authentication is required: private_key_jwt (RFC 7523)", nil)
	case req.ClientAssertionType != ClientAssertionTypeJWT:
		return Refuse(authz.ReasonClientAuthentication, "client_assertion_type must be "+ClientAssertionTypeJWT, nil)
	case req.ClientAssertion == "":
		return Refuse(authz.ReasonClientAuthentication, "client_assertion is required", nil)
	case req.ActorToken != "" || req.ActorTokenType != "":
		return badRequest("actor tokens are not supported")
	case req.RequestedTokenType != "" && req.RequestedTokenType != TokenTypeAccessToken && req.RequestedTokenType != TokenTypeJWT:
		return badRequest("requested_token_type must be " + TokenTypeAccessToken + " or " + TokenTypeJWT)
	case req.SubjectTokenType != TokenTypeJWT && req.SubjectTokenType != TokenTypeAccessToken:
		return badRequest("subject_token_type must be " + TokenTypeJWT + " or " + TokenTypeAccessToken)
	case req.SubjectToken == "":
		return badRequest("subject_token is required")
	case len(req.Audience) == 0 && len(req.Resource) == 0:
		return badRequest("audience is required")
	}
	for _, aud := range req.Audience {
		if aud == "" {
			return badRequest("audience is empty")
		}
	}
	return nil
}

// target is the one application the request's audience and resource
// values name (RFC 8693 §2.1, RFC 8707 §2): a resource naming none is an
// unknown target; values naming more than one are refused as ambiguous
// only when the client may call each of them, else as the first it may not
// call is: telling ambiguous from unknown would tell a client which
// resource URIs exist.
func (a *Authority) target(req Request, client string) (string, error) {
	var names []string
	name := func(id string) {
		if !slices.Contains(names, id) {
			names = append(names, id)
		}
	}
	for _, aud := range req.Audience {
		name(aud)
	}
	for _, r := range req.Resource {
		u, err := url.Parse(r)
		if err != nil || !u.IsAbs() || u.Fragment != "" {
			return "", Refuse(authz.ReasonTargetUnknown, "resource must be an absolute URI without a fragment", nil)
		}
		app, ok := a.cfg.Policy.ApplicationByResource(u)
		if !ok {
			return "", Refuse(authz.ReasonTargetUnknown, "", fmt.Errorf("no application has resource %s", truncate(r)))
		}
		name(app.ID)
	}
	if len(names) > 1 {
		for _, id := range names {
			if a.cfg.Policy.MayCall(client, id) != nil {
				return id, nil // refused as that target is, by the caller
			}
		}
		return "", Refuse(authz.ReasonTargetAmbiguous, "", nil)
	}
	target := ""
	if len(names) == 1 {
		target = names[0]
	}
	return target, nil
}

// grantedScopes are the scopes the issued token carries: the requested
// ones, each held by the subject token, or else all of the subject's.
func grantedScopes(requested string, subject *authz.Claims) ([]string, error) {
	if !subject.ScopesValid() {
		// A scope with a space or a control character inside would become
		// other scopes once written as one string: "read admin" is not
		// "read" and "admin".
		return nil, Refuse(authz.ReasonSubjectTokenInvalid, "invalid subject_token: a scope is no RFC 6749 scope-token", nil)
	}
	if requested == "" {
		return subject.Scopes(), nil
	}
	var out []string
	for s := range strings.SplitSeq(requested, " ") {
		if s == "" || slices.Contains(out, s) {
			continue
		}
		if !subject.HasScope(s) {
			return nil, Refuse(authz.ReasonScopeInvalid, "", nil)
		}
		out = append(out, s)
	}
	return out, nil
}

// normalScope is a scope parameter as the issued scope would write it:
// each scope once, single spaces.
func normalScope(scope string) string {
	var out []string
	for s := range strings.SplitSeq(scope, " ") {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return strings.Join(out, " ")
}

// clientAssertion is a verified client assertion whose jti is not recorded
// yet: it is recorded once the rest of the exchange has passed, so that a
// request refused for another reason (or during an outage) does not use the
// assertion up.
type clientAssertion struct {
	client  string
	jti     string
	expires time.Time
}

// authenticate verifies a client assertion (RFC 7523 §3), returning the
// client:
//   - signed by a key of the client it names in iss (RS256, PS256, ES256 or
//     EdDSA, matching the key), and sub equal to iss;
//   - aud exactly the token endpoint or the issuer: one value, or an array
//     holding only that;
//   - exp present, at most 120 s after iat and after now; iat not in the
//     future; nbf respected; typ not at+jwt (an access token is not an
//     assertion);
//   - jti present.
//
// An unknown client, a client without keys, an unknown kid and a bad
// signature get one answer, in about the same time (a decoy signature check
// stands in for the one that could not be made), so that a prober learns
// nothing of which clients exist. What the assertion claims is checked only
// once its signature has verified (SignatureFirst), so its more specific
// answers reach only the client itself.
func (a *Authority) authenticate(ctx context.Context, assertion string, now time.Time) (clientAssertion, error) {
	c, p, err := a.assertions.ValidateByIssuer(ctx, assertion)
	if err != nil {
		switch {
		case errors.Is(err, authz.ErrIssuerNotTrusted):
			a.decoys.Verify(assertion, 0)
			return clientAssertion{}, Refuse(authz.ReasonClientUnknown, clientAuthFailed, err)
		case errors.Is(err, authz.ErrKeyNotFound), errors.Is(err, authz.ErrAlgorithmNotAllowed):
			// Refused before a signature check (an alg not allowed, or not
			// the key's): the decoy takes the time one would have.
			a.decoys.Verify(assertion, 0)
			return clientAssertion{}, Refuse(authz.ReasonAssertionInvalid, clientAuthFailed, err)
		case errors.Is(err, authz.ErrSignatureInvalid):
			return clientAssertion{}, Refuse(authz.ReasonAssertionInvalid, clientAuthFailed, err)
		}
		return clientAssertion{}, tokenRefusal(authz.ReasonAssertionInvalid, "client assertion", err)
	}
	client := p.Name()
	bad := func(why string) (clientAssertion, error) {
		return clientAssertion{client: client}, Refuse(authz.ReasonAssertionInvalid, authz.ReasonAssertionInvalid.Description()+": "+why, nil)
	}
	if c.Subject() != client {
		return bad("sub must equal iss")
	}
	if len(c.Audience()) != 1 {
		return bad("aud must be the token endpoint alone")
	}
	if c.IssuedAt().IsZero() {
		return bad("iat is required")
	}
	if exp, iat := c.ExpiresAt(), c.IssuedAt(); exp.Sub(iat) > MaxAssertionLifetime || exp.Sub(now) > MaxAssertionLifetime+assertionLeeway {
		return bad("exp must be at most 120 seconds after iat and now")
	}
	jti := c.ID()
	if jti == "" {
		return bad("jti is required")
	}
	return clientAssertion{client: client, jti: jti, expires: c.ExpiresAt().Add(assertionLeeway)}, nil
}

// clientAuthFailed is the one answer to an assertion whose client, key or
// signature does not check out.
const clientAuthFailed = "client authentication failed"

// record remembers the assertion's jti, refusing one seen before from the
// same client while it could still be replayed.
func (a *Authority) record(ctx context.Context, as clientAssertion) error {
	fresh, err := a.cfg.Replay.Claim(ctx, as.client, as.jti, as.expires)
	if errors.Is(err, ErrReplayQuota) {
		return ErrReplayQuota
	}
	if err != nil {
		return Refuse(authz.ReasonReplayUnavailable, "", err)
	}
	if !fresh {
		return Refuse(authz.ReasonAssertionReplayed, "", nil)
	}
	return nil
}

func truncate(s string) string {
	if len(s) > maxAudienceInMessage {
		return s[:maxAudienceInMessage] + "…"
	}
	return s
}
