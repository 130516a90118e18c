package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/cmd/vakt/internal/devidp"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/kube"
	"github.com/vakt-dev/vakt/server"
)

// serve runs `vakt serve` until a signal stops it, or one of its parts
// does.
func serve(args []string, stderr io.Writer) int {
	cfgPath, log, code := serveFlags(args, stderr)
	if log == nil {
		return code
	}
	if err := runAuthority(cfgPath, log); err != nil {
		logFailure(log, err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// serveFlags parses serve's flags: the configuration file ("": the
// development defaults) and the logger; with no logger, serve exits with
// code.
func serveFlags(args []string, stderr io.Writer) (cfgPath string, log *slog.Logger, code int) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (default: the embedded development configuration)")
	logger := logFlags(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return "", nil, 2
	}
	if *path == "" && flagGiven(fs, "config") {
		// An empty --config (an unset variable in a script) must not start
		// the development defaults, whose identity provider issues tokens
		// to anyone.
		fmt.Fprintln(stderr, "vakt: --config is empty; leave it out to run on the development defaults")
		return "", nil, 2
	}
	log, err := logger()
	if err != nil {
		fmt.Fprintf(stderr, "vakt: %v\n", err)
		return "", nil, 2
	}
	return *path, log, 0
}

// authority is what `vakt serve` wires together, step by step.
type authority struct {
	log     *slog.Logger
	cfgPath string         // "": the embedded development configuration
	cfg     *config.Config // the configuration vakt starts on
	loader  *server.Loader
	cur     server.Current
	devIDP  *devidp.IDP // on the development configuration only
	tracing *server.Tracing
	metrics *server.Metrics
	// reloader installs the first runtime and every reload's.
	reloader *server.Reloader
	kube     *kube.Controller // in Kubernetes-native mode only
}

// runAuthority runs vakt serve on the configuration at cfgPath, and
// returns once every part has stopped.
func runAuthority(cfgPath string, log *slog.Logger) error {
	a := &authority{log: log, cfgPath: cfgPath}
	if err := a.load(); err != nil {
		return err
	}
	tracing, err := startTracing(log)
	if err != nil {
		return fail("tracing", err)
	}
	defer stopTracing(tracing, log)
	a.tracing = tracing
	closeReplay := a.replayStore()
	defer closeReplay()
	// Listen before building: key sets start fetching at once, and a fetch
	// from vakt's own HTTP port (the development identity provider) must
	// wait in the accept queue rather than be refused.
	ls, err := listen(&a.cfg.Listen)
	if err != nil {
		return fail("cannot listen", err)
	}
	p := newParts()
	if err := a.start(p, ls); err != nil {
		p.abort()
		ls.Close()
		return err
	}
	return p.wait()
}

// load reads the configuration vakt starts on: the file, else the
// embedded development default with the development identity provider.
func (a *authority) load() error {
	a.loader = &server.Loader{Logger: a.log}
	if a.cfgPath == "" {
		if err := a.development(); err != nil {
			return err
		}
	} else {
		a.loader.Config = fileConfig(a.cfgPath, a.log)
	}
	cfg, err := a.loader.Config()
	if err != nil {
		return fail("configuration is invalid", err, "file", a.cfgPath)
	}
	a.cfg, a.loader.Started = cfg, cfg
	if cfg.Signing.KeysFile == "" {
		if a.loader.Ephemeral, err = newEphemeralSigner(cfg, a.log); err != nil {
			return fail("signing keys", err)
		}
	}
	return nil
}

// development sets the loader on the embedded development default with
// the development identity provider, whose issuer is vakt's own URL: read
// from the default before the provider is added.
func (a *authority) development() error {
	def, err := developmentConfig(nil, "")()
	if err != nil {
		return fail("the embedded development configuration is invalid", err)
	}
	a.log.Warn("running on the embedded development configuration (deploy/examples/vakt.yaml): example applications with public demo keys, an ephemeral signing key; not for production")
	if a.devIDP, err = devidp.New(def.Issuer, nil); err != nil {
		return fail("development identity provider", err)
	}
	a.log.Warn(a.devIDP.String())
	a.loader.Config = developmentConfig(a.devIDP, "")
	return nil
}

// replayStore sets the store of client assertion ids: in memory, or in
// Redis when configured. The function returned closes it.
func (a *authority) replayStore() (closeStore func()) {
	replay := a.cfg.Replay
	a.loader.Replay = exchange.NewMemoryReplay(exchange.MemoryReplayConfig{MaxBytes: int64(replay.Memory), MaxPerClient: replay.MaxPerClient})
	r := replay.Redis
	if r == nil {
		return func() {}
	}
	redis.SetLogger(exchange.RedisLogger{Log: a.log})
	opts := exchange.RedisOptions{Address: r.Address, Username: r.Username, Password: r.Secret(), DB: r.DB, MaxPerClient: replay.MaxPerClient}
	if r.TLS != nil {
		opts.TLS = r.TLS.Config()
	}
	// The configuration in force says the credentials, so that a password
	// rotated in its file (a Secret) needs no restart.
	opts.Credentials = func() (string, string) {
		r := r
		if rt := a.cur.Load(); rt != nil {
			r = rt.Config.Replay.Redis
		}
		return r.Username, r.Secret()
	}
	rr := exchange.NewRedisReplay(opts, nil)
	if h := a.tracing.RedisHook(r.Address); h != nil {
		rr.AddHook(h)
	}
	a.loader.Replay = rr
	a.log.Info("client assertion ids are kept in Redis", "address", r.Address)
	return func() { rr.Close() }
}

// listen opens the configured listeners.
func listen(l *config.Listen) (*server.Listeners, error) {
	ls, err := server.Listen(l.GRPC, l.HTTP, l.AdminAddress())
	if err != nil {
		return nil, err
	}
	if l.Authz != "" {
		if err := ls.ListenAuthz(l.Authz); err != nil {
			ls.Close()
			return nil, err
		}
	}
	return ls, nil
}

// start builds the first runtime and starts the parts in p: the key sets'
// fetches, the watch that reloads, the Kubernetes controller and, last,
// the listeners. On an error, the parts it started are p's to stop.
func (a *authority) start(p *parts, ls *server.Listeners) error {
	a.metrics = server.NewMetrics()
	a.loader.Replay = a.metrics.CountReplay(a.loader.Replay)
	// Identity providers' keys outlive each configuration: a reload while a
	// provider is down keeps its last good keys.
	a.loader.KeySets = server.NewKeySets(p.ctx, a.log, nil)
	a.loader.KeySets.TraceWith(a.tracing)
	p.run("key sets", func(context.Context) error { a.loader.KeySets.Wait(); return nil })
	a.reloader = &server.Reloader{Current: &a.cur, Build: a.loader.Build, Logger: a.log, OnResult: a.metrics.Reloaded}
	if err := a.kubernetes(); err != nil {
		return err
	}
	if a.cfgPath != "" {
		a.reloader.Files = server.WatchedFiles(a.cfgPath, &a.cur)
	}
	if err := a.reloader.Start(p.ctx); err != nil {
		return fail("cannot start", err)
	}
	if err := a.watch(p); err != nil {
		return err
	}
	if a.kube != nil {
		// After the watch: the first synchronisation kicks a reload, which
		// brings the resources in and makes vakt ready. It returns once
		// its Lease is released, so that another replica takes it at once.
		p.run("kubernetes", a.kube.Run)
	}
	services := a.services()
	p.run("listeners", func(ctx context.Context) error { return server.Serve(ctx, services, ls) })
	return nil
}

// kubernetes makes the controller of Kubernetes-native mode, when
// configured: each reload merges its resources, and a change of them
// kicks one.
func (a *authority) kubernetes() error {
	k := a.cfg.Kubernetes
	if !k.Enabled {
		return nil
	}
	keyStats := func(id string) (authz.KeyStats, bool) {
		if rt := a.cur.Load(); rt != nil {
			return rt.ClientKeyStats(id)
		}
		return authz.KeyStats{}, false
	}
	ctl, err := kube.New(kube.Options{Config: k, Logger: a.log, OnChange: a.reloader.Kick, KeyStats: keyStats})
	if err != nil {
		return fail("kubernetes", err)
	}
	if err := a.metrics.Register(ctl.Source().Collector()); err != nil {
		return fail("kubernetes: metrics", err)
	}
	a.kube = ctl
	a.loader.Resources = ctl.Source()
	return nil
}

// watch starts the part that reloads on SIGHUP, on a change of the
// configuration's files and on a Kick. Without it a file's change needs a
// restart; Kubernetes-native mode cannot do without it.
func (a *authority) watch(p *parts) error {
	watched, err := a.reloader.Watch(p.ctx)
	switch {
	case err != nil && a.kube != nil:
		return fail("cannot watch for changes, which Kubernetes-native mode needs", err)
	case err != nil:
		a.log.Error("cannot watch the configuration for changes; changes need a restart", "error", err)
		return nil
	}
	p.run("configuration watch", func(context.Context) error { <-watched; return nil })
	return nil
}

// services are what the listeners serve, from the runtime in force.
func (a *authority) services() *server.Services {
	cfg := a.cfg
	s := server.AuthorityServices(&a.cur, a.metrics, a.log).WithLimits(cfg.Limits.Check, cfg.Limits.Other).WithTracing(a.tracing).
		WithShutdown(cfg.Shutdown.DrainDelay.Std(), cfg.Shutdown.Grace.Std())
	if cfg.Listen.TLS != nil {
		// The certificate of each handshake is the configuration in
		// force's: a reload renews it without a restart.
		s.WithTLS(func() *config.TLS { return a.cur.Load().Config.Listen.TLS })
	}
	if a.devIDP != nil {
		s.Mount(devidp.PathPrefix, a.devIDP.Handler())
	}
	return s
}
