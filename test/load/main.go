// Command load measures Envoy's Check against three servers side by side,
// on this machine: a null ext_authz server that allows everything, a naive
// one that checks a token with golang-jwt and nothing else, and vakt. Each
// server runs as a process of its own with GOMAXPROCS=1, pinned to one core
// with taskset when it is there; one lean closed-loop gRPC client on the
// other core sends CheckRequests marshalled beforehand, so that the client
// is never what saturates. It reports, per server, requests per second,
// latency (p50, p99), the server's CPU time per request (from /proc) and,
// for vakt, the live heap per cached token and the share of CPU time spent
// in garbage collection; and the ratios to the null and naive servers.
//
//	cd test/load && go run . -tokens 20000 -duration 20s
//
// It is a benchmark, not a test: nothing here fails a build.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		if err := serve(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "load serve:", err)
			os.Exit(1)
		}
		return
	}
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	opts := options{}
	fs.IntVar(&opts.tokens, "tokens", 20_000, "distinct tokens, all cached by vakt after a warm-up pass")
	fs.DurationVar(&opts.duration, "duration", 20e9, "how long each server is measured")
	fs.IntVar(&opts.inFlight, "in-flight", 50, "requests in flight at once")
	fs.IntVar(&opts.conns, "conns", 4, "gRPC connections")
	fs.BoolVar(&opts.uncached, "uncached", false, "run vakt with its verified-token cache off (compare with naive)")
	fs.BoolVar(&opts.noMetadata, "no-metadata", false, "run vakt with dynamicMetadata: false for the application (no claims in the answer)")
	fs.StringVar(&opts.only, "only", "", "measure one server only: null, naive or vakt")
	_ = fs.Parse(os.Args[1:])
	if err := run(opts); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}
