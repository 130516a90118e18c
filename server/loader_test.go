package server

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
)

// A private keys file that others can read loads, with a warning at every
// load; one readable by its owner only loads quietly.
func TestLoaderWarnsOfAReadableKeysFile(t *testing.T) {
	dir := t.TempDir()
	k, _ := exchange.GenerateSigningKey("ES256")
	keys := filepath.Join(dir, "keys.json")
	if err := exchange.WriteKeysFile(keys, []*exchange.SigningKey{k}); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "vakt.yaml")
	if err := os.WriteFile(cfgFile, []byte("issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nsigning:\n  keysFile: keys.json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		mode os.FileMode
		warn bool
	}{{0o600, false}, {0o400, false}, {0o640, false}, {0o440, false}, {0o644, true}, {0o604, true}} {
		// The file's group is the test's own (as Kubernetes' fsGroup is
		// vakt's): group-readable is no exposure.
		if err := os.Chmod(keys, tt.mode); err != nil {
			t.Fatal(err)
		}
		var logs strings.Builder
		l := &Loader{
			Config: func() (*config.Config, error) { return config.LoadFile(cfgFile) },
			Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{}), Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		}
		ctx, cancel := context.WithCancel(context.Background())
		if _, err := l.Build(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		if got := strings.Contains(logs.String(), "readable by others"); got != tt.warn {
			t.Fatalf("mode %v: warned %v; logs %s", tt.mode, got, logs.String())
		}
	}
}
