package authz

import (
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

func TestPolicy(t *testing.T) {
	p, err := NewPolicy([]ApplicationPolicy{
		{ID: "dev:b:app-b", Inbound: []string{"dev:b:app-1", "dev:a:app-2", "prod:b:app-3"}},
		{ID: "dev:a:app-2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		caller, target string
		want           error
	}{
		{"dev:b:app-1", "dev:b:app-b", nil},
		{"dev:a:app-2", "dev:b:app-b", nil},
		{"prod:b:app-3", "dev:b:app-b", nil},
		{"dev:a:app-1", "dev:b:app-b", ErrAccessDenied},  // other namespace
		{"prod:b:app-1", "dev:b:app-b", ErrAccessDenied}, // other cluster
		{"dev:b:app-b", "dev:a:app-2", ErrAccessDenied},  // no rules: nobody
		{"dev:b:app-1", "dev:b:nobody", ErrApplicationUnknown},
	} {
		if err := p.MayCall(tt.caller, tt.target); !errors.Is(err, tt.want) {
			t.Errorf("%s → %s: %v, want %v", tt.caller, tt.target, err, tt.want)
		}
	}
	if _, err := NewPolicy([]ApplicationPolicy{{ID: "x"}, {ID: "x"}}); err == nil {
		t.Fatal("duplicate id accepted")
	}
}

func TestScopes(t *testing.T) {
	for _, tt := range []struct {
		payload string
		want    string
	}{
		{`{"scope":"openid read:users  create:users"}`, "openid read:users create:users"},
		{`{"scp":"read:users"}`, "read:users"},
		{`{"scp":["read:users","create:users"]}`, "read:users create:users"},
		{`{"permissions":["read:users","delete:users"]}`, "read:users delete:users"},
		{`{"scope":"a b","scp":["b","c"],"permissions":["d",7]}`, "a b c d"},
		{`{"scope":7}`, ""},
		{`{}`, ""},
		{`{"scope":"` + strings.Repeat("a b c d e f g h i j k l m n o p q r s t ", 10) + `"}`, "a b c d e f g h i j k l m n o p q r s t"},
	} {
		raw, err := parseJSONObject(tt.payload)
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := scopes(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(got, " "); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.payload, got, tt.want)
		}
	}
}

// Only a single space separates scopes, and a scope that is no RFC 6749
// scope-token marks the token's scopes as untellable.
func TestScopesAreRFC6749(t *testing.T) {
	for _, tt := range []struct {
		payload string
		want    string
		invalid bool
	}{
		{`{"scope":"read:users admin"}`, "read:users admin", false},
		{`{"scope":"read:users\u00a0admin"}`, "read:users\u00a0admin", true},
		{`{"scope":"read:users\u000badmin"}`, "read:users\vadmin", true},
		{`{"scope":"read:users\tadmin"}`, "read:users\tadmin", true},
		{`{"scope":"read:users\nadmin"}`, "read:users\nadmin", true},
		{`{"scope":"read:users\u2028admin"}`, "read:users\u2028admin", true},
		{`{"scp":["read:users admin"]}`, "read:users admin", true},
		{`{"scope":"  a  b "}`, "a b", false},
		{`{"permissions":["a\"b"]}`, "a\"b", true},
	} {
		raw, err := parseJSONObject(tt.payload)
		if err != nil {
			t.Fatal(err)
		}
		got, invalid, err := scopes(raw)
		if err != nil || invalid != tt.invalid || strings.Join(got, " ") != tt.want {
			t.Errorf("%s: %q invalid %v %v; want %q invalid %v", tt.payload, got, invalid, err, tt.want, tt.invalid)
		}
	}
}

// Thousands of distinct scope words are refused, in linear time.
func TestScopesBound(t *testing.T) {
	words := make([]string, maxScopes+1)
	for i := range words {
		words[i] = fmt.Sprintf("s%d", i)
	}
	raw, err := parseJSONObject(`{"scope":"` + strings.Join(words, " ") + `"}`)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := scopes(raw); !errors.Is(err, ErrClaimInvalid) {
		t.Fatalf("%d scopes: %v", len(words), err)
	}
	raw, _ = parseJSONObject(`{"scope":"` + strings.Join(words[:maxScopes], " ") + `"}`)
	if got, _, err := scopes(raw); err != nil || len(got) != maxScopes {
		t.Fatalf("%d scopes: %d, %v", maxScopes, len(got), err)
	}
}

func TestParseKeySetKids(t *testing.T) {
	jwk := func(kid string) string {
		s := `{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"`
		if kid != "" {
			s += `,"kid":"` + kid + `"`
		}
		return s + "}"
	}
	for _, tt := range []struct {
		name, set string
		keys      int
		skipped   int
		err       bool
		only      bool
	}{
		{"one key without kid", `{"keys":[` + jwk("") + `]}`, 1, 0, false, true},
		{"one key with kid", `{"keys":[` + jwk("a") + `]}`, 1, 0, false, true},
		{"two keys without kid", `{"keys":[` + jwk("") + `,` + jwk("") + `]}`, 0, 1, false, false},
		{"named and unnamed", `{"keys":[` + jwk("a") + `,` + jwk("") + `]}`, 1, 1, false, false},
		{"two named", `{"keys":[` + jwk("a") + `,` + jwk("b") + `]}`, 2, 0, false, false},
		{"kid twice", `{"keys":[` + jwk("a") + `,` + jwk("a") + `]}`, 0, 0, true, false},
		{"symmetric key", `{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}`, 0, 1, false, false},
	} {
		set, skipped, err := ParseKeySet([]byte(tt.set))
		if (err != nil) != tt.err {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if err != nil {
			continue
		}
		_, only := set.Lookup("")
		if set.Len() != tt.keys || len(skipped) != tt.skipped || only != tt.only {
			t.Errorf("%s: %d keys, %d skipped, single %v", tt.name, set.Len(), len(skipped), only)
		}
	}
}

// NewPolicyFrom keeps the previous *Application of an application whose
// policy is the same, so that answers kept for it (Check's answers) stay
// good; any one field changed, and the application is a new one. Every
// field of ApplicationPolicy is changed in turn, so that a field added
// later without a row here fails.
func TestNewPolicyFrom(t *testing.T) {
	base := func() ApplicationPolicy {
		return ApplicationPolicy{
			ID: "dev:b:app-b", Inbound: []string{"dev:a:app-1"}, Hosts: []string{"b.example"},
			Resources: []string{"urn:b"}, Routes: []Route{{Methods: []string{"GET"}, Path: "/read", Scopes: []string{"read"}}},
			Authentication: []Authentication{{Provider: "auth0", Audience: "api"}},
			ForwardClaims:  []ClaimHeader{{Claim: "pid", Header: "x-vakt-pid"}},
		}
	}
	other := ApplicationPolicy{ID: "dev:a:app-1"}
	prev, err := NewPolicy([]ApplicationPolicy{base(), other})
	if err != nil {
		t.Fatal(err)
	}
	was, _ := prev.Application(base().ID)
	wasOther, _ := prev.Application(other.ID)

	// The same policies, built anew from new slices: the same pointers,
	// wherever the policy finds them.
	next, err := NewPolicyFrom(prev, []ApplicationPolicy{base(), other, {ID: "dev:c:new"}})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("urn:b")
	byID, _ := next.Application(base().ID)
	byHost, _ := next.ApplicationByHost("b.example")
	byResource, _ := next.ApplicationByResource(u)
	if byID != was || byHost != was || byResource != was {
		t.Fatal("an unchanged application is a new one")
	}
	if o, _ := next.Application(other.ID); o != wasOther {
		t.Fatal("an unchanged application without routes is a new one")
	}
	if !next.Registered("dev:c:new") || next.MayCall("dev:a:app-1", base().ID) != nil {
		t.Fatal("the next policy does not answer as its applications say")
	}

	changes := map[string]func(*ApplicationPolicy){
		"ID":                 func(a *ApplicationPolicy) { a.ID = "dev:b:renamed" },
		"Inbound":            func(a *ApplicationPolicy) { a.Inbound = append(a.Inbound, "dev:c:new") },
		"Hosts":              func(a *ApplicationPolicy) { a.Hosts = []string{"b2.example"} },
		"Resources":          func(a *ApplicationPolicy) { a.Resources = []string{"urn:b2"} },
		"Routes":             func(a *ApplicationPolicy) { a.Routes[0].Scopes = []string{"read", "more"} },
		"Authentication":     func(a *ApplicationPolicy) { a.Authentication[0].Audience = "api2" },
		"ForwardClaims":      func(a *ApplicationPolicy) { a.ForwardClaims[0].Header = "x-vakt-other" },
		"StripAuthorization": func(a *ApplicationPolicy) { a.StripAuthorization = true },
		"NoDynamicMetadata":  func(a *ApplicationPolicy) { a.NoDynamicMetadata = true },
		"PathParameters":     func(a *ApplicationPolicy) { a.PathParameters = StripPathParameters },
	}
	fields := reflect.TypeFor[ApplicationPolicy]()
	for i := range fields.NumField() {
		name := fields.Field(i).Name
		change, ok := changes[name]
		if !ok {
			t.Errorf("ApplicationPolicy.%s is not changed here", name)
			continue
		}
		a := base()
		change(&a)
		next, err := NewPolicyFrom(prev, []ApplicationPolicy{a, other})
		if err != nil {
			t.Fatal(err)
		}
		now, _ := next.Application(a.ID)
		if now == was {
			t.Errorf("%s changed, and the application is the one before", name)
		}
		if o, _ := next.Application(other.ID); o != wasOther {
			t.Errorf("%s of another application changed, and this one is new", name)
		}
	}
}
