package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/internal/idptest"
)

// A cached allow is written as the bytes marshalled when the token was
// first verified: they decode to the same answer as the message, over a
// real gRPC connection too, and the codec marshals anything else as the
// proto codec does.
func TestPreMarshalledAnswer(t *testing.T) {
	svc, tok := benchCheckAlg(t, 0, "ES256")
	req := envoyCheck("/read", "Bearer "+tok)
	ctx := context.Background()
	first, err := svc.checkWire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := svc.checkWire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := again.(*preMarshalled)
	if !ok || first != again {
		t.Fatalf("the second Check is not the shared pre-marshalled answer: %T", again)
	}
	c := newCodec()
	wire, err := c.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var decoded authv3.CheckResponse
	if err := c.Unmarshal(wire, &decoded); err != nil {
		t.Fatal(err)
	}
	// What the bytes say, against the token itself, not against the
	// cached answer they were made from: the identity headers are its
	// claims, and dynamic_metadata is its claims whole.
	claims, md := tokenClaims(t, tok)
	want := map[string]any{authz.HeaderSubject: claims["sub"], authz.HeaderClientID: claims["client_id"],
		authz.HeaderIdentityProvider: claims["idp"], authz.HeaderScope: claims["scope"]}
	got := map[string]any{}
	for _, h := range decoded.GetOkResponse().GetHeaders() {
		if _, ok := want[h.GetHeader().GetKey()]; ok {
			got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("identity headers %v, the token says %v", got, want)
	}
	if !proto.Equal(decoded.GetDynamicMetadata(), md) {
		t.Errorf("dynamic_metadata %v, the token's claims %v", decoded.GetDynamicMetadata(), md)
	}
	// A request whose answer must change (a spoofed header to remove) gets
	// a message of its own, marshalled as usual.
	spoofed := envoyCheck("/read", "Bearer "+tok)
	spoofed.Attributes.Request.Http.Headers["x-vakt-role"] = "admin"
	res, err := svc.checkWire(ctx, spoofed)
	if err != nil {
		t.Fatal(err)
	}
	msg, ok := res.(*authv3.CheckResponse)
	if !ok || len(msg.GetOkResponse().GetHeadersToRemove()) != 1 || msg.GetOkResponse().GetHeadersToRemove()[0] != "x-vakt-role" {
		t.Fatalf("spoofed: %T %v", res, res)
	}
	if _, err := c.Marshal(msg); err != nil {
		t.Fatal(err)
	}
}

// A CheckRequest with thousands of headers, which no proxy sends, is
// refused before any work on them; hundreds of spoofed ones are removed in
// O(n log n), each once.
func TestCheckManyHeaders(t *testing.T) {
	svc, tok := benchCheckAlg(t, 0, "ES256")
	req := envoyCheck("/read", "Bearer "+tok)
	h := req.Attributes.Request.Http.Headers
	for i := range 500 {
		h[fmt.Sprintf("x_vakt_%04d", i)] = "x"
	}
	res, err := svc.Check(context.Background(), req)
	if err != nil || len(res.GetOkResponse().GetHeadersToRemove()) != 500 {
		t.Fatalf("500 spoofed headers: %v", err)
	}
	for i := 500; i < 1100; i++ {
		h[fmt.Sprintf("x_vakt_%04d", i)] = "x"
	}
	res, err = svc.Check(context.Background(), req)
	if err != nil || res.GetDeniedResponse().GetStatus().GetCode() != 400 {
		t.Fatalf("1100 headers: %v %v", res, err)
	}
}

// An identity says which headers it sets, in any case, as its wire form
// holds them: for an application forwarding many claims too (past the
// identity's inline spans), and a client's header that vakt does not set
// (its claim absent) is removed.
func TestIdentitySetsHeader(t *testing.T) {
	k := idptest.NewKey(t, "k1", "ES256")
	key, err := authz.NewKey(k.ID, k.Alg, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	set, err := authz.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := authz.NewProvider(authz.ProviderConfig{Name: "idp", Issuer: "https://idp.example", Keys: authz.StaticKeys{Set: set}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := authz.NewValidator(authz.ValidatorConfig{Providers: []*authz.Provider{p}})
	if err != nil {
		t.Fatal(err)
	}
	// Claims with a subject and a scope, and claims with neither.
	var claims []*authz.Claims
	for _, extra := range []map[string]any{{"sub": "s", "scope": "read"}, {}} {
		payload := map[string]any{"iss": "https://idp.example", "exp": time.Now().Add(time.Hour).Unix()}
		maps.Copy(payload, extra)
		c, err := v.Validate(context.Background(), "idp", idptest.Sign(t, k, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID}, payload))
		if err != nil {
			t.Fatal(err)
		}
		claims = append(claims, c)
	}
	app := &authz.Application{}
	raw := map[string]any{}
	for i := range 70 {
		name := fmt.Sprintf("c%d", i)
		app.ForwardClaims = append(app.ForwardClaims, authz.ClaimHeader{Claim: name, Header: "x-vakt-" + name})
		if i%3 != 0 {
			raw[name] = fmt.Sprint("v", i)
		}
	}
	names := []string{authz.HeaderSubject, authz.HeaderClientID, authz.HeaderIdentityProvider, authz.HeaderScope}
	for _, fc := range app.ForwardClaims {
		names = append(names, fc.Header)
	}
	for _, c := range claims {
		d := authz.Decision{Allow: true, Claims: c, Provider: p}
		hs := identityHeaders(&d, app, raw, nil)
		id := &identity{}
		id.spans = envoyIdentity(&id.envoy, hs, raw, false, nil)
		set := headerMap(id.envoy.message().GetOkResponse().GetHeaders())
		for _, h := range names {
			_, want := set[h]
			if got := id.sets(strings.ToUpper(h)); got != want {
				t.Errorf("claims %+v: sets(%s) = %v, the message sets it: %v", c.Subject(), h, got, want)
			}
		}
		seen := map[string]string{}
		id.headers(func(name, value []byte) { seen[string(name)] = string(value) })
		if !maps.Equal(seen, set) {
			t.Errorf("the identity's headers %v, the message's %v", seen, set)
		}
		if id.sets("x-vakt-role") {
			t.Fatal("x-vakt-role set")
		}
	}
	// Through Check, twice (verified, then cached): a token whose pid is
	// null has a client's x-vakt-pid removed, and its subject set; names
	// compare in ASCII case only, so x-vakt-ſubject and x-vakt-ſcope (ſ,
	// which Unicode folds to s) are no header vakt sets, and are removed.
	e := newCheckEnv(t)
	tok := e.own(app1, appB, "read:users", "pid", nil)
	for range 2 {
		res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + tok, "x-vakt-pid": "0", "x-vakt-subject": "admin",
			"x-vakt-ſubject": "admin", "x-vakt-ſcope": "admin"}})
		ok := res.GetOkResponse()
		if ok == nil || !slices.Equal(ok.GetHeadersToRemove(), []string{"x-vakt-pid", "x-vakt-ſcope", "x-vakt-ſubject"}) || headerMap(ok.GetHeaders())[authz.HeaderSubject] != "user-1" {
			t.Fatalf("answer %v", res)
		}
	}
}

// The identity headers' wire form is what proto.Marshal makes of the
// message, byte for byte: no header, short and long names and values
// (lengths that take two-byte varints), and non-ASCII text.
func TestIdentityWire(t *testing.T) {
	for _, hs := range [][]answerHeader{
		nil,
		{{authz.HeaderSubject, "user-1"}},
		{{authz.HeaderSubject, "Åse Ødegård"}, {authz.HeaderClientID, "dev-gcp:team-a:app-1"}, {authz.HeaderScope, "openid read:users"}},
		{{authz.HeaderSubject, strings.Repeat("s", 127)}, {"x-vakt-" + strings.Repeat("n", 120), strings.Repeat("v", 300)}},
		{{authz.HeaderIdentityProvider, strings.Repeat("é", 5000)}},
	} {
		want := identityPart(hs) // proto.Marshal's
		got, spans := appendIdentityWire(nil, hs, nil)
		if !bytes.Equal(got, want) || len(got) != identityWireSize(hs) {
			t.Fatalf("%d headers: got %x (sized %d), want %x", len(hs), got, identityWireSize(hs), want)
		}
		for i, s := range spans {
			if name, value := got[s.nameOff:s.nameOff+s.nameLen], got[s.valueOff:s.valueOff+s.valueLen]; string(name) != hs[i].name || string(value) != hs[i].value {
				t.Fatalf("header %d: spans %q: %q", i, name, value)
			}
		}
	}
}

// tokenClaims are a token's claims as encoding/json reads its payload, and
// the dynamic_metadata an allow answer should carry of them: built by
// structpb, independently of vakt's wire form.
func tokenClaims(t *testing.T, tok string) (map[string]any, *structpb.Struct) {
	t.Helper()
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	md, err := structpb.NewStruct(map[string]any{metadataNamespace: claims})
	if err != nil {
		t.Fatal(err)
	}
	return claims, md
}
