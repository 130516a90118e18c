package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/vakt-dev/vakt/agent"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/server"
)

// agentFlags are `vakt agent`'s flags.
type agentFlags struct {
	grpc, http, admin string
	decisions         string
	drain             time.Duration
	upstreamCA        string
}

// runAgent runs `vakt agent`: token exchange and introspection for one
// application, configured from the NAIS environment variables.
func runAgent(args []string, getenv func(string) string, stderr io.Writer) int {
	f, log, code := parseAgentFlags(args, stderr)
	if log == nil {
		return code
	}
	env, err := agent.EnvFrom(getenv)
	if err != nil {
		log.Error("the agent's environment is incomplete", "error", err)
		return 1
	}
	env.UpstreamCAFile = f.upstreamCA
	if f.http == "" {
		f.http = env.BindAddress
	}
	if f.http == "" {
		f.http = "127.0.0.1:3000"
	}
	if err := f.run(env, log); err != nil {
		logFailure(log, err)
		return 1
	}
	return 0
}

// parseAgentFlags parses and checks the agent's flags; with no logger,
// the agent exits with code.
func parseAgentFlags(args []string, stderr io.Writer) (*agentFlags, *slog.Logger, int) {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &agentFlags{}
	fs.StringVar(&f.grpc, "grpc", "127.0.0.1:9100", "gRPC listen address")
	fs.StringVar(&f.http, "http", "", "HTTP listen address (default: BIND_ADDRESS, else 127.0.0.1:3000)")
	fs.StringVar(&f.admin, "admin", "127.0.0.1:9091", "admin listen address (/metrics, /debug/pprof/, /healthz, /readyz), or off")
	fs.StringVar(&f.decisions, "log-decisions", config.LogDecisionsDeny, "decisions logged: deny, all or none")
	fs.DurationVar(&f.drain, "drain-delay", config.DefaultDrainDelay, "on SIGTERM, how long to keep answering while NOT_SERVING")
	fs.StringVar(&f.upstreamCA, "upstream-ca", "", "CAs (PEM) that verify the token endpoint's certificate (default: the system's)")
	logger := logFlags(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return nil, nil, 2
	}
	log, err := logger()
	if err != nil {
		fmt.Fprintf(stderr, "vakt: %v\n", err)
		return nil, nil, 2
	}
	switch f.decisions {
	case config.LogDecisionsDeny, config.LogDecisionsAll, config.LogDecisionsNone:
	default:
		fmt.Fprintf(stderr, "vakt: --log-decisions: %q is not deny, all or none\n", f.decisions)
		return nil, nil, 2
	}
	if f.drain < 0 || f.drain > 5*time.Minute {
		fmt.Fprintln(stderr, "vakt: --drain-delay must be between 0s and 5m")
		return nil, nil, 2
	}
	if f.admin == config.AdminOff {
		f.admin = ""
	}
	return f, log, 0
}

// run serves the agent for env until a signal stops it, or one of its
// parts does: the key sets' fetches and the listeners.
func (f *agentFlags) run(env *agent.Env, log *slog.Logger) error {
	p := newParts()
	tracing, err := startTracing(log)
	if err != nil {
		p.abort()
		return fail("tracing", err)
	}
	defer stopTracing(tracing, log)
	rt, err := server.NewAgentRuntime(p.ctx, env, log, tracing)
	if err != nil {
		p.abort()
		return fail("cannot start", err)
	}
	p.run("key sets", func(context.Context) error { rt.Wait(); return nil })
	rt.Log.Decisions = f.decisions
	ls, err := server.Listen(f.grpc, f.http, f.admin)
	if err != nil {
		p.abort()
		return fail("cannot listen", err)
	}
	log.Info("agent", "client_id", env.ClientID, "token_endpoint", env.TokenEndpoint, "kid", env.Key.ID)
	services := server.AgentServices(rt, server.NewMetrics(), log).WithTracing(tracing).WithShutdown(f.drain, 0)
	p.run("listeners", func(ctx context.Context) error { return server.Serve(ctx, services, ls) })
	return p.wait()
}
