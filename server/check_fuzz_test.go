package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/idptest"
)

// allowFuzzYAML: app-b takes vakt's own tokens (a caller named by
// client_id or azp, inbound rules, scoped routes, a forwarded claim,
// dynamic metadata), as the Check tests' shared configuration
// (testdata/check.yaml) has it; api takes auth0's (no caller, scoped
// routes, the Authorization header stripped, no dynamic metadata).
var allowFuzzYAML = testdata("check.yaml") + `  - name: api
    namespace: team-b
    stripAuthorization: true
    dynamicMetadata: false
    authentication:
      - {identityProvider: auth0, audience: https://api.example.com}
    forwardClaims:
      - {claim: pid, header: x-vakt-pid}
    routes:
      - {methods: [GET, HEAD], pathPrefix: /v1/, scopes: ["read:users"]}
      - {methods: [POST], path: /v1/users, scopes: ["read:users", "create:users"]}
      - {pathPrefix: /health, public: true}
`

const (
	appAPI      = "dev-gcp:team-b:api"
	apiAudience = "https://api.example.com"
	ownIssuer   = "http://127.0.0.1:8080"
)

// allowCallers are the callers each application's inbound rules allow, as
// allowFuzzYAML writes them.
var allowCallers = map[string][]string{appB: {app1}, appAPI: nil}

// What a fuzzed token and request are made of, besides the claims.
const (
	fuzzExternal      = 1 << iota // an auth0 token for api, not one of vakt's for app-b
	fuzzRawHeaders                // the client's headers in header_map, repeats kept, not in headers
	fuzzAzp                       // the caller in azp, without client_id
	fuzzWrongAudience             // a token for another audience
	fuzzGRPC                      // a gRPC request (content-type application/grpc)
)

// allowInput is what FuzzCheckAllow makes a token and a request of: the
// claims (pid and extra are JSON texts: pid a value, a string when it is
// none; extra an object whose other members join the claims), the names of
// headers the client sends (one a line), and flags.
type allowInput struct {
	method, path            string
	sub, client, idp, scope string
	pid, extra              string
	spoofs                  string
	flags                   uint8
}

var allowSeeds = []allowInput{
	{method: "GET", path: "/read", sub: "user-1", client: app1, idp: "https://idporten.example/", scope: "openid read:users", pid: `"12345678901"`},
	{method: "GET", path: "/read?id=1", sub: "user-1", client: app1, scope: "read:users", pid: `"12345678901"`,
		spoofs: "x-vakt-subject\nX-Vakt-Role\nx_vakt_pid\nx.vakt.scope\nx-vakt-client-id\nx-vakt-identity-provider"},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users", spoofs: "x-vakt-role\nx-vakt-client-id\nx-vakt-client-id\nx-vakt-role\nX_VAKT_ROLE\nx-vakt-pid\nx-vakt-role", flags: fuzzRawHeaders},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users", pid: `"12345 "`},
	{method: "POST", path: "/create", sub: "Åse Ødegård", client: app1, scope: "create:users read:users create:users", pid: `12345678901`},
	{method: "POST", path: "/create", sub: "user-1", client: app1, scope: "read:users"},
	{method: "DELETE", path: "/delete/42", sub: "user-1", client: app1, scope: "delete:users", pid: `{"a":[1,"x"],"b":null}`},
	{method: "DELETE", path: "/delete/../read", sub: "user-1", client: app1, scope: "delete:users"},
	{method: "GET", path: "/read", sub: "user-1", client: "dev-gcp:team-c:app-3", scope: "read:users"},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users", flags: fuzzAzp},
	{method: "GET", path: "/read", sub: "user-1", client: "", scope: "read:users"},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users", flags: fuzzWrongAudience},
	{method: "GET", path: "/public/logo.png", sub: "user-1", client: app1, spoofs: "x-vakt-subject\nx-request-id-2"},
	{method: "PUT", path: "/public/./a/../b", client: "dev-gcp:team-c:app-3"},
	{method: "GET", path: "/read/..%2Fdelete", sub: "user-1", client: app1, scope: "read:users"},
	{method: "GET", path: "/admin", sub: "user-1", client: app1, scope: "read:users"},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users", pid: "null", spoofs: "x-vakt-pid"},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users", pid: `"bad\nvalue"`},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users", pid: `[" x"]`},
	{method: "GET", path: "/read", sub: " padded", client: app1, scope: "read:users"},
	{method: "GET", path: "/read", sub: "", client: app1, idp: "idp\tx", scope: "read:users"},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users é"},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users\u00a0admin"},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users", extra: `{"groups":["` + strings.Repeat("g", 3000) + `"]}`, spoofs: "x-vakt-groups"},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users", pid: `"` + strings.Repeat("p", 1000) + `"`, extra: `{"groups":"` + strings.Repeat("g", 1000) + `"}`},
	{method: "GET", path: "/read", sub: "user-1", client: app1, scope: "read:users",
		extra: `{"nested":{"deep":{"list":[1,[2,[3,{"x":null}]],"s"]}},"ünïcode":"ß✓","":"empty key","big":12345678901234567890,"neg":-0,"tiny":1e-300,"t":true}`},
	{method: "POST", path: "/pkg.Service/Method", sub: "user-1", client: app1, extra: `{"scp":["svc:call"],"permissions":"read:users"}`, flags: fuzzGRPC, spoofs: "x-vakt-scope"},
	{method: "POST", path: "/pkg.Service/Method", sub: "user-1", client: app1, scope: "read:users", flags: fuzzGRPC},
	{method: "GET", path: "/v1/users", sub: "auth0|42", client: "xYz123", idp: "https://evil.example", scope: "read:users", pid: `"1"`,
		spoofs: "x-vakt-client-id\nx-vakt-identity-provider", flags: fuzzExternal},
	{method: "HEAD", path: "/v1/", sub: "auth0|42", client: app1, extra: `{"permissions":["read:users"]}`, flags: fuzzExternal | fuzzRawHeaders, spoofs: "x-vakt-subject"},
	{method: "POST", path: "/v1/users", sub: "auth0|42", scope: "read:users", flags: fuzzExternal},
	{method: "POST", path: "/v1/users", sub: "auth0|42", scope: "create:users read:users", flags: fuzzExternal},
	{method: "GET", path: "/health", flags: fuzzExternal, spoofs: "x_vakt_subject"},
	{method: "GET", path: "/v1/users", sub: "auth0|42", scope: "read:users", flags: fuzzExternal | fuzzWrongAudience},
}

// FuzzCheckAllow: tokens that verify, signed at fuzz time from fuzzed
// claims (vakt's own for app-b, an httptest auth0's for api), with fuzzed
// method, path and client headers, through the real Check as the gRPC
// server runs it (the request decoded by the codec, the handler, the answer
// marshalled by the codec). FuzzCheck's tokens never verify; these reach
// the allow path, where:
//   - a request is allowed exactly when its route is public, or its token
//     is for the application, names a caller the inbound rules allow (own
//     tokens), holds every scope of the route and says nothing a header
//     cannot carry; a denial has the status and error code that says why
//     (a path or route that refuses does so whatever the token: it is then
//     none);
//   - the answer decodes, and is a valid CheckResponse (its own validation
//     rules);
//   - every header it sets is an x-vakt-* header, overwriting, and they are
//     exactly the token's claims (subject, caller, identity provider, scopes,
//     forwarded claims), read from the token here;
//   - every client header that would reach the application as an x-vakt-*
//     one (in any case, '_' or '.' for '-') is removed or overwritten, and
//     nothing else is removed but a stripped Authorization;
//   - the bytes written are what proto.Marshal makes of the identity part
//     and of the claims' dynamic_metadata, byte for byte (metadata dropped
//     only past the cache's allowance); with removals, the same message;
//   - a second Check with the same token (cached) answers the same bytes
//     (with removals, the same message: the proto codec's map order is
//     its own), removals in one order (sorted, then Authorization).
func FuzzCheckAllow(f *testing.F) {
	for _, in := range allowSeeds {
		f.Add(in.method, in.path, in.sub, in.client, in.idp, in.scope, in.pid, in.extra, in.spoofs, in.flags)
	}
	z := newAllowFuzz(f)
	f.Fuzz(func(t *testing.T, method, path, sub, client, idp, scope, pid, extra, spoofs string, flags uint8) {
		z.check(t, allowInput{method, path, sub, client, idp, scope, pid, extra, spoofs, flags})
	})
}

// The seeds reach every kind of answer, so that the properties above are
// not vacuous: allows setting identity headers, with and without dynamic
// metadata, with removals and without, public allows, and each denial.
func TestCheckAllowSeeds(t *testing.T) {
	z := newAllowFuzz(t)
	seen := map[string]int{}
	for _, in := range allowSeeds {
		seen[z.check(t, in)]++
	}
	for _, k := range []string{"allow", "allow+metadata", "allow+removals", "allow+metadata+removals", "public", "public+removals", "400", "401", "403"} {
		if seen[k] == 0 {
			t.Errorf("no seed answered %s: %v", k, seen)
		}
	}
}

type allowFuzz struct {
	svc   *authorizationService
	rt    *Runtime
	own   *idptest.Key // vakt's signing key
	auth0 *idptest.Issuer
	codec codec
}

func newAllowFuzz(tb testing.TB) *allowFuzz {
	z := &allowFuzz{auth0: idptest.NewIssuer(tb, "ES256"), codec: newCodec()}
	cfg, err := config.Load([]byte(strings.ReplaceAll(allowFuzzYAML, "AUTH0", z.auth0.URL)), tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	key, err := exchange.GenerateSigningKey("ES256")
	if err != nil {
		tb.Fatal(err)
	}
	z.own = &idptest.Key{ID: key.ID, Alg: key.Alg, Private: key.Private}
	signer, _ := exchange.NewSigner(key)
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	z.rt, err = NewRuntime(ctx, cfg, Options{Logger: quiet, Signer: signer, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{})})
	if err != nil {
		tb.Fatal(err)
	}
	cur := &Current{}
	cur.Store(z.rt)
	z.svc = newAuthorizationService(cur, quiet, NewMetrics(), nil)
	return z
}

// reservedClaims are the claims the fuzzed values set, which extra does
// not replace.
var reservedClaims = []string{"iss", "sub", "aud", "exp", "nbf", "iat", "client_id", "azp", "idp", "scope", "pid"}

// mint signs a token of in's claims: vakt's for app-b, or with
// fuzzExternal auth0's for api.
func (z *allowFuzz) mint(t testing.TB, in allowInput) string {
	now := time.Now()
	c := map[string]any{}
	if obj, ok := jsonUseNumber(in.extra).(map[string]any); ok {
		for k, v := range obj {
			if !slices.Contains(reservedClaims, k) {
				c[k] = v
			}
		}
	}
	c["sub"], c["scope"] = in.sub, in.scope
	c["iat"], c["nbf"], c["exp"] = now.Unix(), now.Unix(), now.Add(time.Hour).Unix()
	if in.pid != "" {
		if v := jsonUseNumber(in.pid); v != errNotJSON {
			c["pid"] = v
		} else {
			c["pid"] = in.pid
		}
	}
	if in.idp != "" {
		c["idp"] = in.idp
	}
	if in.flags&fuzzExternal != 0 {
		c["iss"], c["aud"] = z.auth0.URL, apiAudience
		if in.flags&fuzzWrongAudience != 0 {
			c["aud"] = "https://other.example.com"
		}
		if in.client != "" {
			c["client_id"] = in.client // an external provider's name for a client: never a caller
		}
		k := z.auth0.Key()
		return idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "JWT"}, c)
	}
	c["iss"], c["aud"] = ownIssuer, appB
	if in.flags&fuzzWrongAudience != 0 {
		c["aud"] = appAPI
	}
	if in.flags&fuzzAzp != 0 {
		c["azp"] = in.client
	} else {
		c["client_id"] = in.client
	}
	return idptest.Sign(t, z.own, z.own.Alg, map[string]any{"alg": z.own.Alg, "kid": z.own.ID, "typ": "at+jwt"}, c)
}

var errNotJSON = new(struct{})

// jsonUseNumber decodes one JSON value, numbers as json.Number; errNotJSON
// when s is none.
func jsonUseNumber(s string) any {
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil || d.More() {
		return errNotJSON
	}
	if _, err := d.Token(); err == nil {
		return errNotJSON // trailing data
	}
	return v
}

// request is the CheckRequest Envoy sends for in, with the token.
func (z *allowFuzz) request(in allowInput, appID, tok string) (*authv3.CheckRequest, []string) {
	method, path := strings.ToValidUTF8(in.method, "\uFFFD"), strings.ToValidUTF8(in.path, "\uFFFD")
	h := map[string]string{
		":method": method, ":path": path, ":authority": "vakt.test", ":scheme": "https", "authorization": "Bearer " + tok,
		"user-agent": "fuzz", "accept": "*/*", "x-request-id": "0f8a6b52-1c2d-4e5f-9a8b-7c6d5e4f3a2b",
	}
	if in.flags&fuzzGRPC != 0 {
		h["content-type"] = "application/grpc"
	}
	var sent []string // the client's own headers, as sent
	var raw []*corev3.HeaderValue
	for i, name := range strings.Split(in.spoofs, "\n") {
		// Envoy's codecs (and Go's net/http, before the HTTP face) refuse
		// names that are not ASCII, but a CheckRequest can carry any
		// string: ſ or the Kelvin sign must not pass for s or k.
		if name == "" || len(sent) >= 32 || ownHeader(h, name) || !utf8.ValidString(name) {
			continue // nor one of the request's own headers: those are the proxy's
		}
		sent = append(sent, name)
		if in.flags&fuzzRawHeaders != 0 {
			hv := &corev3.HeaderValue{Key: name, Value: "forged"}
			if i%2 == 1 {
				hv = &corev3.HeaderValue{Key: name, RawValue: []byte("forged")}
			}
			raw = append(raw, hv)
		} else {
			h[name] = "forged"
		}
	}
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		ContextExtensions: map[string]string{ContextExtensionApp: appID},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: "vakt.test", Headers: h,
		}},
	}}
	if raw != nil {
		req.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: raw}
	}
	return req, sent
}

// ownHeader reports whether name is one of h's, in any case.
func ownHeader(h map[string]string, name string) bool {
	for k := range h {
		if sameName(k, name) {
			return true
		}
	}
	return false
}

// call is one Check as the gRPC server makes it: the request decoded by the
// codec, the registered handler, the answer marshalled by the codec. It
// returns the bytes written, and whether they were the pre-marshalled
// answer.
func (z *allowFuzz) call(t *testing.T, req *authv3.CheckRequest) ([]byte, bool) {
	t.Helper()
	in, err := z.codec.Marshal(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	defer in.Free()
	res, err := authorizationDesc.Methods[0].Handler(z.svc, context.Background(), func(v any) error { return z.codec.Unmarshal(in, v) }, nil)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	_, pre := res.(*preMarshalled)
	out, err := z.codec.Marshal(res)
	if err != nil {
		t.Fatalf("the answer does not marshal: %v (%v)", err, res)
	}
	defer out.Free()
	return out.Materialize(), pre
}

// check runs in through Check twice and asserts FuzzCheckAllow's
// properties; it returns the kind of answer, for TestCheckAllowSeeds.
func (z *allowFuzz) check(t *testing.T, in allowInput) string {
	appID := appB
	if in.flags&fuzzExternal != 0 {
		appID = appAPI
	}
	app, _ := z.rt.Policy.Application(appID)
	want, route, decided := z.modelRoute(in, app)
	// The path and the route decide before the token is read: a token that
	// is none then, signed only when it may matter. A public route gets a
	// real token, as its allow must say nothing of it.
	tok, claims := "not.a.token", map[string]any(nil)
	if !decided || want.public {
		tok = z.mint(t, in)
		claims = payloadClaims(t, tok)
	}
	if !decided {
		want = z.modelToken(app, tok, claims, route)
	}
	req, sent := z.request(in, appID, tok)

	wire, pre := z.call(t, req)
	var got authv3.CheckResponse
	if err := proto.Unmarshal(wire, &got); err != nil {
		t.Fatalf("the answer does not decode: %v", err)
	}
	if err := got.ValidateAll(); err != nil {
		t.Fatalf("the answer is no valid CheckResponse: %v\n%v", err, &got)
	}
	// The same token again, verified now from the cache: the same answer.
	again, preAgain := z.call(t, req)
	if pre != preAgain {
		t.Fatalf("pre-marshalled %v, then %v", pre, preAgain)
	}
	if pre && !bytes.Equal(wire, again) {
		t.Fatalf("cached answer differs:\n first %x\nsecond %x", wire, again)
	}
	if !pre {
		var a authv3.CheckResponse
		if err := proto.Unmarshal(again, &a); err != nil || !proto.Equal(&got, &a) {
			t.Fatalf("cached answer differs (%v):\n first %v\nsecond %v", err, &got, &a)
		}
	}

	ok := got.GetOkResponse()
	if want.loose && got.GetDeniedResponse().GetStatus().GetCode() == 401 && strings.Contains(got.GetDeniedResponse().GetBody(), codeInvalidToken) {
		return "401" // refused at a bound of the JWS parser
	}
	if want.status != 0 {
		deny := got.GetDeniedResponse()
		status := int(deny.GetStatus().GetCode())
		var body struct{ Error string }
		_ = json.Unmarshal([]byte(deny.GetBody()), &body)
		if status != want.status || body.Error != want.code {
			t.Fatalf("%s %q: answered %d %q, want %d %q (%s)\nclaims %v\n%v", in.method, in.path, status, body.Error, want.status, want.code, want.why, claims, &got)
		}
		for _, h := range deny.GetHeaders() {
			if spoofsName(h.GetHeader().GetKey()) {
				t.Fatalf("a denial sets %s", h.GetHeader().GetKey())
			}
		}
		if got.GetDynamicMetadata() != nil {
			t.Fatalf("a denial carries dynamic_metadata")
		}
		return strconv.Itoa(want.status)
	}
	if ok == nil || got.GetStatus().GetCode() != 0 {
		t.Fatalf("%s %q: denied, want an allow (%s)\nclaims %v\n%v", in.method, in.path, want.why, claims, &got)
	}

	// Identity headers: exactly the token's, each overwriting.
	set := map[string]string{}
	for _, h := range ok.GetHeaders() {
		k, v := h.GetHeader().GetKey(), h.GetHeader().GetValue()
		if !strings.HasPrefix(k, authz.IdentityHeaderPrefix) {
			t.Fatalf("the allow sets %s: %q", k, v)
		}
		if _, dup := set[k]; dup {
			t.Fatalf("the allow sets %s twice", k)
		}
		if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Fatalf("%s is not overwritten: %v", k, h.GetAppendAction())
		}
		set[k] = v
	}
	wantSet := map[string]string{}
	for _, h := range want.headers {
		wantSet[h.name] = h.value
	}
	if !maps.Equal(set, wantSet) {
		t.Fatalf("identity headers\n got %q\nwant %q (the token's claims %v)", set, wantSet, claims)
	}

	// Every client header that would reach the application as one of vakt's
	// is removed, or overwritten under its own name; nothing else goes but a
	// stripped Authorization.
	removed := ok.GetHeadersToRemove()
	for i, r := range removed {
		if slices.Contains(removed[:i], r) {
			t.Fatalf("%s removed twice: %q", r, removed)
		}
	}
	var wantRemoved []string
	for _, name := range sent {
		if !spoofsName(name) {
			continue
		}
		overwritten := slices.ContainsFunc(ok.GetHeaders(), func(h *corev3.HeaderValueOption) bool { return sameName(h.GetHeader().GetKey(), name) })
		if !overwritten && !slices.Contains(removed, name) {
			t.Fatalf("the client's %q reaches the application: removed %q, set %q", name, removed, set)
		}
		if !overwritten && !slices.Contains(wantRemoved, name) {
			wantRemoved = append(wantRemoved, name)
		}
	}
	if app.StripAuthorization && !want.public {
		wantRemoved = append(wantRemoved, "authorization")
	}
	if !sameSet(removed, wantRemoved) {
		t.Fatalf("removed %q, want %q", removed, wantRemoved)
	}
	// In one order, whatever the order of the request's header map:
	// sorted, then a stripped Authorization.
	spoofed := removed
	if app.StripAuthorization && !want.public {
		spoofed = removed[:len(removed)-1]
		if removed[len(removed)-1] != "authorization" {
			t.Fatalf("removed %q: authorization not last", removed)
		}
	}
	if !slices.IsSorted(spoofed) {
		t.Fatalf("removed %q: not sorted", removed)
	}

	// The bytes: what proto.Marshal makes of the identity part, then of the
	// metadata, byte for byte when written as they were pre-marshalled.
	if pre {
		if len(removed) > 0 {
			t.Fatalf("a pre-marshalled answer with removals")
		}
		if !bytes.Equal(wire, want.wire) {
			var w authv3.CheckResponse
			_ = proto.Unmarshal(want.wire, &w)
			t.Fatalf("the answer's bytes are not proto's:\n got %x\nwant %x\n got %v\nwant %v", wire, want.wire, &got, &w)
		}
	} else {
		if len(removed) == 0 {
			t.Fatalf("an answer without removals not pre-marshalled")
		}
		var w authv3.CheckResponse
		if err := proto.Unmarshal(want.wire, &w); err != nil {
			t.Fatal(err)
		}
		w.GetOkResponse().HeadersToRemove = slices.Sorted(slices.Values(removed))
		g := proto.Clone(&got).(*authv3.CheckResponse)
		g.GetOkResponse().HeadersToRemove = slices.Sorted(slices.Values(removed))
		if !proto.Equal(g, &w) {
			t.Fatalf("the answer is not the token's:\n got %v\nwant %v", g, &w)
		}
	}
	kind := "allow"
	if want.public {
		kind = "public"
	} else if got.GetDynamicMetadata() != nil {
		kind += "+metadata"
	}
	if len(removed) > 0 {
		kind += "+removals"
	}
	return kind
}

// allowVerdict is the answer FuzzCheckAllow expects, worked out from the
// configuration and the token's claims apart from authz.
type allowVerdict struct {
	status int    // 0: allowed
	code   string // the denial's error ("unauthorized", "forbidden" when it has no code)
	why    string
	// loose: the token is at a bound of the JWS parser (its nesting, its
	// count of values), which may refuse it as malformed: 401 then too.
	loose bool

	public  bool
	headers []answerHeader // on allow
	wire    []byte         // the allow answer without removals, as proto.Marshal writes its two parts
}

// modelRoute decides in as Check should from the application's
// configuration, when its path or its route decide (decided); else it
// returns the route matched.
func (z *allowFuzz) modelRoute(in allowInput, app *authz.Application) (_ allowVerdict, _ *authz.Route, decided bool) {
	deny := func(status int, code, why string) (allowVerdict, *authz.Route, bool) {
		return allowVerdict{status: status, code: code, why: why}, nil, true
	}
	method, target := strings.ToValidUTF8(in.method, "\uFFFD"), strings.ToValidUTF8(in.path, "\uFFFD")
	path, err := authz.NormalizePath(target, app.PathParameters)
	if err != nil {
		return deny(400, codeInvalidRequest, "path")
	}
	var route *authz.Route
	for i := range app.Routes {
		r := &app.Routes[i]
		if len(r.Methods) > 0 && !slices.Contains(r.Methods, method) {
			continue
		}
		if r.Path != "" && path == r.Path || r.Path == "" && strings.HasPrefix(path, r.PathPrefix) {
			route = r
			break
		}
	}
	if len(app.Routes) > 0 && route == nil {
		return deny(403, "forbidden", "no route")
	}
	if route != nil && route.Public {
		return allowVerdict{public: true, wire: identityPart(nil)}, route, true
	}
	return allowVerdict{}, route, false
}

// The JWS parser's bounds (authz/jsonobject.go).
const (
	authzMaxJSONDepth  = 32
	authzMaxJSONValues = 4096
)

// modelToken decides as Check should past the route, from the token's
// claims as encoding/json reads them.
func (z *allowFuzz) modelToken(app *authz.Application, tok string, claims map[string]any, route *authz.Route) allowVerdict {
	// A token at a bound of the JWS parser may be refused as malformed.
	depth, values := jsonSize(claims)
	loose := depth >= authzMaxJSONDepth-1 || values >= authzMaxJSONValues-8
	deny := func(status int, code, why string) allowVerdict {
		return allowVerdict{status: status, code: code, why: why, loose: loose}
	}
	if len(tok) > authz.DefaultMaxTokenSize {
		return deny(401, codeInvalidToken, "too large")
	}
	scopes, scopesValid := tokenScopes(claims)
	if len(scopes) > 1024 {
		return deny(401, codeInvalidToken, "too many scopes")
	}
	own := app.ID == appB
	aud, _ := claims["aud"].(string)
	if own && aud != app.ID || !own && aud != apiAudience {
		return deny(401, codeInvalidToken, "audience")
	}
	var caller string
	if own {
		caller, _ = claims["client_id"].(string)
		if caller == "" {
			caller, _ = claims["azp"].(string)
		}
		if !slices.Contains(allowCallers[app.ID], caller) {
			return deny(403, codeAccessDenied, "caller")
		}
	}
	if route != nil {
		for _, s := range route.Scopes {
			if !slices.Contains(scopes, s) {
				return deny(403, codeInsufficientScope, "scope "+s)
			}
		}
	}
	sub, _ := claims["sub"].(string)
	idp, _ := claims["idp"].(string)
	switch {
	case !scopesValid:
		return deny(401, codeInvalidToken, "a scope no scope-token")
	case !fitsHeader(sub):
		return deny(401, codeInvalidToken, "sub no header value")
	case own && !fitsHeader(idp):
		return deny(401, codeInvalidToken, "idp no header value")
	}
	for _, fc := range app.ForwardClaims {
		if !claimHeaderValue(claims[fc.Claim]) {
			return deny(401, codeInvalidToken, fc.Claim+" no header value")
		}
	}

	var hs []answerHeader
	add := func(name, value string) {
		if value != "" {
			hs = append(hs, answerHeader{name, value})
		}
	}
	add(authz.HeaderSubject, sub)
	add(authz.HeaderClientID, caller)
	switch {
	case own && idp != "":
		add(authz.HeaderIdentityProvider, idp)
	case own:
		add(authz.HeaderIdentityProvider, ownIssuer)
	default:
		add(authz.HeaderIdentityProvider, z.auth0.URL)
	}
	add(authz.HeaderScope, strings.Join(scopes, " "))
	for _, fc := range app.ForwardClaims {
		add(fc.Header, renderClaim(claims[fc.Claim]))
	}
	wire := identityPart(hs)
	if !app.NoDynamicMetadata {
		md, err := metadataPart(claims)
		if err != nil {
			panic(err)
		}
		// Past maxAnswer, the answer goes
		// without its metadata.
		if len(wire)+len(md) <= maxAnswer {
			wire = append(wire, md...)
		}
	}
	return allowVerdict{headers: hs, wire: wire, loose: loose}
}

// identityPart is proto.Marshal's CheckResponse{status: OK, ok_response:
// {headers: hs, each overwriting}}.
func identityPart(hs []answerHeader) []byte {
	ok := &authv3.OkHttpResponse{}
	for _, h := range hs {
		ok.Headers = append(ok.Headers, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: h.name, Value: h.value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&authv3.CheckResponse{
		Status: &rpcstatus.Status{}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
	})
	if err != nil {
		panic(err)
	}
	return b
}

// metadataPart is proto.Marshal's CheckResponse{dynamic_metadata: {vakt:
// claims}}, the Struct built by structpb.
func metadataPart(claims map[string]any) ([]byte, error) {
	s, err := structpb.NewStruct(map[string]any{metadataNamespace: floats(claims)})
	if err != nil {
		return nil, err
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(&authv3.CheckResponse{DynamicMetadata: s})
}

// floats makes the json.Numbers of v float64s, as structpb wants them.
func floats(v any) any {
	switch x := v.(type) {
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			panic(err) // the token verified: its numbers are in range
		}
		return f
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = floats(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = floats(e)
		}
		return l
	}
	return v
}

// payloadClaims are a token's claims as encoding/json reads its payload,
// numbers as json.Number.
func payloadClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	claims, ok := jsonUseNumber(string(payload)).(map[string]any)
	if !ok {
		t.Fatalf("payload %s", payload)
	}
	return claims
}

// tokenScopes are the scopes of scope and scp (space-separated strings, or
// arrays) and permissions (a string, or an array), each once, in order; and
// whether each is an RFC 6749 scope-token.
func tokenScopes(claims map[string]any) ([]string, bool) {
	var out []string
	valid := true
	add := func(s string) {
		if s == "" || slices.Contains(out, s) {
			return
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x21 || c == '"' || c == '\\' || c > 0x7e {
				valid = false
			}
		}
		out = append(out, s)
	}
	for _, name := range []string{"scope", "scp", "permissions"} {
		switch v := claims[name].(type) {
		case string:
			if name == "permissions" {
				add(v)
				break
			}
			for _, s := range strings.Split(v, " ") {
				add(s)
			}
		case []any:
			for _, e := range v {
				if s, ok := e.(string); ok {
					add(s)
				}
			}
		}
	}
	return out, valid
}

// fitsHeader reports whether s can be a header value as it is: no control
// character, no space at either end.
func fitsHeader(s string) bool {
	if strings.HasPrefix(s, " ") || strings.HasSuffix(s, " ") {
		return false
	}
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// claimHeaderValue reports whether a forwarded claim can be a header: a
// string that is a header value, an array whose strings are; anything else
// is written as JSON.
func claimHeaderValue(v any) bool {
	switch x := v.(type) {
	case string:
		return fitsHeader(x)
	case []any:
		for _, e := range x {
			if s, ok := e.(string); ok && !fitsHeader(s) {
				return false
			}
		}
	}
	return true
}

// renderClaim is a forwarded claim's header value: a string as it is, a
// number as the token writes it, anything else as JSON; none for null.
func renderClaim(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case json.Number:
		return string(x)
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// jsonSize is how deep v nests, and how many values it holds.
func jsonSize(v any) (depth, values int) {
	values = 1
	var inner []any
	switch x := v.(type) {
	case map[string]any:
		for _, e := range x {
			inner = append(inner, e)
		}
	case []any:
		inner = x
	default:
		return 0, 1
	}
	for _, e := range inner {
		d, n := jsonSize(e)
		depth = max(depth, d)
		values += n
	}
	return depth + 1, values
}

// spoofsName reports whether a client's header name reaches an application
// as one of vakt's: x-vakt-* in any (ASCII) case, '_' or '.' for '-'.
func spoofsName(name string) bool {
	n := []byte(name)
	for i, c := range n {
		switch {
		case 'A' <= c && c <= 'Z':
			n[i] = c + 'a' - 'A'
		case c == '_' || c == '.':
			n[i] = '-'
		}
	}
	return bytes.HasPrefix(n, []byte(authz.IdentityHeaderPrefix))
}

// sameName is HTTP's comparison of header names, apart from the code's
// asciiEqualFold (the oracle must not share the code it checks): ASCII
// letters in any case, every other byte as it is.
func sameName(a, b string) bool {
	lower := func(s string) []byte {
		b := []byte(s)
		for i, c := range b {
			if c < utf8.RuneSelf {
				b[i] = byte(unicode.ToLower(rune(c)))
			}
		}
		return b
	}
	return bytes.Equal(lower(a), lower(b))
}

func sameSet(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Compact(slices.Sorted(slices.Values(b))))
}
