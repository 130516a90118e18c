package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/deploy/examples"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/devidp"
)

// Loader builds runtimes from a configuration file and the signing keys
// file it names: at start, and again on every reload.
type Loader struct {
	// ConfigPath is the configuration file; Default is used when it is "".
	ConfigPath string
	Default    []byte
	// Ephemeral signs when the configuration names no keys file. It is made
	// once, so that a reload does not orphan the tokens already issued.
	Ephemeral *exchange.Signer
	Replay    exchange.ReplayStore
	Logger    *slog.Logger
	// Issuer, when set, replaces the default configuration's issuer (vakt
	// demo listens on free ports).
	Issuer string
	// DevIDP is added as identity provider "idporten" to the embedded
	// default only: a configuration file can never enable it.
	DevIDP *devidp.IDP
}

// Config loads and validates the configuration.
func (l *Loader) Config() (*config.Config, error) {
	if l.ConfigPath != "" {
		cfg, err := config.LoadFile(l.ConfigPath)
		if err == nil {
			l.warnDemoKeys(cfg)
		}
		return cfg, err
	}
	cfg, err := config.Load(l.Default, ".")
	if err != nil {
		return nil, err
	}
	if l.Issuer != "" {
		cfg.Issuer = l.Issuer
	}
	if l.DevIDP != nil {
		cfg.IdentityProviders = append(cfg.IdentityProviders, config.IdentityProvider{
			Name: devidp.Name, Issuer: l.DevIDP.Issuer(), WellKnownURL: l.DevIDP.WellKnownURL(),
		})
	}
	return cfg, nil
}

// warnDemoKeys says, loudly, when a configuration file trusts one of the
// example applications' demo keys, whose private halves anyone can read.
func (l *Loader) warnDemoKeys(cfg *config.Config) {
	for i := range cfg.Applications {
		a := &cfg.Applications[i]
		for _, kid := range examples.DemoKeyIDs() {
			if _, ok := a.Keys.Lookup(kid); ok {
				l.Logger.Warn("an application trusts a public demo key from deploy/examples/keys: anyone can act as it; give it its own keys",
					"application", a.ID(), "kid", kid)
			}
		}
	}
}

// Files are the files whose change calls for a reload.
func (l *Loader) Files(cfg *config.Config) []string {
	if l.ConfigPath == "" {
		return nil
	}
	files := []string{l.ConfigPath}
	if cfg.Signing.KeysFile != "" {
		files = append(files, cfg.Signing.KeysFile)
	}
	return files
}

// Build loads the configuration and keys and builds a runtime.
func (l *Loader) Build(ctx context.Context) (*Runtime, error) {
	cfg, err := l.Config()
	if err != nil {
		return nil, err
	}
	signer := l.Ephemeral
	if cfg.Signing.KeysFile != "" {
		keys, err := exchange.LoadKeysFile(cfg.Signing.KeysFile)
		if err != nil {
			return nil, fmt.Errorf("signing.keysFile: %w", err)
		}
		if signer, err = exchange.NewSigner(keys...); err != nil {
			return nil, fmt.Errorf("signing.keysFile: %w", err)
		}
		l.Logger.Info("signing keys loaded", "file", cfg.Signing.KeysFile, "published", len(keys), "signing_kid", keys[0].ID)
	} else if signer == nil {
		return nil, errors.New("the configuration names no signing.keysFile, and vakt started with one; restart to sign with a generated key")
	}
	return NewRuntime(ctx, cfg, Options{Logger: l.Logger, Signer: signer, Replay: l.Replay})
}
