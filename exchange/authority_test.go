package exchange

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/redistest"
)

// The applications of TestAuthority and what they are.
const (
	authorityIssuer = "https://vakt.example"
	ownProviderName = "tokenx"
	clientA         = "dev:team-a:app-1" // RS256 key of its own; appB allows it
	clientNoKeys    = "dev:team-a:app-2" // registered, no keys
	clientDenied    = "dev:team-c:app-3" // ES256 key of its own; no rule allows it
	clientRemote    = "dev:team-a:app-4" // EdDSA keys at a jwksUri; appB and clientA allow it
	clientKeysDown  = "dev:team-a:app-5" // keys at a jwksUri that is down
	targetB         = "dev:team-b:app-b"
	issuedLifetime  = 5 * time.Minute
)

// authorityEpoch is the injected clock's time: every time in a test is exact.
var authorityEpoch = time.Unix(1_800_000_000, 0)

// authorityFixture is an Authority built directly, as the server's runtime
// builds it: a real identity provider over HTTP (discovery and JWKS), one
// that is down before any keys were fetched, vakt's own tokens, clients
// with static keys and with keys at a jwksUri (one of them down).
type authorityFixture struct {
	clock    *idptest.Clock
	idp      *idptest.Issuer // the citizens' identity provider
	idpDown  *idptest.Issuer // down from the start
	keysDown *idptest.Issuer // serves clientKeysDown's keys; down from the start
	keys     map[string]*idptest.Key
	signing  *SigningKey // signs; a second, published key follows it
	subjects *authz.Validator
	a        *Authority
	jti      atomic.Int64
	issued   map[string]bool // jti of every token issued, to see they differ
}

func staticKeySource(t testing.TB, keys ...*idptest.Key) authz.KeySource {
	t.Helper()
	vks := make([]*authz.Key, 0, len(keys))
	for _, k := range keys {
		vk, err := authz.NewKey(k.ID, k.Alg, k.Public())
		if err != nil {
			t.Fatal(err)
		}
		vks = append(vks, vk)
	}
	set, err := authz.NewKeySet(vks...)
	if err != nil {
		t.Fatal(err)
	}
	return authz.StaticKeys{Set: set}
}

func remoteKeys(t testing.TB, cfg authz.RemoteKeysConfig) authz.KeySource {
	t.Helper()
	k, err := authz.NewRemoteKeys(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newAuthorityFixture builds the Authority; replay makes its replay store
// from the clock (a MemoryReplay when nil).
func newAuthorityFixture(t *testing.T, replay func(now func() time.Time) ReplayStore) *authorityFixture {
	t.Helper()
	clock := idptest.NewClock(authorityEpoch)
	f := &authorityFixture{
		clock:    clock,
		idp:      idptest.NewIssuer(t, "RS256"),
		idpDown:  idptest.NewIssuer(t, "ES256"),
		keysDown: idptest.NewIssuer(t, "ES256"),
		issued:   map[string]bool{},
	}
	f.idpDown.SetDown(true)
	f.keysDown.SetDown(true)
	published := idptest.NewIssuer(t, "EdDSA") // serves clientRemote's keys
	f.keys = map[string]*idptest.Key{
		clientA:        idptest.NewKey(t, "app-1-key", "RS256"),
		clientDenied:   idptest.NewKey(t, "app-3-key", "ES256"),
		clientRemote:   published.Key(),
		clientKeysDown: f.keysDown.Key(),
	}

	var err error
	if f.signing, err = GenerateSigningKey("ES256"); err != nil {
		t.Fatal(err)
	}
	next, err := GenerateSigningKey("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := NewSigner(f.signing, next)
	if err != nil {
		t.Fatal(err)
	}

	apps := []authz.ApplicationPolicy{
		{ID: clientA, Inbound: []string{clientRemote}, Hosts: []string{"app-1.example.com"}},
		{ID: clientNoKeys},
		{ID: clientDenied},
		{ID: clientRemote},
		{ID: clientKeysDown},
		{ID: targetB, Inbound: []string{clientA, clientRemote, clientKeysDown}, Hosts: []string{"app-b.example.com"}, Resources: []string{"urn:example:app-b"}},
	}
	policy, err := authz.NewPolicy(apps)
	if err != nil {
		t.Fatal(err)
	}

	// The subject tokens: the identity providers', and vakt's own (as the
	// runtime's ownProvider: vakt's issuer and signing keys, an audience
	// that must be a registered application).
	ownKeys := make([]*authz.Key, 0, 2)
	for _, sk := range signer.Keys() {
		vk, err := sk.VerificationKey()
		if err != nil {
			t.Fatal(err)
		}
		ownKeys = append(ownKeys, vk)
	}
	ownSet, _ := authz.NewKeySet(ownKeys...)
	var registered []string
	for _, a := range apps {
		registered = append(registered, a.ID)
	}
	providers := []authz.ProviderConfig{
		{Name: "idporten", Issuer: f.idp.URL, Keys: remoteKeys(t, authz.RemoteKeysConfig{
			Name: "idporten", WellKnownURL: f.idp.WellKnownURL(), Issuer: f.idp.URL, Logger: quietLog, Now: clock.Now,
		})},
		{Name: "minid", Issuer: f.idpDown.URL, Keys: remoteKeys(t, authz.RemoteKeysConfig{
			Name: "minid", JWKSURI: f.idpDown.JWKSURI(), Issuer: f.idpDown.URL, Logger: quietLog, Now: clock.Now,
		})},
		{Name: ownProviderName, Issuer: authorityIssuer, Audiences: registered, RequireAudience: true,
			AudienceAfterSignature: true, Type: IssuedTokenType, Own: true,
			Algorithms: []string{f.signing.Alg, next.Alg}, Keys: authz.StaticKeys{Set: ownSet}},
	}
	var ps []*authz.Provider
	for _, pc := range providers {
		p, err := authz.NewProvider(pc)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	if f.subjects, err = authz.NewValidator(authz.ValidatorConfig{Providers: ps, Now: clock.Now}); err != nil {
		t.Fatal(err)
	}

	var store ReplayStore
	if replay != nil {
		store = replay(clock.Now)
	} else {
		store = NewMemoryReplay(MemoryReplayConfig{Now: clock.Now})
	}
	f.a, err = NewAuthority(AuthorityConfig{
		Issuer:      authorityIssuer,
		Subjects:    f.subjects,
		OwnProvider: ownProviderName,
		Clients: map[string]authz.KeySource{
			clientA:      staticKeySource(t, f.keys[clientA]),
			clientDenied: staticKeySource(t, f.keys[clientDenied]),
			clientRemote: remoteKeys(t, authz.RemoteKeysConfig{
				Name: clientRemote, JWKSURI: published.JWKSURI(), Issuer: clientRemote, Logger: quietLog, Now: clock.Now,
			}),
			clientKeysDown: remoteKeys(t, authz.RemoteKeysConfig{
				Name: clientKeysDown, JWKSURI: f.keysDown.JWKSURI(), Issuer: clientKeysDown, Logger: quietLog, Now: clock.Now,
			}),
		},
		Policy:        policy,
		Signer:        signer,
		Replay:        store,
		TokenLifetime: issuedLifetime,
		Now:           clock.Now,
		Logger:        quietLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// assertionBy is a client assertion for client as NAIS tells applications
// to make one, signed by key; edit changes its header and claims.
func (f *authorityFixture) assertionBy(t *testing.T, key *idptest.Key, client string, edit func(h, c map[string]any)) string {
	t.Helper()
	now := f.clock.Now()
	h := map[string]any{"alg": key.Alg, "kid": key.ID, "typ": "JWT"}
	c := map[string]any{
		"iss": client, "sub": client, "aud": authorityIssuer + "/token",
		"jti": fmt.Sprintf("assertion-%d", f.jti.Add(1)),
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Minute).Unix(),
	}
	if edit != nil {
		edit(h, c)
	}
	return idptest.Sign(t, key, key.Alg, h, c)
}

// assertion is a client assertion signed by the client's own key (by
// clientA's for a client without one).
func (f *authorityFixture) assertion(t *testing.T, client string, edit func(h, c map[string]any)) string {
	t.Helper()
	key := f.keys[client]
	if key == nil {
		key = f.keys[clientA]
	}
	return f.assertionBy(t, key, client, edit)
}

// subject is a token of the identity provider, for user-1, signed with its
// published key; edit changes its claims.
func (f *authorityFixture) subject(t *testing.T, edit func(c map[string]any)) string {
	t.Helper()
	now := f.clock.Now()
	c := map[string]any{
		"iss": f.idp.URL, "sub": "user-1", "aud": "vakt", "jti": "subject-jti",
		"pid": "12345678901", "acr": "idporten-loa-high", "amr": []string{"BankID"}, "sid": "session-1",
		"iat": now.Add(-time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	if edit != nil {
		edit(c)
	}
	k := f.idp.Key()
	return idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "JWT"}, c)
}

// request is clientA exchanging a token of the identity provider for targetB.
func (f *authorityFixture) request(t *testing.T, edit func(t *testing.T, r *Request)) Request {
	t.Helper()
	r := Request{
		GrantType:           GrantTypeTokenExchange,
		ClientAssertionType: ClientAssertionTypeJWT,
		ClientAssertion:     f.assertion(t, clientA, nil),
		SubjectTokenType:    TokenTypeJWT,
		SubjectToken:        f.subject(t, nil),
		Audience:            []string{targetB},
	}
	if edit != nil {
		edit(t, &r)
	}
	return r
}

// mustExchange performs an exchange that must succeed.
func (f *authorityFixture) mustExchange(t *testing.T, r Request) *Response {
	t.Helper()
	res, err := f.a.Exchange(context.Background(), r)
	if err != nil {
		t.Fatalf("exchange refused: %v", err)
	}
	return res
}

// refusal returns err as the *Error Exchange must return, or fails.
func refusal(t *testing.T, res *Response, err error) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("exchange succeeded: %+v", res)
	}
	if res != nil {
		t.Fatalf("a refusal with a response: %+v", res)
	}
	e, ok := err.(*Error)
	if !ok {
		t.Fatalf("refusal %T is not an *exchange.Error: %v", err, err)
	}
	return e
}

// checkOutage: an outage is never told as a refusal, and never names where
// vakt looked (the cause, for the log, does).
func checkOutage(t *testing.T, e *Error, inCause string) {
	t.Helper()
	if !e.Reason().Outage() {
		t.Fatalf("%s is not an outage", e.Reason())
	}
	for _, leak := range []string{"127.0.0.1", "http", "localhost", "://", "redis", "dial", "refused"} {
		if strings.Contains(strings.ToLower(e.Description()), leak) {
			t.Fatalf("description %q contains %q", e.Description(), leak)
		}
	}
	if e.Err == nil || !strings.Contains(e.Err.Error(), inCause) {
		t.Fatalf("cause %v does not name %q", e.Err, inCause)
	}
}

func decodeSegment(t *testing.T, seg string) map[string]any {
	t.Helper()
	b, err := base64.RawURLEncoding.Strict().DecodeString(seg)
	if err != nil {
		t.Fatalf("segment %q: %v", seg, err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatalf("segment %s: %v", b, err)
	}
	return m
}

// checkIssued decodes an issued token and checks its header and claims: the
// subject's claims carried over, and vakt's set for client and req.Audience
// at the injected clock's time. It returns the claims.
func (f *authorityFixture) checkIssued(t *testing.T, res *Response, req Request, client, idp string) map[string]any {
	t.Helper()
	if res.IssuedTokenType != TokenTypeAccessToken || res.TokenType != "Bearer" || res.ExpiresIn != int64(issuedLifetime/time.Second) {
		t.Fatalf("response %+v", res)
	}
	parts := strings.Split(res.AccessToken, ".")
	if len(parts) != 3 {
		t.Fatalf("issued token %q is not a compact JWS", res.AccessToken)
	}
	hdr := decodeSegment(t, parts[0])
	if want := map[string]any{"typ": "at+jwt", "alg": f.signing.Alg, "kid": f.signing.ID}; !reflect.DeepEqual(hdr, want) {
		t.Fatalf("header %v, want %v", hdr, want)
	}
	c := decodeSegment(t, parts[1])
	now := f.clock.Now().Unix()
	num := func(sec int64) json.Number { return json.Number(fmt.Sprint(sec)) }
	want := map[string]any{
		"iss": authorityIssuer, "aud": req.Audience[0], "client_id": client, "idp": idp, "sub": "user-1",
		"iat": num(now), "nbf": num(now), "exp": num(now + int64(issuedLifetime/time.Second)),
		// the subject's own claims, carried over
		"pid": "12345678901", "acr": "idporten-loa-high", "amr": []any{"BankID"}, "sid": "session-1",
	}
	for name, w := range want {
		if !reflect.DeepEqual(c[name], w) {
			t.Errorf("%s = %#v, want %#v", name, c[name], w)
		}
	}
	jti, _ := c["jti"].(string)
	if jti == "" || jti == "subject-jti" || f.issued[jti] {
		t.Errorf("jti %q: new and unique for every token", c["jti"])
	}
	f.issued[jti] = true
	// act is checked by the rows that make a chain.
	if extra := slices.DeleteFunc(slices.Sorted(maps.Keys(c)), func(n string) bool { _, ok := want[n]; return ok || n == "jti" || n == "act" }); len(extra) > 0 {
		t.Errorf("unexpected claims %v in %v", extra, c)
	}
	// vakt's own keys verify it, for the target.
	vc, err := f.subjects.Validate(context.Background(), ownProviderName, res.AccessToken)
	if err != nil {
		t.Fatalf("issued token does not verify with vakt's keys: %v", err)
	}
	if !slices.Equal(vc.Audience(), req.Audience) {
		t.Fatalf("verified audience %v", vc.Audience())
	}
	if t.Failed() {
		t.FailNow()
	}
	return c
}

// hs256 is an assertion for clientA MACed with its public key: the
// algorithm-confusion attack on a verifier that trusts the header's alg.
func (f *authorityFixture) hs256(t *testing.T) string {
	t.Helper()
	now := f.clock.Now()
	pub, err := x509.MarshalPKIXPublicKey(f.keys[clientA].Public())
	if err != nil {
		t.Fatal(err)
	}
	input := idptest.Segment(t, map[string]any{"alg": "HS256", "kid": f.keys[clientA].ID, "typ": "JWT"}) + "." +
		idptest.Segment(t, map[string]any{
			"iss": clientA, "sub": clientA, "aud": authorityIssuer + "/token", "jti": "hs256",
			"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
		})
	mac := hmac.New(sha256.New, pub)
	mac.Write([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// TestAuthority is the token exchange engine from request to token or
// refusal: the refusal's Reason and its exact public Description, or the
// issued token's header and claims.
func TestAuthority(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	ctx := context.Background()
	now := f.clock.Now()
	withAssertion := func(client string, edit func(h, c map[string]any)) func(*testing.T, *Request) {
		return func(t *testing.T, r *Request) { r.ClientAssertion = f.assertion(t, client, edit) }
	}
	withSubject := func(edit func(c map[string]any)) func(*testing.T, *Request) {
		return func(t *testing.T, r *Request) { r.SubjectToken = f.subject(t, edit) }
	}
	// A token vakt issued to clientA: clientRemote's exchange for clientA.
	issuedToClientA := func(t *testing.T) string {
		first := f.mustExchange(t, f.request(t, func(t *testing.T, r *Request) {
			r.ClientAssertion = f.assertion(t, clientRemote, nil)
			r.Audience = []string{clientA}
		}))
		f.checkIssued(t, first, Request{Audience: []string{clientA}}, clientRemote, f.idp.URL)
		return first.AccessToken
	}
	const (
		malformed = "client assertion is invalid: token is malformed"
		// One answer for an unknown client, a client without keys, an
		// unknown kid, a bad signature and an algorithm not allowed.
		authFailed     = "client authentication failed"
		notAllowed     = authFailed
		badAudience    = "client assertion is invalid: token audience is invalid"
		notYetValid    = "client assertion is invalid: token is not valid yet"
		tooLong        = "client assertion is invalid: exp must be at most 120 seconds after iat and now"
		jtiRequired    = "client assertion is invalid: jti is required"
		clientUnknown  = authFailed
		targetInvalid  = "token exchange audience is invalid"
		assertionsKeys = "the keys to verify the client assertion are unavailable; try again later"
		subjectsKeys   = "the keys to verify the subject_token are unavailable; try again later"
	)

	tests := []struct {
		name   string
		edit   func(t *testing.T, r *Request)
		reason authz.Reason // ReasonNone: a token
		desc   string       // exact
		// On success: the issued token's client_id (clientA when "") and
		// idp (the identity provider's issuer when "").
		client, idp string
		// On an outage: what the cause, for the log, names.
		cause func() string
	}{
		// Tokens.
		{name: "valid, assertion aud is the token endpoint"},
		{name: "assertion aud is the issuer", edit: withAssertion(clientA, func(h, c map[string]any) { c["aud"] = authorityIssuer })},
		{name: "assertion aud is an array of the token endpoint alone", edit: withAssertion(clientA, func(h, c map[string]any) {
			c["aud"] = []string{authorityIssuer + "/token"}
		})},
		{name: "assertion without kid, the client has one key", edit: withAssertion(clientA, func(h, c map[string]any) { delete(h, "kid") })},
		{name: "assertion exp exactly 120s after iat", edit: withAssertion(clientA, func(h, c map[string]any) {
			c["exp"] = now.Add(MaxAssertionLifetime).Unix()
		})},
		{name: "assertion expired 5s ago, within the leeway", edit: withAssertion(clientA, func(h, c map[string]any) {
			c["iat"], c["nbf"], c["exp"] = now.Add(-time.Minute).Unix(), now.Add(-time.Minute).Unix(), now.Add(-5*time.Second).Unix()
		})},
		{name: "client keys from a jwksUri (EdDSA)", edit: withAssertion(clientRemote, nil), client: clientRemote},
		{name: "a jti another client used", edit: func(t *testing.T, r *Request) {
			same := func(h, c map[string]any) { c["jti"] = "shared-jti" }
			f.mustExchange(t, f.request(t, withAssertion(clientA, same)))
			r.ClientAssertion = f.assertion(t, clientRemote, same)
		}, client: clientRemote},
		{name: "a refused request does not spend the assertion", edit: func(t *testing.T, r *Request) {
			bad := *r
			bad.Audience = nil
			res, err := f.a.Exchange(ctx, bad)
			if e := refusal(t, res, err); e.Reason() != authz.ReasonRequestInvalid {
				t.Fatalf("without audience: %v", e)
			}
		}},
		// A chain: a token vakt issued to this client (for its own caller,
		// clientRemote) is exchanged by it; idp stays the original login's.
		{name: "vakt's token issued to this client (a chain)", edit: func(t *testing.T, r *Request) {
			r.SubjectToken = issuedToClientA(t)
		}},

		// The request.
		{"no grant_type", func(t *testing.T, r *Request) { r.GrantType = "" }, authz.ReasonRequestInvalid, "grant_type is required", "", "", nil},
		{"another grant_type", func(t *testing.T, r *Request) { r.GrantType = "client_credentials" }, authz.ReasonGrantTypeUnsupported,
			"grant_type must be urn:ietf:params:oauth:grant-type:token-exchange", "", "", nil},
		{"another client_assertion_type", func(t *testing.T, r *Request) {
			r.ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
		}, authz.ReasonClientAuthentication, "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "", "", nil},
		{"no client_assertion_type", func(t *testing.T, r *Request) { r.ClientAssertionType = "" }, authz.ReasonClientAuthentication,
			"client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "", "", nil},
		{"no client_assertion", func(t *testing.T, r *Request) { r.ClientAssertion = "" }, authz.ReasonClientAuthentication, "client_assertion is required", "", "", nil},
		{"another subject_token_type", func(t *testing.T, r *Request) { r.SubjectTokenType = "urn:ietf:params:oauth:token-type:id_token" }, authz.ReasonRequestInvalid,
			"subject_token_type must be urn:ietf:params:oauth:token-type:jwt or urn:ietf:params:oauth:token-type:access_token", "", "", nil},
		{"no subject_token", func(t *testing.T, r *Request) { r.SubjectToken = "" }, authz.ReasonRequestInvalid, "subject_token is required", "", "", nil},
		{"no audience", func(t *testing.T, r *Request) { r.Audience = nil }, authz.ReasonRequestInvalid, "audience is required", "", "", nil},

		// The client assertion.
		{"assertion garbage", func(t *testing.T, r *Request) { r.ClientAssertion = "garbage" }, authz.ReasonAssertionInvalid, malformed, "", "", nil},
		{"unknown client", withAssertion("dev:team-x:nobody", nil), authz.ReasonClientUnknown, clientUnknown, "", "", nil},
		{"client registered without keys", withAssertion(clientNoKeys, nil), authz.ReasonClientUnknown, clientUnknown, "", "", nil},
		{"sub is not iss", withAssertion(clientA, func(h, c map[string]any) { c["sub"] = clientDenied }), authz.ReasonAssertionInvalid,
			"client assertion is invalid: sub must equal iss", "", "", nil},
		{"no sub", withAssertion(clientA, func(h, c map[string]any) { delete(c, "sub") }), authz.ReasonAssertionInvalid,
			"client assertion is invalid: sub must equal iss", "", "", nil},
		{"aud an array of two", withAssertion(clientA, func(h, c map[string]any) {
			c["aud"] = []string{authorityIssuer + "/token", "https://other.example"}
		}), authz.ReasonAssertionInvalid, "client assertion is invalid: aud must be the token endpoint alone", "", "", nil},
		{"aud elsewhere", withAssertion(clientA, func(h, c map[string]any) { c["aud"] = "https://tokenx.example/token" }),
			authz.ReasonAssertionInvalid, badAudience, "", "", nil},
		{"no aud", withAssertion(clientA, func(h, c map[string]any) { delete(c, "aud") }), authz.ReasonAssertionInvalid, badAudience, "", "", nil},
		{"no iat", withAssertion(clientA, func(h, c map[string]any) { delete(c, "iat") }), authz.ReasonAssertionInvalid,
			"client assertion is invalid: iat is required", "", "", nil},
		{"iat in the future", withAssertion(clientA, func(h, c map[string]any) { c["iat"] = now.Add(time.Minute).Unix() }),
			authz.ReasonAssertionInvalid, notYetValid, "", "", nil},
		{"nbf in the future", withAssertion(clientA, func(h, c map[string]any) { c["nbf"] = now.Add(time.Minute).Unix() }),
			authz.ReasonAssertionInvalid, notYetValid, "", "", nil},
		{"exp 121s after iat", withAssertion(clientA, func(h, c map[string]any) { c["exp"] = now.Add(MaxAssertionLifetime + time.Second).Unix() }),
			authz.ReasonAssertionInvalid, tooLong, "", "", nil},
		{"exp far after an old iat", withAssertion(clientA, func(h, c map[string]any) {
			c["iat"], c["nbf"], c["exp"] = now.Add(-100*time.Second).Unix(), now.Add(-100*time.Second).Unix(), now.Add(30*time.Second).Unix()
		}), authz.ReasonAssertionInvalid, tooLong, "", "", nil},
		{"no exp", withAssertion(clientA, func(h, c map[string]any) { delete(c, "exp") }), authz.ReasonAssertionInvalid,
			"client assertion is invalid: token claim is invalid", "", "", nil},
		{"expired", withAssertion(clientA, func(h, c map[string]any) {
			c["iat"], c["nbf"], c["exp"] = now.Add(-time.Minute).Unix(), now.Add(-time.Minute).Unix(), now.Add(-11*time.Second).Unix()
		}), authz.ReasonAssertionInvalid, "client assertion is invalid: token is expired", "", "", nil},
		{"no jti", withAssertion(clientA, func(h, c map[string]any) { delete(c, "jti") }), authz.ReasonAssertionInvalid, jtiRequired, "", "", nil},
		{"empty jti", withAssertion(clientA, func(h, c map[string]any) { c["jti"] = "" }), authz.ReasonAssertionInvalid, jtiRequired, "", "", nil},
		{"jti a number", withAssertion(clientA, func(h, c map[string]any) { c["jti"] = 42 }), authz.ReasonAssertionInvalid, jtiRequired, "", "", nil},
		{"replayed jti", func(t *testing.T, r *Request) {
			once := f.assertion(t, clientA, nil)
			f.mustExchange(t, f.request(t, func(t *testing.T, r *Request) { r.ClientAssertion = once }))
			r.ClientAssertion = once
		}, authz.ReasonAssertionReplayed, "client assertion is invalid: jti has been used before", "", "", nil},
		{"signed by another client's key (kid unknown)", func(t *testing.T, r *Request) {
			r.ClientAssertion = f.assertionBy(t, f.keys[clientDenied], clientA, nil)
		}, authz.ReasonAssertionInvalid, authFailed, "", "", nil},
		{"signed by another key under the client's kid", func(t *testing.T, r *Request) {
			r.ClientAssertion = f.assertionBy(t, idptest.NewKey(t, f.keys[clientA].ID, "RS256"), clientA, nil)
		}, authz.ReasonAssertionInvalid, authFailed, "", "", nil},
		{"jwksUri client, kid not published", func(t *testing.T, r *Request) {
			r.ClientAssertion = f.assertionBy(t, idptest.NewKey(t, "unpublished", "EdDSA"), clientRemote, nil)
		}, authz.ReasonAssertionInvalid, authFailed, "", "", nil},
		{"HS256 keyed with the client's public key", func(t *testing.T, r *Request) { r.ClientAssertion = f.hs256(t) },
			authz.ReasonAssertionInvalid, notAllowed, "", "", nil},
		{"alg none", func(t *testing.T, r *Request) {
			r.ClientAssertion = idptest.Segment(t, `{"alg":"none"}`) + "." + idptest.Segment(t, map[string]any{
				"iss": clientA, "sub": clientA, "aud": authorityIssuer + "/token", "jti": "none", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
			}) + "."
		}, authz.ReasonAssertionInvalid, notAllowed, "", "", nil},
		{"RS384, not an assertion algorithm", func(t *testing.T, r *Request) {
			k := f.keys[clientA]
			r.ClientAssertion = idptest.Sign(t, k, "RS384", map[string]any{"alg": "RS384", "kid": k.ID}, map[string]any{
				"iss": clientA, "sub": clientA, "aud": authorityIssuer + "/token", "jti": "rs384", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
			})
		}, authz.ReasonAssertionInvalid, notAllowed, "", "", nil},
		{"client keys' jwksUri down", withAssertion(clientKeysDown, nil), authz.ReasonKeysUnavailable, assertionsKeys, "", "",
			func() string { return f.keysDown.JWKSURI() }},

		// The subject token.
		{"subject token expired", withSubject(func(c map[string]any) { c["exp"] = now.Add(-time.Hour).Unix() }),
			authz.ReasonSubjectTokenInvalid, "invalid subject_token: token is expired", "", "", nil},
		{"subject token of an unknown issuer", withSubject(func(c map[string]any) { c["iss"] = "https://evil.example" }),
			authz.ReasonSubjectTokenInvalid, "invalid subject_token: token issuer is not trusted", "", "", nil},
		{"subject token with a bad signature", func(t *testing.T, r *Request) {
			tok := f.subject(t, nil)
			r.SubjectToken = tok[:strings.LastIndexByte(tok, '.')+1] + strings.Repeat("A", 342)
		}, authz.ReasonSubjectTokenInvalid, "invalid subject_token: token signature is invalid", "", "", nil},
		{"subject token garbage", func(t *testing.T, r *Request) { r.SubjectToken = "garbage" },
			authz.ReasonSubjectTokenInvalid, "invalid subject_token: token is malformed", "", "", nil},
		{"vakt's token issued to another application", func(t *testing.T, r *Request) {
			r.SubjectToken = f.mustExchange(t, f.request(t, nil)).AccessToken // clientA's, for targetB
		}, authz.ReasonSubjectTokenInvalid, "invalid subject_token: token audience is invalid", "", "", nil},
		{"identity provider down before any keys were fetched", func(t *testing.T, r *Request) {
			k := f.idpDown.Key()
			r.SubjectToken = idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID}, map[string]any{
				"iss": f.idpDown.URL, "sub": "user-1", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
			})
		}, authz.ReasonKeysUnavailable, subjectsKeys, "", "", func() string { return f.idpDown.JWKSURI() }},

		// The target.
		{"unknown target", func(t *testing.T, r *Request) { r.Audience = []string{"dev:team-b:nobody"} }, authz.ReasonTargetUnknown, targetInvalid, "", "", nil},
		{"target does not allow the client", withAssertion(clientDenied, nil), authz.ReasonTargetDenied, targetInvalid, "", "", nil},
		{"target is the client itself", func(t *testing.T, r *Request) { r.Audience = []string{clientA} }, authz.ReasonTargetDenied, targetInvalid, "", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := f.request(t, tt.edit)
			res, err := f.a.Exchange(ctx, req)
			if tt.reason == authz.ReasonNone {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				f.checkIssued(t, res, req, cmp.Or(tt.client, clientA), cmp.Or(tt.idp, f.idp.URL))
				return
			}
			e := refusal(t, res, err)
			if e.Reason() != tt.reason || e.Description() != tt.desc {
				t.Fatalf("got %s %q, want %s %q (cause: %v)", e.Reason(), e.Description(), tt.reason, tt.desc, e.Err)
			}
			if e.Reason().Outage() != (tt.cause != nil) {
				t.Fatalf("%s: outage %v", e.Reason(), e.Reason().Outage())
			}
			if tt.cause != nil {
				checkOutage(t, e, tt.cause())
			}
		})
	}
	if n := f.idpDown.JWKSRequests(); n == 0 {
		t.Error("the identity provider that is down was never asked for its keys")
	}
}

// A replay store that cannot answer is an outage, not a refusal: with Redis
// (a real redis-server, stopped under the Authority) and with an in-memory
// store that is full of unexpired ids.
func TestAuthorityReplayStoreDown(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		addr := redistest.Start(t) // skips without redis-server, except in CI
		var rr *RedisReplay
		f := newAuthorityFixture(t, func(now func() time.Time) ReplayStore {
			rr = NewRedisReplay(RedisOptions{Address: addr}, now)
			return rr
		})
		defer rr.Close()
		ctx := context.Background()
		once := f.assertion(t, clientA, nil)
		first := f.request(t, func(t *testing.T, r *Request) { r.ClientAssertion = once })
		f.checkIssued(t, f.mustExchange(t, first), first, clientA, f.idp.URL)
		res, err := f.a.Exchange(ctx, first)
		if e := refusal(t, res, err); e.Reason() != authz.ReasonAssertionReplayed {
			t.Fatalf("replay through Redis: %v", e)
		}

		c := redis.NewClient(&redis.Options{Addr: addr})
		_ = c.Shutdown(ctx).Err() // the server goes; the error is its goodbye
		c.Close()
		start := time.Now()
		res, err = f.a.Exchange(ctx, f.request(t, nil))
		e := refusal(t, res, err)
		if e.Reason() != authz.ReasonReplayUnavailable || e.Description() != "replay protection is unavailable; try again later" {
			t.Fatalf("with Redis down: %s %q (cause %v)", e.Reason(), e.Description(), e.Err)
		}
		checkOutage(t, e, "redis")
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("took %v to refuse", d)
		}
	})
	t.Run("memory full", func(t *testing.T) {
		f := newAuthorityFixture(t, func(now func() time.Time) ReplayStore {
			return NewMemoryReplay(MemoryReplayConfig{MaxEntries: 1, Now: now})
		})
		f.mustExchange(t, f.request(t, nil))
		res, err := f.a.Exchange(context.Background(), f.request(t, nil))
		e := refusal(t, res, err)
		if e.Reason() != authz.ReasonReplayUnavailable || e.Description() != "replay protection is unavailable; try again later" || !errors.Is(e, ErrReplayStoreFull) {
			t.Fatalf("full store: %s %q (cause %v)", e.Reason(), e.Description(), e.Err)
		}
		checkOutage(t, e, ErrReplayStoreFull.Error())
	})
}
