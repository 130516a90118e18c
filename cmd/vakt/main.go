// Command vakt is an authorization service: Envoy ext_authz, token
// introspection and token exchange over one validation engine.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/buildinfo"
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
