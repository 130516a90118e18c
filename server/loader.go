package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

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
	// Resources, when set, are applications declared outside the file,
	// merged into every configuration built (Kubernetes-native mode:
	// kube.Source).
	Resources ResourceSource

	// Now is the runtimes' clock; time.Now when nil.
	Now func() time.Time

	// Started, when set, is the configuration the process started with: a
	// reload that changes what only a restart can (the listeners, the
	// replay store) is refused, saying so, rather than half applied.
	Started *config.Config
}

// Build loads the configuration and keys and builds a runtime.
func (l *Loader) Build(ctx context.Context) (*Runtime, error) {
	cfg, err := l.Config()
	if err != nil {
		return nil, err
	}
	if l.Started != nil {
		if err := needsRestart(l.Started, cfg); err != nil {
			return nil, err
		}
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
		if fi, err := os.Stat(cfg.Signing.KeysFile); err == nil && exposed(fi) {
			l.Logger.Warn("signing.keysFile holds private keys but is readable by others than its owner and vakt's group; chmod 600 it (Kubernetes: defaultMode: 0440 with fsGroup, or 0400)",
				"file", cfg.Signing.KeysFile, "mode", fi.Mode().Perm().String())
		}
		if signer, err = exchange.NewSigner(keys...); err != nil {
			return nil, fmt.Errorf("signing.keysFile: %w", err)
		}
		l.Logger.Info("signing keys loaded", "file", cfg.Signing.KeysFile, "published", len(keys), "signing_kid", keys[0].ID)
	} else if signer == nil {
		return nil, errors.New("the configuration names no signing.keysFile, and vakt started with one; restart to sign with a generated key")
	}
	opts := Options{Logger: l.Logger, Signer: signer, Replay: l.Replay, KeySets: l.KeySets, Now: l.Now}
	if l.Resources == nil {
		return NewRuntime(ctx, cfg, opts)
	}
	base := *cfg // before the merge appends to it
	base.Applications = slices.Clone(cfg.Applications)
	commit, notReady := l.Resources.Merge(cfg, false)
	rt, err := NewRuntime(ctx, cfg, opts)
	if err != nil {
		// A resource got past the checks but not the engine's: no team's
		// resource may stop everyone's reloads. The resources serving now
		// are kept; the newcomers wait.
		l.Logger.Error("the configuration with every resource could not be built; the resources serving now are kept, new ones wait", "error", err)
		commit, notReady = l.Resources.Merge(&base, true)
		if rt, err = NewRuntime(ctx, &base, opts); err != nil {
			return nil, err
		}
	}
	commit()
	rt.notReady = notReady
	return rt, nil
}

// ResourceSource is where applications declared outside the configuration
// file come from: the cluster's resources, in Kubernetes-native mode
// (kube.Source). Every configuration the Loader builds is merged with it.
type ResourceSource interface {
	// Merge adds the source's applications to cfg, a configuration not yet
	// in force, and makes cfg.Hash name them too; with servingOnly, only
	// those serving now, in the version that serves (the fallback when the
	// configuration with every one could not be built). The Loader calls
	// commit once it has the runtime built from cfg, which is then put in
	// force. notReady, when set, is why that runtime is not ready (the
	// source has not been read yet).
	Merge(cfg *config.Config, servingOnly bool) (commit func(), notReady error)
}

// WatchedFiles are the files whose change calls for a reload: the
// configuration file and every file the configuration in force names
// (signing keys, applications' key files, certificates, the Redis
// password).
func WatchedFiles(configPath string, cur *Current) func() []string {
	return func() []string {
		files := []string{configPath}
		if rt := cur.Load(); rt != nil {
			files = append(files, rt.Config.Files()...)
		}
		return files
	}
}

// needsRestart says what in next only a restart can apply: listen
// addresses, TLS turned on or off (a certificate, a key or client CAs
// changed are applied), and the replay store (a Redis client is made once;
// its credentials, asked for on each new connection, may change).
func needsRestart(started, next *config.Config) error {
	a, b := &started.Listen, &next.Listen
	var changed []string
	for _, f := range []struct {
		name string
		a, b string
	}{{"listen.grpc", a.GRPC, b.GRPC}, {"listen.http", a.HTTP, b.HTTP}, {"listen.admin", a.Admin, b.Admin}, {"listen.authz", a.Authz, b.Authz}} {
		if f.a != f.b {
			changed = append(changed, fmt.Sprintf("%s (%s → %s)", f.name, f.a, f.b))
		}
	}
	if (a.TLS == nil) != (b.TLS == nil) {
		changed = append(changed, "listen.tls (turned on or off)")
	}
	if !sameReplay(&started.Replay, &next.Replay) {
		changed = append(changed, "replay")
	}
	if ka, kb := started.Kubernetes, next.Kubernetes; ka.Enabled != kb.Enabled || ka.Kubeconfig != kb.Kubeconfig || ka.Jwkers != kb.Jwkers || ka.LeaseNamespace != kb.LeaseNamespace || !slices.Equal(ka.Namespaces, kb.Namespaces) {
		changed = append(changed, "kubernetes")
	}
	if len(changed) > 0 {
		return fmt.Errorf("%s changed: these changes need a restart; the running configuration stays in force", strings.Join(changed, ", "))
	}
	return nil
}

func sameReplay(a, b *config.Replay) bool {
	if a.Memory != b.Memory || a.MaxPerClient != b.MaxPerClient || (a.Redis == nil) != (b.Redis == nil) {
		return false
	}
	if a.Redis == nil {
		return true
	}
	// The credentials may change: each new connection asks for the
	// configuration's (RedisOptions.Credentials).
	ra, rb := a.Redis, b.Redis
	if ra.Address != rb.Address || ra.DB != rb.DB || (ra.TLS == nil) != (rb.TLS == nil) {
		return false
	}
	if ra.TLS == nil {
		return true
	}
	ta, tb := ra.TLS, rb.TLS
	return ta.CAFile == tb.CAFile && ta.CertFile == tb.CertFile && ta.KeyFile == tb.KeyFile && ta.ServerName == tb.ServerName
}

// exposed reports whether a private file may be read by others than its
// owner and the members of vakt's own group: Kubernetes mounts a Secret
// 0440 with the pod's fsGroup, which is vakt's group, and that is no
// exposure.
func exposed(fi os.FileInfo) bool {
	perm := fi.Mode().Perm()
	if perm&0o007 != 0 {
		return true
	}
	if perm&0o070 == 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return !ok || int(st.Gid) != os.Getegid()
}
