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

// A Redis password rotated in its file, or a new username, is no change
// that needs a restart (each new connection asks for the credentials in
// force); a new address, database or TLS setting is.
func TestRedisChangesThatNeedARestart(t *testing.T) {
	dir := t.TempDir()
	load := func(redis, password string) *config.Config {
		if err := os.WriteFile(filepath.Join(dir, "password"), []byte(password), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load([]byte("issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nreplay:\n  redis: "+redis+"\n"), dir)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	started := load("{address: 127.0.0.1:6379, passwordFile: password}", "one")
	for _, tc := range []struct {
		redis, password string
		restart         bool
	}{
		{"{address: 127.0.0.1:6379, passwordFile: password}", "two", false},
		{"{address: 127.0.0.1:6379, username: vakt, passwordFile: password}", "one", false},
		{"{address: 127.0.0.1:6380, passwordFile: password}", "one", true},
		{"{address: 127.0.0.1:6379, db: 1, passwordFile: password}", "one", true},
	} {
		err := needsRestart(started, load(tc.redis, tc.password))
		if (err != nil) != tc.restart {
			t.Errorf("%s, password %s: %v, want a restart: %v", tc.redis, tc.password, err, tc.restart)
		}
	}
}
