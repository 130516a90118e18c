package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
)

// Loader builds runtimes from a configuration and the signing keys file it
// names: at start, and again on every reload.
type Loader struct {
	// Config reads and validates the configuration: a file, or in
	// development the embedded default (cmd/vakt decides which).
	Config func() (*config.Config, error)
	// Ephemeral signs when the configuration names no keys file. It is made
	// once, so that a reload does not orphan the tokens already issued.
	Ephemeral *exchange.Signer
	Replay    exchange.ReplayStore
	Logger    *slog.Logger
	// KeySets keeps identity providers' keys across reloads (see KeySets);
	// without it, a reload fetches every key set anew.
	KeySets *KeySets
}

// Build loads the configuration and keys and builds a runtime.
func (l *Loader) Build(ctx context.Context) (*Runtime, error) {
	cfg, err := l.Config()
	if err != nil {
		return nil, err
	}
	for _, w := range cfg.Warnings {
		l.Logger.Warn("configuration: " + w)
	}
	signer := l.Ephemeral
	if cfg.Signing.KeysFile != "" {
		keys, err := exchange.LoadKeysFile(cfg.Signing.KeysFile)
		if err != nil {
			return nil, fmt.Errorf("signing.keysFile: %w", err)
		}
		if fi, err := os.Stat(cfg.Signing.KeysFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
			l.Logger.Warn("signing.keysFile holds private keys but is readable by others than its owner; chmod 600 it (Kubernetes: defaultMode: 0400)",
				"file", cfg.Signing.KeysFile, "mode", fi.Mode().Perm().String())
		}
		if signer, err = exchange.NewSigner(keys...); err != nil {
			return nil, fmt.Errorf("signing.keysFile: %w", err)
		}
		l.Logger.Info("signing keys loaded", "file", cfg.Signing.KeysFile, "published", len(keys), "signing_kid", keys[0].ID)
	} else if signer == nil {
		return nil, errors.New("the configuration names no signing.keysFile, and vakt started with one; restart to sign with a generated key")
	}
	return NewRuntime(ctx, cfg, Options{Logger: l.Logger, Signer: signer, Replay: l.Replay, KeySets: l.KeySets})
}

// WatchedFiles are the files whose change calls for a reload: the
// configuration file and the keys file it names.
func WatchedFiles(configPath string, cfg *config.Config) []string {
	files := []string{configPath}
	if cfg.Signing.KeysFile != "" {
		files = append(files, cfg.Signing.KeysFile)
	}
	return files
}
