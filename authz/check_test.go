package authz_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/internal/idptest"
)

const (
	ownIssuer    = "http://127.0.0.1:8080"
	ownProvider  = "tokenx"
	app1         = "dev-gcp:team-a:app-1"
	app3         = "dev-gcp:team-c:app-3"
	appB         = "dev-gcp:team-b:app-b"
	appAPI       = "dev-gcp:team-b:api"
	apiAudience  = "https://api.example.com"
	api2Audience = "https://api2.example.com"
)

// countingKeys counts key lookups, to tell a decision verified from scratch
// from one answered by the verified-token cache.
type countingKeys struct {
	authz.KeySource
	n atomic.Int64
}

func (c *countingKeys) Key(ctx context.Context, kid string) (*authz.Key, error) {
	c.n.Add(1)
	return c.KeySource.Key(ctx, kid)
}

// checkEnv is the engine as server.NewRuntime builds it, from authz types
// only: an external provider over a real issuer ("auth0"), one whose JWKS
// has never answered ("azure"), vakt's own tokens ("tokenx", alias "vakt")
// verified with its signing key, and the applications' policy. cached and
// uncached share the providers; only uncached verifies every token anew.
type checkEnv struct {
	clock    *idptest.Clock
	auth0    *idptest.Issuer
	down     *idptest.Issuer
	ownKey   *idptest.Key
	ownKeys  *countingKeys
	ext      *countingKeys
	apps     []authz.ApplicationPolicy
	policy   *authz.Policy
	tokens   *authz.TokenCache // the cached checker's
	cached   *authz.Checker
	uncached *authz.Checker
}

func newCheckEnv(t *testing.T) *checkEnv {
	t.Helper()
	e := &checkEnv{
		clock: idptest.NewClock(time.Now().Truncate(time.Second)),
		auth0: idptest.NewIssuer(t, "RS256"),
		down:  idptest.NewIssuer(t, "RS256"),
	}
	e.down.SetDown(true) // before any key was fetched

	apps := []authz.ApplicationPolicy{
		{ID: app1},
		{ID: app3},
		{ID: appB, Inbound: []string{app1}, Routes: []authz.Route{
			{Methods: []string{"GET"}, Path: "/read", Scopes: []string{"read:users"}},
			{Methods: []string{"POST"}, Path: "/create", Scopes: []string{"create:users"}},
			{Methods: []string{"DELETE"}, PathPrefix: "/delete", Scopes: []string{"delete:users"}},
			{PathPrefix: "/public/", Public: true},
			{Path: "/pkg.Service/Method", Scopes: []string{"svc:call"}},
			{Methods: []string{"PUT"}, Path: "/both", Scopes: []string{"read:users", "write:users"}},
			// First match wins, in both directions.
			{Path: "/reports/summary", Public: true},
			{PathPrefix: "/reports/", Scopes: []string{"reports:read"}},
			{PathPrefix: "/admin/", Scopes: []string{"admin"}},
			{Path: "/admin/health", Public: true},
		}},
		// No routes: any path. Tokens of auth0 (for either audience) and of
		// azure are accepted besides vakt's own.
		{ID: appAPI, Inbound: []string{app1}, Authentication: []authz.Authentication{
			{Provider: "auth0", Audience: apiAudience},
			{Provider: "auth0", Audience: api2Audience},
			{Provider: "azure"},
		}},
	}
	e.apps = apps
	var err error
	if e.policy, err = authz.NewPolicy(apps); err != nil {
		t.Fatal(err)
	}

	remote := func(name string, iss *idptest.Issuer, src func(*authz.RemoteKeys) authz.KeySource) *authz.Provider {
		keys, err := authz.NewRemoteKeys(authz.RemoteKeysConfig{
			Name: name, WellKnownURL: iss.WellKnownURL(), Issuer: iss.URL, Logger: quiet, Now: e.clock.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		p, err := authz.NewProvider(authz.ProviderConfig{Name: name, Issuer: iss.URL, Keys: src(keys)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	auth0 := remote("auth0", e.auth0, func(k *authz.RemoteKeys) authz.KeySource {
		e.ext = &countingKeys{KeySource: k}
		return e.ext
	})
	azure := remote("azure", e.down, func(k *authz.RemoteKeys) authz.KeySource { return k })

	// vakt's signing key, and the provider of the tokens it issues: its
	// issuer, its keys, and an audience that must be a registered
	// application, which the validator asks of the policy.
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e.ownKey = &idptest.Key{ID: "vakt-1", Alg: "ES256", Private: priv}
	vk, err := authz.NewKey(e.ownKey.ID, e.ownKey.Alg, &priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	set, err := authz.NewKeySet(vk)
	if err != nil {
		t.Fatal(err)
	}
	e.ownKeys = &countingKeys{KeySource: authz.StaticKeys{Set: set}}
	own, err := authz.NewProvider(authz.ProviderConfig{
		Name: ownProvider, Issuer: ownIssuer, ApplicationAudience: true, Type: "at+jwt", Own: true,
		Algorithms: []string{"ES256"}, Keys: e.ownKeys,
	})
	if err != nil {
		t.Fatal(err)
	}

	e.tokens = authz.NewTokenCache(0, 0)
	checker := func(cacheSize int) *authz.Checker {
		tokens := e.tokens
		if cacheSize < 0 {
			tokens = nil
		}
		v, err := authz.NewValidator(authz.ValidatorConfig{
			Providers:  []*authz.Provider{auth0, azure, own},
			Aliases:    map[string]string{"vakt": ownProvider},
			Cache:      tokens,
			CacheSize:  cacheSize,
			Registered: e.policy.Registered,
			Now:        e.clock.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		return &authz.Checker{Validator: v, Own: ownProvider}
	}
	e.cached, e.uncached = checker(0), checker(-1)
	return e
}

// lookups counts key lookups of both counted providers so far.
func (e *checkEnv) lookups() int64 { return e.ownKeys.n.Load() + e.ext.n.Load() }

// own is a token vakt issued to client for aud, valid for a minute. A nil
// aud or an empty client or scope leaves the claim out; extra sets claims (nil
// removes one).
func (e *checkEnv) own(t *testing.T, client string, aud any, scope string, extra ...any) string {
	return e.ownSigned(t, e.ownKey, client, aud, scope, extra...)
}

func (e *checkEnv) ownSigned(t *testing.T, k *idptest.Key, client string, aud any, scope string, extra ...any) string {
	t.Helper()
	now := e.clock.Now()
	claims := map[string]any{
		"iss": ownIssuer, "sub": "user-1", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
	}
	if aud != nil {
		claims["aud"] = aud
	}
	if client != "" {
		claims["client_id"] = client
	}
	if scope != "" {
		claims["scope"] = scope
	}
	return idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "at+jwt"}, with(claims, extra...))
}

// ownTyped is a token signed with vakt's key for app-1 → app-b, with typ
// as given ("" for none).
func (e *checkEnv) ownTyped(t *testing.T, typ, scope string) string {
	k := e.ownKey
	h := map[string]any{"alg": k.Alg, "kid": k.ID}
	if typ != "" {
		h["typ"] = typ
	}
	return idptest.Sign(t, k, k.Alg, h, map[string]any{
		"iss": ownIssuer, "sub": "user-1", "aud": appB, "client_id": app1, "scope": scope, "exp": e.clock.Now().Add(time.Minute).Unix(),
	})
}

// external is a token of auth0 for aud, issued to the client "xYz123"
// (not an application id); extra sets claims (nil removes one).
func (e *checkEnv) external(aud string, extra ...any) string {
	now := e.clock.Now()
	return e.auth0.Token(with(map[string]any{
		"iss": e.auth0.URL, "sub": "auth0|42", "aud": aud, "azp": "xYz123",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "permissions": []string{"read:users"},
	}, extra...))
}

type checkCase struct {
	name   string
	app    string // appB when empty
	method string // GET when empty
	path   string
	auth   string // the Authorization header

	want   authz.Reason // ReasonNone: allowed
	outage bool         // want.Outage()
	scope  string       // Decision.Scope
	err    error        // Decision.Err wraps it (nil: not checked)
	errMsg string       // Decision.Err mentions it
	// On allow: the provider that verified the token ("" on a public
	// route: no token looked at), the token's sub and the caller.
	provider, sub, caller string
}

func (tt *checkCase) request(t *testing.T, p *authz.Policy) authz.CheckRequest {
	t.Helper()
	id, method := tt.app, tt.method
	if id == "" {
		id = appB
	}
	if method == "" {
		method = "GET"
	}
	app, ok := p.Application(id)
	if !ok {
		t.Fatalf("no application %s", id)
	}
	return authz.CheckRequest{App: app, Method: method, Path: tt.path, Authorization: tt.auth}
}

// verify checks d against the row.
func (tt *checkCase) verify(t *testing.T, d authz.Decision) {
	t.Helper()
	if d.Allow != (tt.want == authz.ReasonNone) || d.Reason != tt.want {
		t.Fatalf("Allow %v, Reason %v (cause: %v); want reason %v", d.Allow, d.Reason, d.Err, tt.want)
	}
	if d.Reason.Outage() != tt.outage {
		t.Errorf("%v.Outage() = %v", d.Reason, d.Reason.Outage())
	}
	if d.Scope != tt.scope {
		t.Errorf("Scope %q, want %q", d.Scope, tt.scope)
	}
	if tt.err != nil && !errors.Is(d.Err, tt.err) {
		t.Errorf("Err %v, want %v", d.Err, tt.err)
	}
	if tt.errMsg != "" && (d.Err == nil || !strings.Contains(d.Err.Error(), tt.errMsg)) {
		t.Errorf("Err %v does not mention %q", d.Err, tt.errMsg)
	}
	if d.Err != nil && authz.ReasonOf(d.Err) != d.Reason {
		t.Errorf("Err %v is of reason %v, the decision's is %v", d.Err, authz.ReasonOf(d.Err), d.Reason)
	}
	if !d.Allow {
		// A refusal names the token's claims (for the decision log) only
		// once it verified: never beside an error, always with its
		// provider, and a caller only with them.
		if d.Claims == nil && (d.Provider != nil || d.Caller != "") {
			t.Fatalf("Provider %v, Caller %q without Claims", d.Provider, d.Caller)
		}
		if d.Claims != nil && (d.Err != nil || d.Provider == nil) {
			t.Fatalf("Claims of a token refused with Err %v, Provider %v", d.Err, d.Provider)
		}
		return
	}
	if tt.provider == "" {
		if d.Claims != nil || d.Provider != nil || d.Caller != "" {
			t.Fatalf("Claims %+v, Provider %v, Caller %q: want none", d.Claims, d.Provider, d.Caller)
		}
		return
	}
	if d.Err != nil {
		t.Errorf("allowed with Err %v", d.Err)
	}
	if d.Provider == nil || d.Claims == nil {
		t.Fatalf("allowed without Provider (%v) or Claims (%v)", d.Provider, d.Claims)
	}
	if d.Provider.Name() != tt.provider {
		t.Errorf("Provider %s, want %s", d.Provider.Name(), tt.provider)
	}
	if d.Claims.Issuer() != d.Provider.Issuer() || d.Claims.Subject() != tt.sub {
		t.Errorf("Claims iss %q, sub %q; want iss %q, sub %q", d.Claims.Issuer(), d.Claims.Subject(), d.Provider.Issuer(), tt.sub)
	}
	if d.Caller != tt.caller {
		t.Errorf("Caller %q, want %q", d.Caller, tt.caller)
	}
}

func (e *checkEnv) cases(t *testing.T) []checkCase {
	bearer := func(tok string) string { return "Bearer " + tok }
	read := bearer(e.own(t, app1, appB, "read:users"))
	ext := func(aud string, extra ...any) string { return bearer(e.external(aud, extra...)) }
	const (
		none    = authz.ReasonNone
		tokenx  = ownProvider
		user    = "user-1"
		extUser = "auth0|42"
	)
	stranger := idptest.NewKey(t, "stranger", "ES256")
	return []checkCase{
		// Routes.
		{name: "exact path", path: "/read", auth: read, want: none, provider: tokenx, sub: user, caller: app1},
		{name: "exact path is not a prefix", path: "/read/1", auth: read, want: authz.ReasonRouteNotFound},
		{name: "prefix", method: "DELETE", path: "/delete/42", auth: bearer(e.own(t, app1, appB, "delete:users")), want: none, provider: tokenx, sub: user, caller: app1},
		{name: "method the route does not list", method: "DELETE", path: "/read", auth: read, want: authz.ReasonRouteNotFound},
		{name: "any method when the route lists none", method: "PATCH", path: "/pkg.Service/Method", auth: bearer(e.own(t, app1, appB, "svc:call")), want: none, provider: tokenx, sub: user, caller: app1},
		{name: "no route matches", path: "/nothing", auth: read, want: authz.ReasonRouteNotFound},
		{name: "no route matches, no token", path: "/nothing", want: authz.ReasonRouteNotFound},
		{name: "first match wins: public before a prefix", path: "/reports/summary", want: none},
		{name: "first match wins: the prefix after", path: "/reports/2024", want: authz.ReasonTokenMissing},
		{name: "first match wins: the prefix after, with its scope", path: "/reports/2024", auth: bearer(e.own(t, app1, appB, "reports:read")), want: none, provider: tokenx, sub: user, caller: app1},
		{name: "first match wins: a prefix before public", path: "/admin/health", want: authz.ReasonTokenMissing},
		{name: "first match wins: a prefix before public, its scope", path: "/admin/health", auth: read, want: authz.ReasonScopeInsufficient, scope: "admin"},
		{name: "no routes: any path", app: appAPI, method: "POST", path: "/any/thing", auth: bearer(e.own(t, app1, appAPI, "")), want: none, provider: tokenx, sub: user, caller: app1},

		// Public routes: no token looked at.
		{name: "public, no token", path: "/public/logo.png", want: none},
		{name: "public, garbage token", path: "/public/logo.png", auth: "Bearer garbage", want: none},
		{name: "public, expired token", path: "/public/logo.png", auth: bearer(e.own(t, app1, appB, "", "exp", e.clock.Now().Add(-time.Hour).Unix())), want: none},

		// Scopes.
		{name: "scope present among others", method: "POST", path: "/create", auth: bearer(e.own(t, app1, appB, "read:users create:users")), want: none, provider: tokenx, sub: user, caller: app1},
		{name: "scope missing", method: "POST", path: "/create", auth: read, want: authz.ReasonScopeInsufficient, scope: "create:users"},
		{name: "every scope required", method: "PUT", path: "/both", auth: read, want: authz.ReasonScopeInsufficient, scope: "read:users write:users"},
		{name: "every scope present", method: "PUT", path: "/both", auth: bearer(e.own(t, app1, appB, "write:users read:users")), want: none, provider: tokenx, sub: user, caller: app1},
		{name: "scope from scp array", method: "POST", path: "/create", auth: bearer(e.own(t, app1, appB, "", "scp", []string{"create:users"})), want: none, provider: tokenx, sub: user, caller: app1},
		{name: "scope from permissions array", method: "POST", path: "/create", auth: bearer(e.own(t, app1, appB, "", "permissions", []string{"create:users"})), want: none, provider: tokenx, sub: user, caller: app1},
		{name: "scope text is not split on prefixes", method: "POST", path: "/create", auth: bearer(e.own(t, app1, appB, "create:users:all")), want: authz.ReasonScopeInsufficient, scope: "create:users"},

		// Inbound rules.
		{name: "caller via client_id", path: "/read", auth: read, want: none, provider: tokenx, sub: user, caller: app1},
		{name: "caller via azp", path: "/read", auth: bearer(e.own(t, "", appB, "read:users", "azp", app1)), want: none, provider: tokenx, sub: user, caller: app1},
		{name: "client_id before azp", path: "/read", auth: bearer(e.own(t, app3, appB, "read:users", "azp", app1)), want: authz.ReasonCallerDenied},
		{name: "caller not in the rules", path: "/read", auth: bearer(e.own(t, app3, appB, "read:users")), want: authz.ReasonCallerDenied},
		{name: "caller not in the rules, before scopes", method: "POST", path: "/create", auth: bearer(e.own(t, app3, appB, "read:users")), want: authz.ReasonCallerDenied},
		{name: "own token without client_id", path: "/read", auth: bearer(e.own(t, "", appB, "read:users")), want: authz.ReasonCallerMissing},
		{name: "own token whose client_id is no application id", path: "/read", auth: bearer(e.own(t, "xYz123", appB, "read:users")), want: authz.ReasonCallerMissing},
		{name: "external client id skips the rules", app: appAPI, path: "/x", auth: ext(apiAudience), want: none, provider: "auth0", sub: extUser},
		// An external provider's client ids are its own names, which may
		// be chosen to look like application ids: they name no caller.
		{name: "external token, azp shaped like an application id", app: appAPI, path: "/x", auth: ext(apiAudience, "azp", app1), want: none, provider: "auth0", sub: extUser, caller: ""},
		{name: "external token, client_id shaped like an application id", app: appAPI, path: "/x", auth: ext(apiAudience, "client_id", app1), want: none, provider: "auth0", sub: extUser, caller: ""},
		{name: "external token, client_id of an application the rules leave out", app: appAPI, path: "/x", auth: ext(apiAudience, "client_id", app3), want: none, provider: "auth0", sub: extUser, caller: ""},
		{name: "own token, caller not in the rules of an application accepting external tokens", app: appAPI, path: "/x", auth: bearer(e.own(t, app3, appAPI, "")), want: authz.ReasonCallerDenied},

		// vakt's own tokens: aud must be the application.
		{name: "own token for another registered application", path: "/read", auth: bearer(e.own(t, app1, app3, "read:users")), want: authz.ReasonTokenAudience},
		{name: "own token for an unregistered application", path: "/read", auth: bearer(e.own(t, app1, "dev-gcp:team-x:other", "read:users")), want: authz.ReasonTokenAudience, err: authz.ErrAudienceInvalid},
		{name: "own token without aud", path: "/read", auth: bearer(e.own(t, app1, nil, "read:users")), want: authz.ReasonTokenAudience},
		{name: "own token, aud array", path: "/read", auth: bearer(e.own(t, app1, []string{app3, appB}, "read:users")), want: none, provider: tokenx, sub: user, caller: app1},
		{name: "own token signed by another key", path: "/read", auth: bearer(e.ownSigned(t, &idptest.Key{ID: e.ownKey.ID, Alg: "ES256", Private: stranger.Private}, app1, appB, "read:users")), want: authz.ReasonTokenSignature},

		// External providers: only where listed, with the audience listed.
		{name: "external token", app: appAPI, path: "/x", auth: ext(apiAudience), want: none, provider: "auth0", sub: extUser},
		{name: "external token, second audience listed", app: appAPI, path: "/x", auth: ext(api2Audience), want: none, provider: "auth0", sub: extUser},
		{name: "external token, aud array", app: appAPI, path: "/x", auth: ext(apiAudience, "aud", []string{"https://other.example.com", api2Audience}), want: none, provider: "auth0", sub: extUser},
		{name: "external token, wrong audience", app: appAPI, path: "/x", auth: ext("https://other.example.com"), want: authz.ReasonTokenAudience},
		{name: "external token where its provider is not listed", path: "/read", auth: ext(apiAudience, "client_id", app1, "scope", "read:users"), want: authz.ReasonTokenIssuer},

		// The Authorization header.
		{name: "no Authorization", path: "/read", want: authz.ReasonTokenMissing},
		// RFC 6750 §3.1: another scheme is no bearer token at all.
		{name: "Basic credentials", path: "/read", auth: "Basic dXNlcjpwYXNz", want: authz.ReasonTokenMissing},
		{name: "two tokens", path: "/read", auth: read + "," + read, want: authz.ReasonAuthorizationInvalid},
		{name: "two tokens, comma only", path: "/read", auth: read + "," + strings.TrimPrefix(read, "Bearer "), want: authz.ReasonAuthorizationInvalid},
		{name: "two tokens, comma and space", path: "/read", auth: read + ", " + read, want: authz.ReasonAuthorizationInvalid},
		{name: "scheme only", path: "/read", auth: "Bearer ", want: authz.ReasonAuthorizationInvalid},
		{name: "not a b64token", path: "/read", auth: `Bearer a"b`, want: authz.ReasonAuthorizationInvalid, err: authz.ErrBadAuthorization},
		{name: "lower-case bearer", path: "/read", auth: "bearer " + strings.TrimPrefix(read, "Bearer "), want: none, provider: tokenx, sub: user, caller: app1},
		{name: "several spaces", path: "/read", auth: "Bearer   " + strings.TrimPrefix(read, "Bearer "), want: none, provider: tokenx, sub: user, caller: app1},

		// Paths.
		{name: "query ignored", path: "/read?id=1&x=/create", auth: read, want: none, provider: tokenx, sub: user, caller: app1},
		{name: "percent-decoded before matching", path: "/%72ead", auth: read, want: none, provider: tokenx, sub: user, caller: app1},
		{name: "encoded slash", path: "/read/..%2Fdelete", auth: read, want: authz.ReasonPathInvalid, err: authz.ErrBadPath},
		{name: "encoded backslash", path: "/read%5C..%5Cdelete", auth: read, want: authz.ReasonPathInvalid, err: authz.ErrBadPath},
		{name: "bad percent-encoding", path: "/read%zz", auth: read, want: authz.ReasonPathInvalid},
		{name: "path checked before the token", path: "/read%2", want: authz.ReasonPathInvalid},
		{name: "not an absolute path", path: "read", auth: read, want: authz.ReasonPathInvalid},
		{name: "dot segments cannot borrow a public route", method: "DELETE", path: "/public/../delete/1", want: authz.ReasonTokenMissing},
		{name: "encoded dot segments cannot either", method: "DELETE", path: "/public/%2e%2E/delete/1", want: authz.ReasonTokenMissing},

		// Invalid tokens.
		{name: "expired", path: "/read", auth: bearer(e.own(t, app1, appB, "read:users", "exp", e.clock.Now().Add(-time.Minute).Unix())), want: authz.ReasonTokenExpired, err: authz.ErrExpired},
		{name: "garbage", path: "/read", auth: "Bearer abc", want: authz.ReasonTokenMalformed, err: authz.ErrMalformed},
		{name: "alg none", path: "/read", auth: bearer(idptest.Segment(t, `{"alg":"none"}`) + "." + idptest.Segment(t, `{"iss":"x"}`) + "."), want: authz.ReasonTokenAlgorithm},
		{name: "too large", path: "/read", auth: bearer(strings.Repeat("a", authz.DefaultMaxTokenSize+1)), want: authz.ReasonTokenTooLarge, err: authz.ErrTooLarge},
		{name: "unknown issuer", path: "/read", auth: bearer(e.ownSigned(t, stranger, app1, appB, "read:users", "iss", "https://elsewhere.example/")), want: authz.ReasonTokenIssuer, err: authz.ErrIssuerNotTrusted},

		// Identity integrity: paths as the upstream reads them, typ, and
		// claims that are no header value.
		{name: "path parameters", path: "/public/..;/read", want: authz.ReasonPathInvalid},
		{name: "an encoded NUL", path: "/public/..%00/read", want: authz.ReasonPathInvalid},
		{name: "double encoding", path: "/public/%252e%252e/read", want: authz.ReasonPathInvalid},
		{name: "vakt's key, typ JWT", path: "/read", auth: bearer(e.ownTyped(t, "JWT", "read:users")), want: authz.ReasonTokenType, err: authz.ErrTypeNotAllowed},
		{name: "vakt's key, no typ", path: "/read", auth: bearer(e.ownTyped(t, "", "read:users")), want: authz.ReasonTokenType, err: authz.ErrTypeNotAllowed},
		{name: "sub with CRLF", path: "/read", auth: bearer(e.own(t, app1, appB, "read:users", "sub", "a\r\nx-vakt-client-id: x")), want: authz.ReasonClaimNotForwardable},
		{name: "a scope with NUL", path: "/read", auth: bearer(e.own(t, app1, appB, "read:users x\x00")), want: authz.ReasonClaimNotForwardable},
		{name: "non-ASCII sub", path: "/read", auth: bearer(e.own(t, app1, appB, "read:users", "sub", "Åse")), want: none, provider: tokenx, sub: "Åse", caller: app1},

		// An identity provider whose keys were never fetched: an outage.
		{name: "keys unavailable", app: appAPI, path: "/x", auth: bearer(e.down.Token(e.down.Claims(e.clock.Now(), apiAudience))), want: authz.ReasonKeysUnavailable, outage: true, err: authz.ErrKeysUnavailable, errMsg: "503"},
	}
}

func TestChecker(t *testing.T) {
	e := newCheckEnv(t)
	ctx := context.Background()
	for _, tt := range e.cases(t) {
		t.Run(tt.name, func(t *testing.T) {
			tt.verify(t, e.uncached.Check(ctx, tt.request(t, e.policy)))
		})
	}
}

// A decision answered from the verified-token cache is the decision made
// from scratch: the cache holds verified claims, never a decision, so the
// policy of each application applies to every hit.
func TestCheckerCache(t *testing.T) {
	e := newCheckEnv(t)
	ctx := context.Background()
	same := func(a, b authz.Decision) bool {
		return a.Allow == b.Allow && a.Reason == b.Reason && a.Caller == b.Caller && a.Scope == b.Scope &&
			(a.Provider == nil) == (b.Provider == nil) && (a.Provider == nil || a.Provider.Name() == b.Provider.Name()) &&
			(a.Claims == nil) == (b.Claims == nil) && (a.Claims == nil || a.Claims.Subject() == b.Claims.Subject())
	}
	hits := 0
	for _, tt := range e.cases(t) {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.request(t, e.policy)
			fresh := e.uncached.Check(ctx, req)
			first := e.cached.Check(ctx, req)
			before := e.lookups()
			again := e.cached.Check(ctx, req)
			tt.verify(t, again)
			if !same(fresh, again) || !same(first, again) {
				t.Fatalf("from scratch %+v\nfirst %+v\nagain %+v", fresh, first, again)
			}
			// A decision without an error either looked at no token or
			// verified it: the second time it must come from the cache.
			if again.Err == nil && e.lookups() != before {
				t.Fatalf("%d key lookups on the second check, want 0", e.lookups()-before)
			}
			if again.Claims != nil {
				if again.Claims != first.Claims || again.Claims == fresh.Claims {
					t.Fatal("the second check did not answer from the cache")
				}
				hits++
			}
		})
	}
	if hits == 0 {
		t.Fatal("no row was answered from the cache")
	}

	// Every hit re-checks exp; and a token cached for one application is
	// judged by the policy of the next.
	tok := "Bearer " + e.own(t, app1, []string{appB, appAPI}, "read:users")
	b, _ := e.policy.Application(appB)
	api, _ := e.policy.Application(appAPI)
	if d := e.cached.Check(ctx, authz.CheckRequest{App: b, Method: "GET", Path: "/read", Authorization: tok}); !d.Allow {
		t.Fatalf("first check: %v (%v)", d.Reason, d.Err)
	}
	before := e.lookups()
	if d := e.cached.Check(ctx, authz.CheckRequest{App: b, Method: "POST", Path: "/create", Authorization: tok}); d.Reason != authz.ReasonScopeInsufficient {
		t.Fatalf("another route from the cache: %v (%v)", d.Reason, d.Err)
	}
	if d := e.cached.Check(ctx, authz.CheckRequest{App: api, Method: "GET", Path: "/", Authorization: tok}); !d.Allow || d.Caller != app1 {
		t.Fatalf("another application from the cache: %+v", d)
	}
	if n := e.lookups() - before; n != 0 {
		t.Fatalf("%d key lookups for a cached token", n)
	}
	e.clock.Advance(time.Minute)
	for _, c := range []*authz.Checker{e.cached, e.uncached} {
		d := c.Check(ctx, authz.CheckRequest{App: b, Method: "GET", Path: "/read", Authorization: tok})
		if d.Reason != authz.ReasonTokenExpired || !errors.Is(d.Err, authz.ErrExpired) {
			t.Fatalf("expired since it was cached: %v (%v)", d.Reason, d.Err)
		}
	}
}

// An allow names where the verified-token cache keeps the token
// (TokenKey), for a face to keep what it makes of the claims: the same key
// and claims on every Check of the token from the cache; with no cache, or
// no token, none; a token verified anew has the same key and claims of its
// own.
func TestDecisionTokenKey(t *testing.T) {
	e := newCheckEnv(t)
	ctx := context.Background()
	b, _ := e.policy.Application(appB)
	tok := "Bearer " + e.own(t, app1, appB, "read:users")
	check := func(c *authz.Checker, auth string) authz.Decision {
		t.Helper()
		d := c.Check(ctx, authz.CheckRequest{App: b, Method: "GET", Path: "/read", Authorization: auth})
		if !d.Allow {
			t.Fatalf("%v (%v)", d.Reason, d.Err)
		}
		return d
	}
	first := check(e.cached, tok)
	k1, ok := first.TokenKey()
	if !ok || k1 == ([32]byte{}) {
		t.Fatal("a token verified and cached has no key")
	}
	again := check(e.cached, tok)
	if k2, ok := again.TokenKey(); !ok || k2 != k1 || again.Claims != first.Claims {
		t.Fatalf("the token from the cache: key %x (%v), the same claims %v", k2, ok, again.Claims == first.Claims)
	}
	if d := check(e.uncached, tok); func() bool { _, ok := d.TokenKey(); return ok }() {
		t.Fatal("no cache, yet a key")
	}
	// Its provider retired, the token leaves the cache and is not kept
	// again: verified anew, with claims of its own, and no key.
	e.tokens.Retire(first.Provider)
	d := check(e.cached, tok)
	if _, ok := d.TokenKey(); ok || d.Claims == first.Claims {
		t.Fatalf("a retired provider's token: kept %v, the claims before %v", ok, d.Claims == first.Claims)
	}
}

// The configuration after a policy change, as server.NewRuntime builds it:
// the same providers and cache, and the next policy (NewPolicyFrom). A
// token cached before is a hit, with no key lookup, and the same claims; an
// application that did not change is the same *Application (what a face
// keeps for it stays good), and one that changed a new one. An application
// removed is no
// aud for vakt's own tokens any more, from the cache too.
func TestCheckerNextConfiguration(t *testing.T) {
	e := newCheckEnv(t)
	ctx := context.Background()
	tok := "Bearer " + e.own(t, app1, []string{appB, appAPI}, "read:users")
	only3 := e.own(t, app1, app3, "")
	derive := func(c *authz.Checker, p *authz.Policy, id, path string) (*authz.Application, *authz.Claims) {
		t.Helper()
		app, _ := p.Application(id)
		d := c.Check(ctx, authz.CheckRequest{App: app, Method: "GET", Path: path, Authorization: tok})
		if !d.Allow {
			t.Fatalf("%s: %v (%v)", id, d.Reason, d.Err)
		}
		return app, d.Claims
	}
	answerB, claims := derive(e.cached, e.policy, appB, "/read")
	answerAPI, _ := derive(e.cached, e.policy, appAPI, "/")
	if _, err := e.cached.Validator.Validate(ctx, "vakt", only3); err != nil {
		t.Fatal(err)
	}

	// app-3 removed; api accepts one more provider's tokens; app-b as it was.
	var apps []authz.ApplicationPolicy
	for _, a := range e.apps {
		switch a.ID {
		case app3:
			continue
		case appAPI:
			a.Authentication = append(slices.Clone(a.Authentication), authz.Authentication{Provider: "auth0", Audience: "https://api3.example.com"})
		}
		apps = append(apps, a)
	}
	policy, err := authz.NewPolicyFrom(e.policy, apps)
	if err != nil {
		t.Fatal(err)
	}
	var providers []*authz.Provider
	for _, name := range []string{"auth0", "azure", ownProvider} {
		p, _ := e.cached.Validator.Provider(name)
		providers = append(providers, p)
	}
	v, err := authz.NewValidator(authz.ValidatorConfig{Providers: providers, Aliases: map[string]string{"vakt": ownProvider},
		Cache: e.tokens, Registered: policy.Registered, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	next := &authz.Checker{Validator: v, Own: ownProvider}

	before := e.lookups()
	if got, c := derive(next, policy, appB, "/read"); got != answerB || c != claims {
		t.Fatal("app-b did not change, and is another application, or the token was verified anew")
	}
	if got, _ := derive(next, policy, appAPI, "/"); got == answerAPI {
		t.Fatal("api changed, and is the application before")
	}
	if n := e.lookups() - before; n != 0 {
		t.Fatalf("%d key lookups for a token cached before the change", n)
	}
	b, _ := policy.Application(appB)
	req := authz.CheckRequest{App: b, Method: "GET", Path: "/read", Authorization: tok}
	if n := testing.AllocsPerRun(100, func() {
		_ = next.Check(ctx, req)
	}); n != 0 {
		t.Fatalf("%.1f allocations per Check of a cached token after the change", n)
	}
	// app-3's token: the old configuration accepts it from the cache, the
	// next refuses it, by every path.
	if _, err := e.cached.Validator.Validate(ctx, "vakt", only3); err != nil {
		t.Fatalf("before the change: %v", err)
	}
	if _, err := v.Validate(ctx, "vakt", only3); !errors.Is(err, authz.ErrAudienceInvalid) {
		t.Fatalf("Validate after app-3 was removed: %v", err)
	}
	if _, _, err := v.ValidateByIssuer(ctx, only3); !errors.Is(err, authz.ErrAudienceInvalid) {
		t.Fatalf("ValidateByIssuer after app-3 was removed: %v", err)
	}
	if n := e.lookups() - before; n != 0 {
		t.Fatalf("%d key lookups: app-3's token was not answered from the cache", n)
	}
}

// A decision names the route that decided it, numbered from 1 in the
// application's order; 0 when none matched or the application has none.
func TestDecisionNamesRoute(t *testing.T) {
	e := newCheckEnv(t)
	ctx := context.Background()
	b, _ := e.policy.Application(appB)
	api, _ := e.policy.Application(appAPI)
	tok := "Bearer " + e.own(t, app1, []string{appB, appAPI}, "read:users")
	for _, tt := range []struct {
		app          *authz.Application
		method, path string
		auth         string
		reason       authz.Reason
		route        int
	}{
		{b, "GET", "/read", tok, authz.ReasonNone, 1},
		{b, "POST", "/create", tok, authz.ReasonScopeInsufficient, 2},
		{b, "POST", "/create", "", authz.ReasonTokenMissing, 2},
		{b, "GET", "/public/x", "", authz.ReasonNone, 4},
		{b, "GET", "/reports/summary", "", authz.ReasonNone, 7},
		{b, "GET", "/nowhere", tok, authz.ReasonRouteNotFound, 0},
		{api, "GET", "/", tok, authz.ReasonNone, 0},
	} {
		d := e.cached.Check(ctx, authz.CheckRequest{App: tt.app, Method: tt.method, Path: tt.path, Authorization: tt.auth})
		if d.Reason != tt.reason || d.Route != tt.route {
			t.Errorf("%s %s %s: %v, route %d; want %v, route %d", tt.app.ID, tt.method, tt.path, d.Reason, d.Route, tt.reason, tt.route)
		}
	}
}
