package server

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/exchange"
)

// RFC 8414 §3: an issuer with a path has its metadata at the well-known
// path with the issuer's path appended, and its endpoints under it.
func TestIssuerWithPath(t *testing.T) {
	e := newExchangeEnvAt(t, nil, "/tenant")
	base := strings.TrimSuffix(e.issuer, "/tenant")
	get := func(path string) (int, map[string]any) {
		t.Helper()
		resp, err := testHTTP.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	st, meta := get("/.well-known/oauth-authorization-server/tenant")
	if st != 200 || meta["issuer"] != e.issuer || meta["token_endpoint"] != e.issuer+"/token" || meta["jwks_uri"] != e.issuer+"/jwks" {
		t.Fatalf("metadata: %d %v", st, meta)
	}
	if st, jwks := get("/tenant/jwks"); st != 200 || jwks["keys"] == nil {
		t.Fatalf("jwks: %d %v", st, jwks)
	}
	for _, p := range []string{"/.well-known/oauth-authorization-server", "/jwks", "/token", "/tenant/.well-known/oauth-authorization-server"} {
		if st, _ := get(p); st != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, st)
		}
	}
	// The token endpoint works where the metadata says, for the assertion
	// audience it names.
	if got := e.viaHTTP(t, e.request(t, nil)); got.code != "" {
		t.Fatalf("exchange at %s/token: %s %s", e.issuer, got.code, got.description)
	}
}

// The token endpoint's client authentication errors (RFC 6749 §5.2): a
// client that used the Authorization header gets 401 and a challenge for
// its scheme; one that sent no assertion, a secret or another assertion
// type gets invalid_client; every 401 carries WWW-Authenticate.
func TestTokenEndpointClientAuthentication(t *testing.T) {
	e := newExchangeEnv(t, nil)
	valid := func() url.Values {
		r := e.request(t, nil)
		return url.Values{
			"grant_type": {r.GrantType}, "client_assertion_type": {r.ClientAssertionType}, "client_assertion": {r.ClientAssertion},
			"subject_token_type": {r.SubjectTokenType}, "subject_token": {r.SubjectToken}, "audience": r.Audience,
		}
	}
	post := func(form url.Values, authorization string) (*http.Response, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, e.issuer+"/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		resp, err := testHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp, m
	}
	for _, tt := range []struct {
		name, authorization, challenge string
		edit                           func(url.Values)
		status                         int
		code                           string
	}{
		{name: "client_secret_basic", authorization: "Basic ZGV2OnNlY3JldA==", challenge: `Basic realm="` + e.issuer + `"`, status: 401, code: "invalid_client"},
		{name: "a bearer token", authorization: "Bearer abc", challenge: `Bearer realm="` + e.issuer + `"`, status: 401, code: "invalid_client"},
		{name: "client_secret_post", edit: func(f url.Values) {
			f.Del("client_assertion")
			f.Del("client_assertion_type")
			f.Set("client_id", app1)
			f.Set("client_secret", "s")
		}, status: 400, code: "invalid_client"},
		{name: "no client authentication", edit: func(f url.Values) { f.Del("client_assertion"); f.Del("client_assertion_type") }, status: 400, code: "invalid_client"},
		{name: "another assertion type", edit: func(f url.Values) {
			f.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
		}, status: 400, code: "invalid_client"},
		{name: "client_id of another client", edit: func(f url.Values) { f.Set("client_id", app3) }, status: 400, code: "invalid_client"},
		{name: "client_id of the assertion's", edit: func(f url.Values) { f.Set("client_id", app1) }, status: 200},
		{name: "an unknown parameter, repeated", edit: func(f url.Values) { f["x-unknown"] = []string{"a", "b"} }, status: 200},
		{name: "audience repeated, one target", edit: func(f url.Values) { f["audience"] = []string{appB, appB} }, status: 200},
		{name: "audience repeated, two targets", edit: func(f url.Values) { f["audience"] = []string{appB, app3} }, status: 400, code: "invalid_target"},
		{name: "scope repeated", edit: func(f url.Values) { f["scope"] = []string{"a", "b"} }, status: 400, code: "invalid_request"},
		{name: "actor_token", edit: func(f url.Values) { f.Set("actor_token", "x"); f.Set("actor_token_type", exchange.TokenTypeJWT) }, status: 400, code: "invalid_request"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			form := valid()
			if tt.edit != nil {
				tt.edit(form)
			}
			resp, m := post(form, tt.authorization)
			if resp.StatusCode != tt.status || (tt.code != "" && m["error"] != tt.code) {
				t.Fatalf("%d %v, want %d %s", resp.StatusCode, m, tt.status, tt.code)
			}
			if resp.StatusCode == 401 && resp.Header.Get("WWW-Authenticate") != tt.challenge {
				t.Fatalf("WWW-Authenticate %q, want %q", resp.Header.Get("WWW-Authenticate"), tt.challenge)
			}
			if resp.StatusCode == 200 && m["access_token"] == nil {
				t.Fatalf("no token: %v", m)
			}
		})
	}
}

// The response says the scope when it differs from the request's (RFC 8693
// §2.2.1), and a scope the subject token does not hold is invalid_scope.
func TestTokenEndpointScope(t *testing.T) {
	e := newExchangeEnv(t, nil)
	subject := e.idp.Token(with(e.idp.Claims(time.Now(), ""), "scope", "read:users write:users"))
	for _, tt := range []struct {
		scope, want, code string
	}{
		{"", "read:users write:users", ""},
		{"read:users", "", ""},
		{"admin", "", "invalid_scope"},
	} {
		r := e.request(t, func(r *exchange.Request) { r.SubjectToken = subject })
		form := url.Values{
			"grant_type": {r.GrantType}, "client_assertion_type": {r.ClientAssertionType}, "client_assertion": {r.ClientAssertion},
			"subject_token_type": {r.SubjectTokenType}, "subject_token": {r.SubjectToken}, "audience": r.Audience,
		}
		if tt.scope != "" {
			form.Set("scope", tt.scope)
		}
		resp, err := testHTTP.PostForm(e.issuer+"/token", form)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if tt.code != "" {
			if m["error"] != tt.code {
				t.Fatalf("scope %q: %v", tt.scope, m)
			}
			continue
		}
		if got, _ := m["scope"].(string); got != tt.want {
			t.Fatalf("scope %q: response scope %q, want %q (%v)", tt.scope, got, tt.want, m)
		}
	}
}

// The NAIS contract: every introspection answer has active, a malformed
// request too (keeping its 4xx status), with exactly active and error.
func TestIntrospectAlwaysHasActive(t *testing.T) {
	e := newEnv(t)
	for _, tt := range []struct {
		name, ct, body string
		status         int
	}{
		{"no token", "application/json", `{"identity_provider":"idporten"}`, 400},
		{"no provider", "application/x-www-form-urlencoded", "token=x", 400},
		{"not JSON", "application/json", `{`, 400},
		{"a member twice", "application/json", `{"token":"a","token":"b"}`, 400},
		{"another media type", "text/plain", "x", 415},
		{"too large", "application/json", `{"token":"` + strings.Repeat("a", 65<<10) + `"}`, 413},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := testHTTP.Post(e.http.URL+"/api/v1/introspect", tt.ct, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			msg, _ := m["error"].(string)
			if resp.StatusCode != tt.status || m["active"] != false || msg == "" || len(m) != 2 {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
		})
	}
}

// RFC 6750 §3.1: a request with another authentication scheme lacks a
// bearer token: 401 with a plain challenge and no error code.
func TestCheckOtherSchemeIsNoToken(t *testing.T) {
	e := newCheckEnv(t)
	res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Basic dXNlcjpwYXNz"}})
	d := res.GetDeniedResponse()
	if d == nil || d.GetStatus().GetCode() != 401 || headerMap(d.GetHeaders())["www-authenticate"] != `Bearer realm="`+appB+`"` {
		t.Fatalf("%v", res)
	}
}
