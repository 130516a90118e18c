package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/server"
)

// explain prints what Check would answer a request that has not happened,
// and every step that led there. Exit status: 0 allow, 1 deny (or an
// outage), 2 a bad command line or configuration.
func explain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (required)")
	app := fs.String("app", "", "the application called, cluster:namespace:name (required)")
	method := fs.String("method", "GET", "the request's method")
	path := fs.String("path", "", "the request's path (required)")
	token := fs.String("token", "", "the bearer token the request carries")
	caller := fs.String("caller", "", "instead of --token: a token vakt issued to this application, cluster:namespace:name")
	scope := fs.String("scope", "", "with --caller: the token's scopes, space-separated")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "vakt explain: unexpected argument %q\n", fs.Arg(0))
		return 2
	case *cfgPath == "" || *app == "" || *path == "":
		fmt.Fprintln(stderr, "usage: vakt explain --config FILE --app CLUSTER:NS:APP [--method GET] --path PATH [--token T | --caller CLUSTER:NS:APP [--scope \"a b\"]]")
		return 2
	case *token != "" && *caller != "":
		fmt.Fprintln(stderr, "vakt explain: --token and --caller exclude each other")
		return 2
	case *scope != "" && *caller == "":
		fmt.Fprintln(stderr, "vakt explain: --scope goes with --caller")
		return 2
	}
	cfg, err := config.LoadFile(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "vakt explain: configuration is invalid: %v\n", err)
		return 2
	}
	// A made-up token is signed with a key of its own, which the runtime's
	// own identity provider trusts; a given token is verified with the
	// configuration's keys, as vakt serve would.
	var signer *exchange.Signer
	if *caller == "" && cfg.Signing.KeysFile != "" {
		keys, err := exchange.LoadKeysFile(cfg.Signing.KeysFile)
		if err == nil {
			signer, err = exchange.NewSigner(keys...)
		}
		if err != nil {
			fmt.Fprintf(stderr, "vakt explain: signing.keysFile: %v\n", err)
			return 2
		}
	} else {
		key, err := exchange.GenerateSigningKey(cfg.Signing.Algorithm)
		if err == nil {
			signer, err = exchange.NewSigner(key)
		}
		if err != nil {
			fmt.Fprintf(stderr, "vakt explain: %v\n", err)
			return 2
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	rt, err := server.NewRuntime(ctx, cfg, server.Options{Logger: log, Signer: signer, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{})})
	if err != nil {
		fmt.Fprintf(stderr, "vakt explain: %v\n", err)
		return 2
	}
	req := server.ExplainRequest{App: *app, Method: *method, Path: *path}
	switch {
	case *token != "":
		req.Authorization = "Bearer " + strings.TrimPrefix(*token, "Bearer ")
	case *caller != "":
		now := time.Now()
		claims := map[string]any{
			"iss": cfg.Issuer, "sub": "explain", "aud": *app, "client_id": *caller,
			"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		}
		if *scope != "" {
			claims["scope"] = *scope
		}
		tok, err := signer.Sign("at+jwt", claims)
		if err != nil {
			fmt.Fprintf(stderr, "vakt explain: %v\n", err)
			return 2
		}
		req.Authorization = "Bearer " + tok
		scopes := "no scope"
		if *scope != "" {
			scopes = fmt.Sprintf("scope %q", *scope)
		}
		req.Supposed = fmt.Sprintf("one vakt issued to %s with %s (made up for --caller)", *caller, scopes)
	}
	e := server.Explain(ctx, rt, req)
	fmt.Fprint(stdout, e)
	if !e.Allow {
		return 1
	}
	return 0
}
