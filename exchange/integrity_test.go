package exchange

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/redistest"
)

// What the issued token says of the user's identity provider is true: an
// external token's own idp claim is not believed (any configured provider
// could otherwise pass as another), only a token vakt issued carries it on.
func TestIssuedIdpIsTheVerifyingProvider(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	forged := f.request(t, func(t *testing.T, r *Request) {
		r.SubjectToken = f.subject(t, func(c map[string]any) { c["idp"] = "https://idporten.no/" })
	})
	claims := f.checkIssued(t, f.mustExchange(t, forged), forged, clientA, f.idp.URL)
	if claims["idp"] != f.idp.URL {
		t.Fatalf("idp %v, want the verifying provider's issuer %s", claims["idp"], f.idp.URL)
	}
}

// RFC 8725 §3.11: a token vakt issued (typ at+jwt) is never taken for a
// client assertion, whatever its claims say.
func TestAccessTokenIsNoAssertion(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	for _, typ := range []string{"at+jwt", "AT+JWT", "application/at+jwt"} {
		req := f.request(t, func(t *testing.T, r *Request) {
			r.ClientAssertion = f.assertion(t, clientA, func(h, c map[string]any) { h["typ"] = typ })
		})
		e := refused(t, f, req)
		if e.Reason() != authz.ReasonAssertionInvalid || e.Description() != "client assertion is invalid: token type is not accepted here" {
			t.Fatalf("typ %s: %s %q", typ, e.Reason(), e.Description())
		}
	}
	// Without typ, or with JWT, an assertion is one.
	for _, typ := range []any{nil, "JWT"} {
		f.mustExchange(t, f.request(t, func(t *testing.T, r *Request) {
			r.ClientAssertion = f.assertion(t, clientA, func(h, c map[string]any) {
				if typ == nil {
					delete(h, "typ")
				} else {
					h["typ"] = typ
				}
			})
		}))
	}
}

// A refused exchange does not use the assertion up: its jti is recorded
// only once everything else has passed, so a client that retries with the
// same assertion after a refusal or an outage is not told it replayed.
func TestRefusalKeepsTheAssertion(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	assertion := f.assertion(t, clientA, nil)
	for _, bad := range []func(r *Request){
		func(r *Request) { r.Audience = []string{"dev:team-b:nobody"} },
		func(r *Request) { r.SubjectToken = "garbage" },
	} {
		req := f.request(t, func(t *testing.T, r *Request) { r.ClientAssertion = assertion })
		bad(&req)
		refused(t, f, req)
	}
	req := f.request(t, func(t *testing.T, r *Request) { r.ClientAssertion = assertion })
	f.mustExchange(t, req)
	e := refused(t, f, req)
	if e.Reason() != authz.ReasonAssertionReplayed {
		t.Fatalf("the second use: %s", e.Reason())
	}
}

// A prober learns nothing of which clients exist: an unknown client, a
// registered one without keys, an unknown kid and a bad signature get one
// answer, and what an assertion claims is checked only after its signature,
// so an expired, forged assertion for a registered client is answered like
// one for an unknown client. (BenchmarkRefusedAssertion shows the times.)
func TestClientProbesGetOneAnswer(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	forger := idptest.NewKey(t, "app-1-key", "RS256") // the client's kid, not its key
	expired := func(h, c map[string]any) { c["exp"] = f.clock.Now().Add(-time.Hour).Unix() }
	for name, assertion := range map[string]string{
		"unknown client":                  f.assertionBy(t, forger, "dev:team-x:nobody", nil),
		"unknown client, expired":         f.assertionBy(t, forger, "dev:team-x:nobody", expired),
		"registered, no keys":             f.assertionBy(t, forger, clientNoKeys, nil),
		"registered, unknown kid":         f.assertionBy(t, idptest.NewKey(t, "other", "RS256"), clientA, nil),
		"registered, forged":              f.assertionBy(t, forger, clientA, nil),
		"registered, forged and expired":  f.assertionBy(t, forger, clientA, expired),
		"registered, forged, wrong aud":   f.assertionBy(t, forger, clientA, func(h, c map[string]any) { c["aud"] = "x" }),
		"registered, forged, typ at+jwt ": f.assertionBy(t, forger, clientA, func(h, c map[string]any) { h["typ"] = "at+jwt" }),
	} {
		req := f.request(t, func(t *testing.T, r *Request) { r.ClientAssertion = assertion })
		e := refused(t, f, req)
		if e.Description() != "client authentication failed" {
			t.Errorf("%s: %s %q", name, e.Reason(), e.Description())
		}
	}
	// The client itself, signing properly, hears what is wrong.
	req := f.request(t, func(t *testing.T, r *Request) { r.ClientAssertion = f.assertion(t, clientA, expired) })
	if e := refused(t, f, req); !strings.HasSuffix(e.Description(), "token is expired") {
		t.Errorf("the client's own expired assertion: %q", e.Description())
	}
}

// BenchmarkRefusedAssertion times the refusals a prober could compare: an
// unknown client, an unknown kid and an algorithm the client's key does not
// have cost a decoy signature check, as a bad signature costs a real one.
// RS384 is no assertion algorithm: refused alike for every client.
func BenchmarkRefusedAssertion(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256", "RS384"} {
		key := idptest.NewKey(b, "k", alg)
		for _, c := range []struct{ name, client string }{
			{"unknown_client", "dev:team-x:nobody"},
			{"bad_signature", "dev:team-a:app-1"},
		} {
			b.Run(alg+"/"+c.name, func(b *testing.B) {
				benchRefusal(b, key, c.client)
			})
		}
	}
}

func benchRefusal(b *testing.B, forger *idptest.Key, client string) {
	const issuer = "https://vakt.example"
	alg := forger.Alg
	if alg == "RS384" {
		alg = "RS256" // the client's key is an RS256 key; the assertion says RS384
	}
	registered := idptest.NewKey(b, forger.ID, alg) // the client's real key: same kid
	idp := idptest.NewKey(b, "idp-1", "ES256")
	subjectProvider, _ := authz.NewProvider(authz.ProviderConfig{Name: "idporten", Issuer: "https://idporten.example/", Keys: staticKeys(b, idp)})
	subjects, _ := authz.NewValidator(authz.ValidatorConfig{Providers: []*authz.Provider{subjectProvider}})
	policy, _ := authz.NewPolicy([]authz.ApplicationPolicy{{ID: "dev:team-a:app-1"}})
	sk, _ := GenerateSigningKey("ES256")
	signer, _ := NewSigner(sk)
	a, err := NewAuthority(AuthorityConfig{
		Issuer: issuer, Subjects: subjects, OwnProvider: "tokenx",
		Clients: map[string]authz.KeySource{"dev:team-a:app-1": staticKeys(b, registered)},
		Policy:  policy, Signer: signer, Replay: NewMemoryReplay(MemoryReplayConfig{}), Logger: quietLog,
	})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	assertion := idptest.Sign(b, forger, forger.Alg, map[string]any{"alg": forger.Alg, "kid": forger.ID, "typ": "JWT"}, map[string]any{
		"iss": client, "sub": client, "aud": issuer + "/token", "jti": "j",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(100 * time.Second).Unix(),
	})
	req := Request{
		GrantType: GrantTypeTokenExchange, ClientAssertionType: ClientAssertionTypeJWT, ClientAssertion: assertion,
		SubjectTokenType: TokenTypeJWT, SubjectToken: "x.y.z", Audience: []string{"dev:team-b:app-b"},
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Exchange(ctx, req); err == nil {
			b.Fatal("a forged assertion was accepted")
		}
	}
}

func refused(t *testing.T, f *authorityFixture, req Request) *Error {
	t.Helper()
	res, err := f.a.Exchange(context.Background(), req)
	return refusal(t, res, err)
}

// A used assertion tells nothing more: replayed with another target or
// subject token, it is refused as replayed before those are looked at.
func TestUsedAssertionIsNoOracle(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	assertion := f.assertion(t, clientA, nil)
	f.mustExchange(t, f.request(t, func(t *testing.T, r *Request) { r.ClientAssertion = assertion }))
	for name, edit := range map[string]func(r *Request){
		"forbidden target":      func(r *Request) { r.Audience = []string{clientDenied} },
		"unknown target":        func(r *Request) { r.Audience = []string{"dev:team-x:nobody"} },
		"expired subject token": func(r *Request) { r.SubjectToken = "x.y.z" },
	} {
		req := f.request(t, func(t *testing.T, r *Request) { r.ClientAssertion = assertion })
		edit(&req)
		if e := refused(t, f, req); e.Reason() != authz.ReasonAssertionReplayed {
			t.Errorf("%s: %s", name, e.Reason())
		}
	}
}

// Release forgets a claimed id, in memory and in Redis.
func TestReplayRelease(t *testing.T) {
	ctx := context.Background()
	clock := idptest.NewClock(time.Now())
	stores := map[string]ReplayStore{"memory": NewMemoryReplay(MemoryReplayConfig{MaxEntries: 10, MaxPerClient: 1, Now: clock.Now})}
	if addr := redistest.Start(t); addr != "" {
		r := NewRedisReplay(RedisOptions{Address: addr, MaxPerClient: 1}, clock.Now)
		t.Cleanup(func() { r.Close() })
		stores["redis"] = r
	}
	for name, s := range stores {
		exp := clock.Now().Add(time.Minute)
		if ok, err := s.Claim(ctx, "c", "j", exp); !ok || err != nil {
			t.Fatalf("%s: claim %v %v", name, ok, err)
		}
		if err := s.Release(ctx, "c", "j"); err != nil {
			t.Fatalf("%s: release %v", name, err)
		}
		// Released: the id may be claimed again, and the client's share is free.
		if ok, err := s.Claim(ctx, "c", "j", exp); !ok || err != nil {
			t.Fatalf("%s: claim after release %v %v", name, ok, err)
		}
		if ok, _ := s.Claim(ctx, "c", "j", exp); ok {
			t.Fatalf("%s: a replay after the second claim", name)
		}
	}
}
