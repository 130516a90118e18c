// Command vakt is an authorization service: Envoy ext_authz, token
// introspection and token exchange over one validation engine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/vakt-dev/vakt/agent"
	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/cmd/vakt/internal/devidp"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/buildinfo"
	"github.com/vakt-dev/vakt/kube"
	"github.com/vakt-dev/vakt/server"
)

const usage = `vakt: authorization for a service mesh

Usage:
  vakt serve [--config FILE] [--log-level debug|info|warn|error] [--log-format json|text]
  vakt agent [--grpc ADDR] [--http ADDR] [--admin ADDR|off] [--log-decisions deny|all|none]
      [--drain-delay 5s] [--upstream-ca FILE] [--log-level ...] [--log-format ...]
      beside one application, configured by TOKEN_X_* and IDPORTEN_* variables
  vakt demo                 the whole flow, step by step, on the development defaults
  vakt assertion --key FILE --client ID --audience URL
      print a client assertion (RFC 7523) signed with a private JWK
  vakt check-config FILE
  vakt explain --config FILE --app CLUSTER:NS:APP [--method GET] --path PATH
      [--token T | --caller CLUSTER:NS:APP [--scope "a b"]]
      what Check would answer, and why; exit 0 allow, 1 deny
  vakt keys generate [--alg RS256|ES256|EdDSA] [--add FILE]
  vakt keys promote FILE KID
  vakt keys retire FILE KID
  vakt keys rotate [--kubeconfig FILE] [--jwker] NAMESPACE/NAME
      a new client key for an Application (or Jwker) with spec.secretName
  vakt version              the version, source revision and Go version

Without --config, serve runs on the embedded development default
(deploy/examples/vakt.yaml) with an ephemeral signing key.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "check-config":
		return checkConfig(args[1:], stdout, stderr)
	case "keys":
		return keys(args[1:], stdout, stderr)
	case "agent":
		return runAgent(args[1:], os.Getenv, stderr)
	case "assertion":
		return assertion(args[1:], stdout, stderr)
	case "demo":
		return demo(args[1:], stdout, stderr)
	case "explain":
		return explain(args[1:], stdout, stderr)
	case "version", "--version":
		b := buildinfo.Read()
		fmt.Fprintf(stdout, "vakt %s (revision %s, %s)\n", b.Version, b.Revision, b.GoVersion)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "vakt: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func checkConfig(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprint(stderr, "usage: vakt check-config FILE\n")
		return 2
	}
	cfg, err := config.LoadFile(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "%s:\n%v\n", args[0], err)
		return 1
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (default: the embedded development configuration)")
	logger := logFlags(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cfgPath == "" && flagGiven(fs, "config") {
		// An empty --config (an unset variable in a script) must not start
		// the development defaults, whose identity provider issues tokens
		// to anyone.
		fmt.Fprintln(stderr, "vakt: --config is empty; leave it out to run on the development defaults")
		return 2
	}
	log, err := logger()
	if err != nil {
		fmt.Fprintf(stderr, "vakt: %v\n", err)
		return 2
	}

	loader := &server.Loader{Logger: log}
	var devIDP *devidp.IDP
	if *cfgPath == "" {
		// The development identity provider's issuer is vakt's own URL:
		// read it from the embedded default before adding the provider.
		def, err := developmentConfig(nil, "")()
		if err != nil {
			log.Error("the embedded development configuration is invalid", "error", err)
			return 1
		}
		log.Warn("running on the embedded development configuration (deploy/examples/vakt.yaml): example applications with public demo keys, an ephemeral signing key; not for production")
		if devIDP, err = devidp.New(def.Issuer, nil); err != nil {
			log.Error("development identity provider", "error", err)
			return 1
		}
		log.Warn(devIDP.String())
		loader.Config = developmentConfig(devIDP, "")
	} else {
		loader.Config = fileConfig(*cfgPath, log)
	}
	cfg, err := loader.Config()
	if err != nil {
		log.Error("configuration is invalid", "file", *cfgPath, "error", err)
		return 1
	}
	loader.Started = cfg
	if cfg.Signing.KeysFile == "" {
		if loader.Ephemeral, err = newEphemeralSigner(cfg, log); err != nil {
			log.Error("signing keys", "error", err)
			return 1
		}
	}
	tracing, err := startTracing(log)
	if err != nil {
		log.Error("tracing", "error", err)
		return 1
	}
	defer stopTracing(tracing, log)
	var cur server.Current
	loader.Replay = exchange.NewMemoryReplay(exchange.MemoryReplayConfig{MaxBytes: int64(cfg.Replay.Memory), MaxPerClient: cfg.Replay.MaxPerClient})
	if r := cfg.Replay.Redis; r != nil {
		redis.SetLogger(exchange.RedisLogger{Log: log})
		opts := exchange.RedisOptions{Address: r.Address, Username: r.Username, Password: r.Secret(), DB: r.DB, MaxPerClient: cfg.Replay.MaxPerClient}
		if r.TLS != nil {
			opts.TLS = r.TLS.Config()
		}
		// The configuration in force says the credentials, so that a
		// password rotated in its file (a Secret) needs no restart.
		opts.Credentials = func() (string, string) {
			r := cfg.Replay.Redis
			if rt := cur.Load(); rt != nil {
				r = rt.Config.Replay.Redis
			}
			return r.Username, r.Secret()
		}
		rr := exchange.NewRedisReplay(opts, nil)
		defer rr.Close()
		if h := tracing.RedisHook(r.Address); h != nil {
			rr.AddHook(h)
		}
		loader.Replay = rr
		log.Info("client assertion ids are kept in Redis", "address", r.Address)
	}

	// Listen before building: key sets start fetching at once, and a fetch
	// from vakt's own HTTP port (the development identity provider) must
	// wait in the accept queue rather than be refused.
	ls, err := server.Listen(cfg.Listen.GRPC, cfg.Listen.HTTP, cfg.Listen.AdminAddress())
	if err != nil {
		log.Error("cannot listen", "error", err)
		return 1
	}
	if cfg.Listen.Authz != "" {
		if err := ls.ListenAuthz(cfg.Listen.Authz); err != nil {
			ls.Close()
			log.Error("cannot listen", "error", err)
			return 1
		}
	}
	ctx := signalContext()
	metrics := server.NewMetrics()
	loader.Replay = metrics.CountReplay(loader.Replay)
	// Identity providers' keys outlive each configuration: a reload while a
	// provider is down keeps its last good keys.
	loader.KeySets = server.NewKeySets(ctx, log, nil)
	loader.KeySets.TraceWith(tracing)
	reloader := &server.Reloader{Current: &cur, Build: loader.Build, Logger: log, OnResult: metrics.Reloaded}
	var kubeCtl *kube.Controller
	if k := cfg.Kubernetes; k.Enabled {
		keyStats := func(id string) (authz.KeyStats, bool) {
			if rt := cur.Load(); rt != nil {
				return rt.ClientKeyStats(id)
			}
			return authz.KeyStats{}, false
		}
		if kubeCtl, err = kube.New(kube.Options{Config: k, Logger: log, OnChange: reloader.Kick, KeyStats: keyStats}); err != nil {
			log.Error("kubernetes", "error", err)
			return 1
		}
		loader.Resources = kubeCtl.Source()
		if err := metrics.Register(kubeCtl.Source().Collector()); err != nil {
			log.Error("kubernetes: metrics", "error", err)
			return 1
		}
	}
	if *cfgPath != "" {
		reloader.Files = server.WatchedFiles(*cfgPath, &cur)
	}
	if err := reloader.Start(ctx); err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	// Every long-lived part runs in the group, and serve returns once each
	// has stopped: the file watch, the Kubernetes controller (its Lease
	// released, so that another replica takes it at once) and the
	// listeners. One that fails stops the others.
	g, gctx := errgroup.WithContext(ctx)
	watched, err := reloader.Watch(gctx)
	switch {
	case err != nil && kubeCtl != nil:
		log.Error("cannot watch for changes, which Kubernetes-native mode needs", "error", err)
		return 1
	case err != nil:
		log.Error("cannot watch the configuration for changes; changes need a restart", "error", err)
	default:
		g.Go(func() error { <-watched; return nil })
	}
	if kubeCtl != nil {
		// After Watch: the first synchronisation kicks a reload, which
		// brings the resources in and makes vakt ready.
		g.Go(func() error { return kubeCtl.Run(gctx) })
	}
	services := server.AuthorityServices(&cur, metrics, log).WithLimits(cfg.Limits.Check, cfg.Limits.Other).WithTracing(tracing).
		WithShutdown(cfg.Shutdown.DrainDelay.Std(), cfg.Shutdown.Grace.Std())
	if cfg.Listen.TLS != nil {
		// The certificate of each handshake is the configuration in
		// force's: a reload renews it without a restart.
		services.WithTLS(func() *config.TLS { return cur.Load().Config.Listen.TLS })
	}
	if devIDP != nil {
		services.Mount(devidp.PathPrefix, devIDP.Handler())
	}
	g.Go(func() error { return server.Serve(gctx, services, ls) })
	if err := g.Wait(); err != nil {
		log.Error("stopped with an error", "error", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// signalContext ends at the first SIGINT or SIGTERM, when vakt starts to
// drain; a second signal stops it at once, as the signal's default does.
func signalContext() context.Context {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx
}

// flagGiven reports whether the flag name was set on the command line.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// newEphemeralSigner generates the one key vakt signs with when
// configured with no keys file.
func newEphemeralSigner(cfg *config.Config, log *slog.Logger) (*exchange.Signer, error) {
	key, err := exchange.GenerateSigningKey(cfg.Signing.Algorithm)
	if err != nil {
		return nil, err
	}
	log.Warn("no signing.keysFile: signing with a key generated at start; tokens vakt issues will not verify after a restart", "kid", key.ID, "alg", key.Alg)
	return exchange.NewSigner(key)
}

// logFlags adds --log-level and --log-format to fs; the returned function,
// called after parsing, makes the logger they describe.
func logFlags(fs *flag.FlagSet, w io.Writer) func() (*slog.Logger, error) {
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "json", "json or text")
	return func() (*slog.Logger, error) { return newLogger(w, *level, *format) }
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, errors.New(`--log-format: must be "json" or "text"`)
	}
}

// runAgent runs `vakt agent`: token exchange and introspection for one
// application, configured from the NAIS environment variables.
func runAgent(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	grpcAddr := fs.String("grpc", "127.0.0.1:9100", "gRPC listen address")
	httpAddr := fs.String("http", "", "HTTP listen address (default: BIND_ADDRESS, else 127.0.0.1:3000)")
	adminAddr := fs.String("admin", "127.0.0.1:9091", "admin listen address (/metrics, /debug/pprof/, /healthz, /readyz), or off")
	decisions := fs.String("log-decisions", config.LogDecisionsDeny, "decisions logged: deny, all or none")
	drain := fs.Duration("drain-delay", config.DefaultDrainDelay, "on SIGTERM, how long to keep answering while NOT_SERVING")
	upstreamCA := fs.String("upstream-ca", "", "CAs (PEM) that verify the token endpoint's certificate (default: the system's)")
	logger := logFlags(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := logger()
	if err != nil {
		fmt.Fprintf(stderr, "vakt: %v\n", err)
		return 2
	}
	switch *decisions {
	case config.LogDecisionsDeny, config.LogDecisionsAll, config.LogDecisionsNone:
	default:
		fmt.Fprintf(stderr, "vakt: --log-decisions: %q is not deny, all or none\n", *decisions)
		return 2
	}
	env, err := agent.EnvFrom(getenv)
	if err != nil {
		log.Error("the agent's environment is incomplete", "error", err)
		return 1
	}
	env.UpstreamCAFile = *upstreamCA
	if *httpAddr == "" {
		*httpAddr = env.BindAddress
	}
	if *httpAddr == "" {
		*httpAddr = "127.0.0.1:3000"
	}
	if *drain < 0 || *drain > 5*time.Minute {
		fmt.Fprintln(stderr, "vakt: --drain-delay must be between 0s and 5m")
		return 2
	}
	ctx := signalContext()
	tracing, err := startTracing(log)
	if err != nil {
		log.Error("tracing", "error", err)
		return 1
	}
	defer stopTracing(tracing, log)
	rt, err := server.NewAgentRuntime(ctx, env, log, tracing)
	if err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	rt.Log.Decisions = *decisions
	if *adminAddr == config.AdminOff {
		*adminAddr = ""
	}
	ls, err := server.Listen(*grpcAddr, *httpAddr, *adminAddr)
	if err != nil {
		log.Error("cannot listen", "error", err)
		return 1
	}
	log.Info("agent", "client_id", env.ClientID, "token_endpoint", env.TokenEndpoint, "kid", env.Key.ID)
	if err := server.Serve(ctx, server.AgentServices(rt, server.NewMetrics(), log).WithTracing(tracing).WithShutdown(*drain, 0), ls); err != nil {
		log.Error("stopped with an error", "error", err)
		return 1
	}
	return 0
}
