package exchange

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/authz"
)

// RFC 9068 and RFC 8693 §4: the token vakt mints carries the subject's
// identity, never its protocol claims: no cnf (a Bearer token is bound to
// no key), no foreign act, may_act, azp or typ, one scope claim as a
// space-separated string, and sub always.
func TestMintedTokenClaims(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	req := f.request(t, func(t *testing.T, r *Request) {
		r.SubjectToken = f.subject(t, func(c map[string]any) {
			c["cnf"] = map[string]any{"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}
			c["act"] = map[string]any{"sub": "someone-else"}
			c["may_act"] = map[string]any{"sub": "dev:team-x:other"}
			c["azp"] = "dev:team-a:app-2"
			c["scope"] = []any{"read:users", "write:users"}
			c["scp"] = "other"
			c["permissions"] = []any{"p"}
			c["typ"] = "Bearer"
			c["nonce"] = "n"
		})
	})
	claims := decodeIssued(t, f, req)
	for _, name := range []string{"cnf", "act", "may_act", "azp", "scp", "permissions", "typ", "nonce"} {
		if v, ok := claims[name]; ok {
			t.Errorf("%s = %v was copied", name, v)
		}
	}
	if claims["scope"] != "read:users write:users other p" {
		t.Errorf("scope %#v, want the subject's scopes as one string", claims["scope"])
	}

	// No sub: refused, not minted without one.
	req = f.request(t, func(t *testing.T, r *Request) {
		r.SubjectToken = f.subject(t, func(c map[string]any) { delete(c, "sub") })
	})
	if e := refused(t, f, req); e.Reason() != authz.ReasonSubjectTokenInvalid || e.Description() != "invalid subject_token: sub is required" {
		t.Fatalf("no sub: %s %q", e.Reason(), e.Description())
	}
}

// decodeIssued exchanges req (with a fresh assertion) and returns the
// issued token's claims.
func decodeIssued(t *testing.T, f *authorityFixture, req Request) map[string]any {
	t.Helper()
	req.ClientAssertion = f.assertion(t, clientA, nil)
	res := f.mustExchange(t, req)
	return decodeSegment(t, strings.Split(res.AccessToken, ".")[1])
}

// An issued token never outlives the token it was exchanged for, so that
// no chain or cycle of exchanges keeps a session alive.
func TestMintedTokenLifetime(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	soon := f.clock.Now().Add(3 * time.Second)
	req := f.request(t, func(t *testing.T, r *Request) {
		r.SubjectToken = f.subject(t, func(c map[string]any) { c["exp"] = soon.Unix() })
	})
	res := f.mustExchange(t, req)
	if res.ExpiresIn != 3 {
		t.Fatalf("expires_in %d, want the subject token's 3", res.ExpiresIn)
	}
	claims := decodeSegment(t, strings.Split(res.AccessToken, ".")[1])
	if fmt.Sprint(claims["exp"]) != fmt.Sprint(soon.Unix()) {
		t.Fatalf("exp %v, want %d", claims["exp"], soon.Unix())
	}
	// A subject token whose time is up (within its provider's leeway) makes
	// no token at all.
	req = f.request(t, func(t *testing.T, r *Request) {
		r.SubjectToken = f.subject(t, func(c map[string]any) { c["exp"] = f.clock.Now().Unix() })
	})
	if e := refused(t, f, req); e.Reason() != authz.ReasonSubjectTokenInvalid {
		t.Fatalf("a subject token at its exp: %s", e.Reason())
	}
}

// RFC 8693 §4.1: a token vakt issued to one client, exchanged by it, makes
// a token whose act names that client, and its act nested within.
func TestMintedTokenRecordsDelegation(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	// clientRemote exchanges the user's token for clientA...
	first := f.mustExchange(t, f.request(t, func(t *testing.T, r *Request) {
		r.ClientAssertion = f.assertion(t, clientRemote, nil)
		r.Audience = []string{clientA}
	}))
	// ...and clientA exchanges that for targetB.
	req := f.request(t, func(t *testing.T, r *Request) { r.SubjectToken = first.AccessToken })
	res := f.mustExchange(t, req)
	claims := decodeSegment(t, strings.Split(res.AccessToken, ".")[1])
	want := map[string]any{"sub": clientRemote}
	if !reflect.DeepEqual(claims["act"], want) {
		t.Fatalf("act %#v, want %#v", claims["act"], want)
	}
	if claims["client_id"] != clientA {
		t.Fatalf("client_id %v", claims["client_id"])
	}
}

// Request parameters are honoured or refused, never ignored (RFC 8693
// §2.1, RFC 8707, RFC 7521 §4.2, RFC 6749 §5.2).
func TestRequestParameters(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	scoped := func(t *testing.T, r *Request) {
		r.SubjectToken = f.subject(t, func(c map[string]any) { c["scope"] = "read:users write:users" })
	}
	for _, tt := range []struct {
		name   string
		edit   func(t *testing.T, r *Request)
		reason authz.Reason // ReasonNone: a token
		desc   string
		scope  string // the response's scope, on success
	}{
		{name: "actor_token", edit: func(t *testing.T, r *Request) { r.ActorToken = "x" }, reason: authz.ReasonRequestInvalid, desc: "actor tokens are not supported"},
		{name: "actor_token_type alone", edit: func(t *testing.T, r *Request) { r.ActorTokenType = TokenTypeJWT }, reason: authz.ReasonRequestInvalid, desc: "actor tokens are not supported"},
		{name: "requested_token_type access_token", edit: func(t *testing.T, r *Request) { r.RequestedTokenType = TokenTypeAccessToken }},
		{name: "requested_token_type jwt", edit: func(t *testing.T, r *Request) { r.RequestedTokenType = TokenTypeJWT }},
		{name: "requested_token_type id_token", edit: func(t *testing.T, r *Request) { r.RequestedTokenType = "urn:ietf:params:oauth:token-type:id_token" },
			reason: authz.ReasonRequestInvalid, desc: "requested_token_type must be urn:ietf:params:oauth:token-type:access_token or urn:ietf:params:oauth:token-type:jwt"},
		{name: "scope: a subset", edit: func(t *testing.T, r *Request) { scoped(t, r); r.Scope = "read:users" }},
		{name: "scope: not held", edit: func(t *testing.T, r *Request) { scoped(t, r); r.Scope = "read:users admin" }, reason: authz.ReasonScopeInvalid},
		{name: "scope: none asked, all given", edit: scoped, scope: "read:users write:users"},
		{name: "scope: asked twice", edit: func(t *testing.T, r *Request) { scoped(t, r); r.Scope = "read:users read:users" }, scope: ""},
		{name: "client_id: the assertion's", edit: func(t *testing.T, r *Request) { r.ClientID = clientA }},
		{name: "client_id: another", edit: func(t *testing.T, r *Request) { r.ClientID = clientRemote }, reason: authz.ReasonClientMismatch},
		{name: "client_secret", edit: func(t *testing.T, r *Request) { r.ClientSecret = "s3cret" }, reason: authz.ReasonClientAuthentication},
		{name: "no client authentication", edit: func(t *testing.T, r *Request) { r.ClientAssertion, r.ClientAssertionType = "", "" },
			reason: authz.ReasonClientAuthentication, desc: "client authentication is required: private_key_jwt (RFC 7523)"},
		{name: "audience twice, one target", edit: func(t *testing.T, r *Request) { r.Audience = []string{targetB, targetB} }},
		{name: "audience twice, two targets", edit: func(t *testing.T, r *Request) {
			r.ClientAssertion = f.assertion(t, clientRemote, nil)
			r.Audience = []string{targetB, clientA}
		}, reason: authz.ReasonTargetAmbiguous},
		{name: "audience twice, two targets, one not callable", edit: func(t *testing.T, r *Request) { r.Audience = []string{targetB, clientRemote} }, reason: authz.ReasonTargetDenied},
		{name: "resource of the target's host", edit: func(t *testing.T, r *Request) {
			r.Audience, r.Resource = nil, []string{"https://app-b.example.com/api"}
		}},
		{name: "resource configured for the target", edit: func(t *testing.T, r *Request) { r.Audience, r.Resource = nil, []string{"urn:example:app-b"} }},
		{name: "resource and audience agree", edit: func(t *testing.T, r *Request) { r.Resource = []string{"https://app-b.example.com/"} }},
		// Two targets are ambiguous only to a client that may call both: to
		// another, the answer is the one a target it may not call gets, so
		// that it learns nothing of which resource URIs exist.
		{name: "resource and audience disagree", edit: func(t *testing.T, r *Request) {
			r.ClientAssertion = f.assertion(t, clientRemote, nil)
			r.Resource = []string{"https://app-1.example.com/"}
		}, reason: authz.ReasonTargetAmbiguous},
		{name: "resource and audience disagree, one not callable", edit: func(t *testing.T, r *Request) { r.Resource = []string{"https://app-1.example.com/"} }, reason: authz.ReasonTargetDenied},
		{name: "resource of no application", edit: func(t *testing.T, r *Request) { r.Audience, r.Resource = nil, []string{"https://nowhere.example/"} }, reason: authz.ReasonTargetUnknown},
		{name: "resource not absolute", edit: func(t *testing.T, r *Request) { r.Audience, r.Resource = nil, []string{"/api"} }, reason: authz.ReasonTargetUnknown,
			desc: "resource must be an absolute URI without a fragment"},
		{name: "resource with a fragment", edit: func(t *testing.T, r *Request) { r.Audience, r.Resource = nil, []string{"https://app-b.example.com/#x"} }, reason: authz.ReasonTargetUnknown},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := f.request(t, tt.edit)
			res, err := f.a.Exchange(t.Context(), req)
			if tt.reason == authz.ReasonNone {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if res.Scope != tt.scope {
					t.Fatalf("response scope %q, want %q", res.Scope, tt.scope)
				}
				return
			}
			e := refusal(t, res, err)
			if e.Reason() != tt.reason || (tt.desc != "" && e.Description() != tt.desc) {
				t.Fatalf("got %s %q, want %s %q", e.Reason(), e.Description(), tt.reason, tt.desc)
			}
		})
	}
}

// A subject token's scope that is no RFC 6749 scope-token ("orders:read
// admin" as one array element) is never written into the issued token,
// where it would read as two scopes.
func TestInvalidScopeIsNotLaundered(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	for _, scp := range []any{[]any{"orders:read admin"}, "read:users\u00a0admin", []any{"a\tb"}} {
		req := f.request(t, func(t *testing.T, r *Request) {
			r.SubjectToken = f.subject(t, func(c map[string]any) { c["scp"] = scp })
		})
		if e := refused(t, f, req); e.Reason() != authz.ReasonSubjectTokenInvalid {
			t.Fatalf("scp %q: %s", scp, e.Reason())
		}
	}
}

// Resource URIs are compared in canonical form: the case of scheme and
// host, the default port and an empty path do not make another resource;
// userinfo names none.
func TestResourceCanonicalForm(t *testing.T) {
	f := newAuthorityFixture(t, nil)
	for _, r := range []string{"HTTPS://APP-B.example.com/api", "https://app-b.example.com:443/api", "https://app-b.example.com"} {
		if _, err := f.a.Exchange(t.Context(), f.request(t, func(t *testing.T, req *Request) { req.Audience, req.Resource = nil, []string{r} })); err != nil {
			t.Errorf("%s: %v", r, err)
		}
	}
	for _, r := range []string{"https://x@app-b.example.com/", "ftp://app-b.example.com/"} {
		req := f.request(t, func(t *testing.T, req *Request) { req.Audience, req.Resource = nil, []string{r} })
		if e := refused(t, f, req); e.Reason() != authz.ReasonTargetUnknown {
			t.Errorf("%s: %s", r, e.Reason())
		}
	}
}
