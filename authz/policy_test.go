package authz

import (
	"errors"
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
	} {
		raw, err := parseJSONObject([]byte(tt.payload))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(scopes(raw), " "); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.payload, got, tt.want)
		}
	}
}
