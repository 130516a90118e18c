package server

import (
	"context"
	"fmt"
	"google.golang.org/protobuf/proto"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vakt-dev/vakt/authz"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/idptest"
)

// integrityYAML adds to checkYAML an application that reads paths as servlet
// containers do (pathParameters: strip).
var integrityYAML = checkYAML + `  - name: legacy
    namespace: team-b
    pathParameters: strip
    routes:
      - {methods: [GET], path: /read, scopes: ["read:users"]}
      - {pathPrefix: /public/, public: true}
    accessPolicy:
      inbound:
        rules:
          - application: app-1
            namespace: team-a
`

const legacy = "dev-gcp:team-b:legacy"

// dynamicMetadata: false leaves the claims out of the allow answer.
func TestCheckWithoutDynamicMetadata(t *testing.T) {
	e := newIntegrityEnv(t)
	tok := e.own(app1, appB, "read:users")
	if res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + tok}}); res.GetDynamicMetadata() == nil {
		t.Fatal("no dynamic metadata by default")
	}
	e.load(strings.Replace(e.yaml, "    hosts: [app-b.example.com]\n", "    hosts: [app-b.example.com]\n    dynamicMetadata: false\n", 1))
	res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + tok}})
	if res.GetOkResponse() == nil || res.GetDynamicMetadata() != nil || len(res.GetOkResponse().GetHeaders()) == 0 {
		t.Fatalf("dynamicMetadata: false: %v", res)
	}
}

func newIntegrityEnv(t *testing.T) *cenv {
	e := newCheckEnv(t)
	e.yaml = strings.ReplaceAll(integrityYAML, "AUTH0", e.auth0.URL)
	e.load(e.yaml)
	return e
}

func denialStatus(res *authv3.CheckResponse) int {
	return int(res.GetDeniedResponse().GetStatus().GetCode())
}

// What Check tells an application of the identity provider is the provider
// that verified the token: an external token's own idp claim is not
// believed, or any configured provider could pass as another. vakt's own
// tokens carry the idp of the token they were exchanged for.
func TestCheckIdentityProviderIsTheVerifier(t *testing.T) {
	e := newIntegrityEnv(t)
	tok := e.auth0.Token(map[string]any{"iss": e.auth0.URL, "sub": "auth0|1", "aud": "https://api.example.com",
		"idp": "https://idporten.example/", "exp": time.Now().Add(time.Hour).Unix()})
	res := e.check(creq{app: "dev-gcp:team-b:api", path: "/x", headers: map[string]string{"authorization": "Bearer " + tok}})
	if got := headerMap(res.GetOkResponse().GetHeaders())[authz.HeaderIdentityProvider]; got != e.auth0.URL {
		t.Fatalf("external token: %s = %q, want the verifying provider %q", authz.HeaderIdentityProvider, got, e.auth0.URL)
	}
	// An external client id shaped like an application id names no caller:
	// the application is never told that app-1 calls.
	tok = e.auth0.Token(map[string]any{"iss": e.auth0.URL, "sub": "auth0|1", "aud": "https://api.example.com",
		"azp": app1, "client_id": app1, "exp": time.Now().Add(time.Hour).Unix()})
	res = e.check(creq{app: "dev-gcp:team-b:api", path: "/x", headers: map[string]string{"authorization": "Bearer " + tok}})
	if h := headerMap(res.GetOkResponse().GetHeaders()); res.GetOkResponse() == nil || h[authz.HeaderClientID] != "" {
		t.Fatalf("external client id: %v", res)
	}
	res = e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + e.own(app1, appB, "read:users")}})
	if got := headerMap(res.GetOkResponse().GetHeaders())[authz.HeaderIdentityProvider]; got != "https://idporten.example/" {
		t.Fatalf("vakt's own token: %q", got)
	}
}

// Paths as the upstream will read them: ';' (servlet path parameters),
// encoded controls and double encoding are refused, never matched to a
// public route; an application that asks reads ';' as servlet containers do.
func TestCheckPathsAsTheUpstreamReadsThem(t *testing.T) {
	e := newIntegrityEnv(t)
	for _, p := range []string{"/public/..;/read", "/public/%2e%2e%3b/read", "/public/..%00/read", "/public/%252e%252e/read", "/public/x%0d%0a", "/public/..;jsessionid=1/read"} {
		res := e.check(creq{app: appB, path: p})
		if res.GetOkResponse() != nil || denialStatus(res) != 400 {
			t.Errorf("%s: %v", p, res)
		}
	}
	// pathParameters: strip. "/public/..;/read" is "/read" to Tomcat, and
	// so to vakt: it needs a token.
	for _, tt := range []struct {
		path   string
		status int // 0: allowed
	}{
		{"/public/..;/read", 401},
		{"/read;jsessionid=abc", 401},
		{"/public/logo.png;v=2", 0},
		{"/public/%2e%2e%3b/read", 400},
	} {
		res := e.check(creq{app: legacy, path: tt.path})
		if (tt.status == 0) != (res.GetOkResponse() != nil) || (tt.status != 0 && denialStatus(res) != tt.status) {
			t.Errorf("strip %s: %v, want %d", tt.path, res, tt.status)
		}
	}
}

// No header that an upstream would read as one of vakt's reaches it from a
// client: x_vakt_* and any case are removed, on public routes too, and
// headers in header_map (Envoy's encode_raw_headers) count as much as the
// headers map.
func TestCheckRemovesEveryIdentityLookalike(t *testing.T) {
	e := newIntegrityEnv(t)
	tok := e.own(app1, appB, "read:users")
	spoofed := map[string]string{
		"authorization": "Bearer " + tok, "x_vakt_subject": "admin", "x_vakt_client_id": app1, "X-Vakt-Role": "root", "x-vakt_pid": "0",
		"x.vakt.scope": "admin", // PHP reads it as HTTP_X_VAKT_SCOPE
	}
	res := e.check(creq{app: appB, path: "/read", headers: spoofed})
	ok := res.GetOkResponse()
	if ok == nil {
		t.Fatalf("denied: %v", res)
	}
	want := []string{"X-Vakt-Role", "x-vakt_pid", "x.vakt.scope", "x_vakt_client_id", "x_vakt_subject"}
	if !slices.Equal(ok.GetHeadersToRemove(), want) {
		t.Fatalf("remove %v, want %v", ok.GetHeadersToRemove(), want)
	}
	res = e.check(creq{app: appB, path: "/public/x", headers: map[string]string{"x_vakt_subject": "admin"}})
	if !slices.Equal(res.GetOkResponse().GetHeadersToRemove(), []string{"x_vakt_subject"}) {
		t.Fatalf("public route: %v", res)
	}

	// header_map, as Envoy sends it with encode_raw_headers: the token is
	// read from it, and spoofed headers in it are removed.
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		ContextExtensions: map[string]string{ContextExtensionApp: appB},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/read",
			HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				{Key: "authorization", RawValue: []byte("Bearer " + tok)},
				{Key: "x-vakt-role", RawValue: []byte("root")},
				{Key: "x-vakt-subject", RawValue: []byte("admin")},
			}},
		}},
	}}
	cr, err := e.client.Check(context.Background(), req)
	if err != nil || cr.GetOkResponse() == nil {
		t.Fatalf("header_map: %v %v", cr, err)
	}
	if !slices.Equal(cr.GetOkResponse().GetHeadersToRemove(), []string{"x-vakt-role"}) {
		t.Fatalf("header_map remove %v", cr.GetOkResponse().GetHeadersToRemove())
	}
	if headerMap(cr.GetOkResponse().GetHeaders())[authz.HeaderSubject] != "user-1" {
		t.Fatalf("header_map: the subject vakt sets %v", cr.GetOkResponse().GetHeaders())
	}
	// Two Authorization values in header_map are no single bearer token.
	req.Attributes.Request.Http.HeaderMap.Headers = append(req.Attributes.Request.Http.HeaderMap.Headers,
		&corev3.HeaderValue{Key: "authorization", Value: "Bearer " + tok})
	if cr, err := e.client.Check(context.Background(), req); err != nil || denialStatus(cr) != 400 {
		t.Fatalf("two Authorization values: %v %v", cr, err)
	}
}

// A claim that is no header value as it is (CR, LF, NUL, other controls,
// leading or trailing space) is never forwarded: the request is denied
// invalid_token. Non-ASCII text is forwarded as its UTF-8 bytes.
func TestCheckClaimsThatAreNoHeaderValue(t *testing.T) {
	e := newIntegrityEnv(t)
	bearer := func(tok string) map[string]string { return map[string]string{"authorization": "Bearer " + tok} }
	for name, extra := range map[string][]any{
		"sub with CRLF":    {"sub", "alice\r\nx-vakt-client-id: dev-gcp:team-b:app-b"},
		"sub with NUL":     {"sub", "alice\x00"},
		"pid with NUL":     {"pid", "1\u0000é"},
		"idp with LF":      {"idp", "https://idp.example/\n"},
		"sub, trailing SP": {"sub", "alice "},
		"scope with DEL":   {"scope", "read:users x\x7f"},
	} {
		res := e.check(creq{app: appB, path: "/read", headers: bearer(e.own(app1, appB, "read:users", extra...))})
		d := res.GetDeniedResponse()
		if d == nil || d.GetStatus().GetCode() != 401 || !strings.Contains(headerMap(d.GetHeaders())["www-authenticate"], `error="invalid_token"`) ||
			!strings.Contains(d.GetBody(), authz.ReasonClaimNotForwardable.Description()) {
			t.Errorf("%s: %v", name, res)
		}
	}
	// A claim that is not forwarded may hold anything.
	res := e.check(creq{app: appB, path: "/read", headers: bearer(e.own(app1, appB, "read:users", "note", "a\r\nb"))})
	if res.GetOkResponse() == nil {
		t.Fatalf("an unforwarded claim: %v", res)
	}
	res = e.check(creq{app: appB, path: "/read", headers: bearer(e.own(app1, appB, "read:users", "sub", "Åse Ødegård", "pid", "ØÆÅ"))})
	h := headerMap(res.GetOkResponse().GetHeaders())
	if h[authz.HeaderSubject] != "Åse Ødegård" || h["x-vakt-pid"] != "ØÆÅ" {
		t.Fatalf("non-ASCII: %v", res)
	}
}

// A principal of another SPIFFE trust domain, or of none, names no
// application.
func TestCheckTrustDomain(t *testing.T) {
	e := newIntegrityEnv(t)
	bearer := map[string]string{"authorization": "Bearer " + e.own(app1, appB, "read:users")}
	for _, p := range []string{"spiffe://evil.example.org/ns/team-b/sa/app-b", "spiffe:///ns/team-b/sa/app-b", "spiffe://CLUSTER.LOCAL/ns/team-b/sa/app-b"} {
		res := e.check(creq{principal: p, path: "/read", headers: bearer})
		if res.GetOkResponse() != nil || !strings.Contains(res.GetDeniedResponse().GetBody(), "no application") {
			t.Errorf("%s: %v", p, res)
		}
	}
	if res := e.check(creq{principal: "spiffe://cluster.local/ns/team-b/sa/app-b", path: "/read", headers: bearer}); res.GetOkResponse() == nil {
		t.Fatalf("the mesh's own trust domain: %v", res)
	}
	e.load(strings.Replace(e.yaml, "cluster: dev-gcp\n", "cluster: dev-gcp\ntrustDomain: prod.example\n", 1))
	if res := e.check(creq{principal: "spiffe://prod.example/ns/team-b/sa/app-b", path: "/read", headers: bearer}); res.GetOkResponse() == nil {
		t.Fatalf("a configured trust domain: %v", res)
	}
	if res := e.check(creq{principal: "spiffe://cluster.local/ns/team-b/sa/app-b", path: "/read", headers: bearer}); res.GetOkResponse() != nil {
		t.Fatal("cluster.local after trustDomain changed")
	}
}

// Explicit typing (RFC 9068 §4): a token vakt issued is an access token only
// with typ at+jwt; an assertion-shaped token signed by vakt's key is not one.
func TestCheckOwnTokensNeedAtJWT(t *testing.T) {
	e := newIntegrityEnv(t)
	k := e.signer.Keys()[0]
	key := &idptest.Key{ID: k.ID, Alg: k.Alg, Private: k.Private}
	claims := map[string]any{"iss": "http://127.0.0.1:8080", "sub": "user-1", "aud": appB, "client_id": app1, "scope": "read:users", "exp": time.Now().Add(time.Minute).Unix()}
	for _, typ := range []any{nil, "JWT", "jwt"} {
		h := map[string]any{"alg": k.Alg, "kid": k.ID}
		if typ != nil {
			h["typ"] = typ
		}
		res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + idptest.Sign(t, key, k.Alg, h, claims)}})
		if res.GetOkResponse() != nil || !strings.Contains(res.GetDeniedResponse().GetBody(), "token type is not accepted here") {
			t.Errorf("typ %v: %v", typ, res)
		}
	}
	h := map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "application/AT+JWT"}
	if res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + idptest.Sign(t, key, k.Alg, h, claims)}}); res.GetOkResponse() == nil {
		t.Fatalf("application/at+jwt: %v", res)
	}
}

// Introspect of a forged "tokenx" token says the same whether its audience
// is a registered application or not: the audience is checked only after
// the signature.
func TestIntrospectDoesNotTellWhichApplicationsExist(t *testing.T) {
	e := newEnv(t)
	forger := idptest.NewKey(t, e.signing.ID, e.signing.Alg) // vakt's kid, not its key
	answer := func(aud string) string {
		tok := idptest.Sign(t, forger, forger.Alg, map[string]any{"alg": forger.Alg, "kid": forger.ID, "typ": "at+jwt"},
			map[string]any{"iss": "http://127.0.0.1:8080", "sub": "x", "aud": aud, "client_id": app1, "exp": time.Now().Add(time.Minute).Unix()})
		res, err := e.client.Introspect(context.Background(), &vaktv1.IntrospectRequest{IdentityProvider: "tokenx", Token: tok})
		if err != nil || res.Active {
			t.Fatalf("%s: %v %v", aud, res, err)
		}
		return res.Error
	}
	if reg, unreg := answer("dev-gcp:team-b:app-b"), answer("dev-gcp:team-x:nobody"); reg != unreg {
		t.Fatalf("registered %q, unregistered %q", reg, unreg)
	}
}

// One token, one verdict on every face: a number no float64 holds makes
// the token malformed for HTTP and gRPC Introspect and for Check alike.
func TestHugeNumberIsOneVerdict(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	payload := strings.Replace(idptest.JSON(t, e.idp.Claims(now, "my-api")), `"sub"`, `"big":1e999,"sub"`, 1)
	k := e.idp.Key()
	tok := idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID}, payload)
	const want = "token is malformed: payload holds a number out of range"
	res, err := e.client.Introspect(context.Background(), &vaktv1.IntrospectRequest{IdentityProvider: "idporten", Token: tok})
	if err != nil || res.Active || res.Error != want {
		t.Fatalf("gRPC: %v %v", res, err)
	}
	resp, err := testHTTP.Post(e.http.URL+"/api/v1/introspect", "application/json",
		strings.NewReader(idptest.JSON(t, map[string]string{"identity_provider": "idporten", "token": tok})))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(body)) != `{"active":false,"error":"`+want+`"}` {
		t.Fatalf("HTTP: %s", body)
	}

	c := newCheckEnv(t)
	big := strings.Replace(idptest.JSON(t, map[string]any{"iss": c.auth0.URL, "sub": "s", "aud": "https://api.example.com", "exp": now.Add(time.Hour).Unix()}), `"sub"`, `"big":1e999,"sub"`, 1)
	ak := c.auth0.Key()
	cres := c.check(creq{app: "dev-gcp:team-b:api", path: "/x", headers: map[string]string{"authorization": "Bearer " + idptest.Sign(t, ak, ak.Alg, map[string]any{"alg": ak.Alg, "kid": ak.ID}, big)}})
	if cres.GetOkResponse() != nil || denialStatus(cres) != 401 {
		t.Fatalf("Check: %v", cres)
	}
}

// A JSON body that names a field twice is refused, as a form is: two
// readers must not read two different requests from one body.
func TestIntrospectJSONDuplicateMember(t *testing.T) {
	e := newEnv(t)
	for _, body := range []string{
		`{"identity_provider":"idporten","identity_provider":"tokenx","token":"x"}`,
		`{"identity_provider":"idporten","token":"a","t\u006fken":"b"}`,
	} {
		resp, err := testHTTP.Post(e.http.URL+"/api/v1/introspect", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "more than once") {
			t.Errorf("%s: %d %s", body, resp.StatusCode, b)
		}
	}
}

// The answer kept with a cached token is bounded: a token whose claims
// would make it larger than the cache counts is answered without them in
// dynamic_metadata, its identity headers all there.
func TestCheckAnswerBounded(t *testing.T) {
	e := newIntegrityEnv(t)
	groups := make([]string, 300)
	for i := range groups {
		groups[i] = fmt.Sprintf("group-%03d", i)
	}
	tok := e.own(app1, appB, "read:users", "groups", groups)
	res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + tok}})
	if res.GetOkResponse() == nil || res.GetDynamicMetadata() != nil || headerMap(res.GetOkResponse().GetHeaders())[authz.HeaderSubject] != "user-1" {
		t.Fatalf("a large token's answer: %v", res)
	}
}

// The allow answer keeps the claims in dynamic_metadata while the whole
// answer is within maxAnswer bytes, and goes without them
// past it (the identity headers are always there): the boundary is the
// size the answer would have with them, byte for byte.
func TestCheckMetadataAllowance(t *testing.T) {
	e := newIntegrityEnv(t)
	seen := map[bool]bool{}
	for pad := 1300; pad <= 1900; pad += 3 {
		tok := e.own(app1, appB, "read:users", "pad", strings.Repeat("p", pad))
		res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + tok}})
		if res.GetOkResponse() == nil || len(res.GetOkResponse().GetHeaders()) == 0 {
			t.Fatalf("pad %d: %v", pad, res)
		}
		_, md := tokenClaims(t, tok)
		headersOnly := proto.Clone(res).(*authv3.CheckResponse)
		headersOnly.DynamicMetadata = nil
		would := proto.Size(headersOnly) + proto.Size(&authv3.CheckResponse{DynamicMetadata: md})
		withMeta := res.GetDynamicMetadata() != nil
		if withMeta != (would <= maxAnswer) {
			t.Fatalf("pad %d: an answer of %d bytes with its metadata: metadata kept %v, the allowance %d", pad, would, withMeta, maxAnswer)
		}
		if withMeta && !proto.Equal(res.GetDynamicMetadata(), md) {
			t.Fatalf("pad %d: the metadata is not the claims", pad)
		}
		seen[withMeta] = true
	}
	if !seen[true] || !seen[false] {
		t.Fatalf("the pads never crossed the allowance: %v", seen)
	}
}
