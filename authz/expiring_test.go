package authz

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/internal/idptest"
)

// A key with an until is found before it and not at or after it, by the
// source's clock; a key without one never expires; an unknown kid is
// ErrKeyNotFound either way.
func TestExpiringKeys(t *testing.T) {
	var set []*Key
	for _, kid := range []string{"old", "cur"} {
		k := idptest.NewKey(t, kid, "ES256")
		key, err := NewKey(k.ID, k.Alg, k.Public())
		if err != nil {
			t.Fatal(err)
		}
		set = append(set, key)
	}
	ks, err := NewKeySet(set...)
	if err != nil {
		t.Fatal(err)
	}
	until := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		kid  string
		at   time.Time
		want bool
	}{
		{"old", until.Add(-time.Nanosecond), true},
		{"old", until, false},
		{"old", until.Add(time.Hour), false},
		{"cur", until.Add(1000 * time.Hour), true},
		{"none", until.Add(-time.Hour), false},
	} {
		at := tc.at
		src := ExpiringKeys{Set: ks, Until: map[string]time.Time{"old": until}, Now: func() time.Time { return at }}
		k, err := src.Key(context.Background(), tc.kid)
		switch {
		case tc.want && (err != nil || k == nil || k.ID != tc.kid):
			t.Errorf("%s at %v: %v %v, want the key", tc.kid, tc.at, k, err)
		case !tc.want && !errors.Is(err, ErrKeyNotFound):
			t.Errorf("%s at %v: %v %v, want ErrKeyNotFound", tc.kid, tc.at, k, err)
		}
	}
}
