package authz

import (
	"errors"
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
