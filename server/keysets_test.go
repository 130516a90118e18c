package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/waittest"
)

// A reload keeps each provider's last good keys when its settings did not
// change: a provider that went down before the reload keeps verifying. A
// provider whose settings changed fetches anew, and one no configuration
// names any more stops.
func TestReloadKeepsKeys(t *testing.T) {
	idp := idptest.NewIssuer(t, "ES256")
	other := idptest.NewIssuer(t, "ES256")
	dir := t.TempDir()
	file := filepath.Join(dir, "vakt.yaml")
	write := func(providers string) {
		t.Helper()
		yaml := "issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nidentityProviders:\n" + providers
		if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	idpEntry := "  - name: idporten\n    issuer: " + idp.URL + "\n    jwksUri: " + idp.JWKSURI() + "\n"
	otherEntry := "  - name: other\n    issuer: " + other.URL + "\n    jwksUri: " + other.JWKSURI() + "\n"
	key, _ := exchange.GenerateSigningKey("ES256")
	signer, _ := exchange.NewSigner(key)

	for _, keep := range []bool{true, false} {
		name := "without KeySets, keys are fetched anew"
		if keep {
			name = "with KeySets, keys are kept"
		}
		t.Run(name, func(t *testing.T) {
			idp.SetDown(false)
			write(idpEntry + otherEntry)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			loader := &Loader{Config: func() (*config.Config, error) { return config.LoadFile(file) }, Ephemeral: signer,
				Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{}), Logger: quiet}
			if keep {
				loader.KeySets = NewKeySets(ctx, quiet, nil)
			}
			cur := &Current{}
			rl := &Reloader{Current: cur, Build: loader.Build, Logger: quiet}
			if err := rl.Start(ctx); err != nil {
				t.Fatal(err)
			}
			introspect := func(iss *idptest.Issuer, provider string, n int) introspection {
				t.Helper()
				in := &introspector{validator: func() *authz.Validator { return cur.Load().Validator }, log: quiet}
				tok := iss.Token(with(iss.Claims(time.Now(), "x"), "n", n))
				res, bad := in.introspect(context.Background(), provider, tok)
				if bad != "" {
					t.Fatal(bad)
				}
				return res
			}
			if res := introspect(idp, "idporten", 1); !res.Active {
				t.Fatalf("before: %s", res.Error)
			}
			idp.SetDown(true)
			if err := rl.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			res := introspect(idp, "idporten", 2)
			if res.Active != keep {
				t.Fatalf("after a reload with the provider down: active %v (%s)", res.Active, res.Error)
			}
			if !keep {
				return
			}
			// The other provider's entry removed: its key set stops.
			if n := loader.KeySets.Len(); n != 2 {
				t.Fatalf("%d key sets held", n)
			}
			write(idpEntry)
			if err := rl.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			waitLen(t, loader.KeySets, 1, "after the provider was removed")
			// A changed setting (another key set address) fetches anew: down,
			// so its tokens wait for keys.
			write(strings.Replace(idpEntry, "jwksUri: "+idp.JWKSURI(), "jwksUri: "+idp.JWKSURI()+"?v=2", 1))
			if err := rl.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if res := introspect(idp, "idporten", 3); res.Active || res.Error != "identity provider is unavailable" {
				t.Fatalf("changed settings: %+v", res)
			}
			// The set of the settings before is let go once the runtime
			// before is done with.
			waitLen(t, loader.KeySets, 1, "after the settings changed")
			// A refused reload keeps the running configuration's sets. Refused
			// before it took a set, it leaves no release to come: the count
			// now is the count for good.
			if err := os.WriteFile(file, []byte("nonsense: ["), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := rl.Reload(ctx); err == nil {
				t.Fatal("a broken file reloaded")
			}
			if n := loader.KeySets.Len(); n != 1 {
				t.Fatalf("%d key sets held after a refused reload, want 1", n)
			}
		})
	}
}

// waitLen waits for the key sets a retired runtime held to be let go: that
// happens just after the runtime's context ends, in a goroutine of
// context.AfterFunc's, which nothing else tells of.
func waitLen(t *testing.T, k *KeySets, want int, when string) {
	t.Helper()
	waittest.Until(t, 5*time.Second, fmt.Sprintf("the key sets held %s never came to %d", when, want), func() bool { return k.Len() == want })
}
