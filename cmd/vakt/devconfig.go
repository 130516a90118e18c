package main

import (
	"log/slog"

	"github.com/vakt-dev/vakt/cmd/vakt/internal/devidp"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/deploy/examples"
)

// Development-only wiring lives here, not in server: the embedded example
// configuration and the development identity provider reach vakt only
// through these two functions.

// fileConfig loads a configuration file, and says loudly when it trusts one
// of the example applications' demo keys, whose private halves anyone can
// read.
func fileConfig(path string, log *slog.Logger) func() (*config.Config, error) {
	return func() (*config.Config, error) {
		cfg, err := config.LoadFile(path)
		if err != nil {
			return nil, err
		}
		for i := range cfg.Applications {
			a := &cfg.Applications[i]
			for _, kid := range examples.DemoKeyIDs() {
				if _, ok := a.Keys.Lookup(kid); ok {
					log.Warn("an application trusts a public demo key from deploy/examples/keys: anyone can act as it; give it its own keys",
						"application", a.ID(), "kid", kid)
				}
			}
		}
		return cfg, nil
	}
}

// developmentConfig is the embedded default (deploy/examples/vakt.yaml)
// with the development identity provider added as "idporten": only here,
// so that no configuration file can ever enable it. issuer, when set,
// replaces the default's (vakt demo listens on free ports).
func developmentConfig(idp *devidp.IDP, issuer string) func() (*config.Config, error) {
	return func() (*config.Config, error) {
		cfg, err := config.Load(examples.Development, ".")
		if err != nil {
			return nil, err
		}
		if issuer != "" {
			cfg.Issuer = issuer
		}
		if idp != nil {
			cfg.IdentityProviders = append(cfg.IdentityProviders, config.IdentityProvider{
				Name: devidp.Name, Issuer: idp.Issuer(), WellKnownURL: idp.WellKnownURL(),
			})
		}
		return cfg, nil
	}
}
