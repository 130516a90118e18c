package main

import (
	"bufio"
	"context"
	"crypto"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/server"
)

// serve runs one server kind until stdin closes: it prints "listening
// ADDR", then on each line "stats" read from stdin answers "stats <live
// heap bytes> <gc cpu seconds> <total cpu seconds>".
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	kind := fs.String("kind", "null", "null, naive or vakt")
	dir := fs.String("dir", "", "the directory with keys.json and vakt.yaml")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// LOAD_CPUPROFILE=prefix writes each server's CPU profile, warm-up
	// included, to prefix.KIND.
	if prefix := os.Getenv("LOAD_CPUPROFILE"); prefix != "" {
		f, err := os.Create(prefix + "." + *kind)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var gs *grpc.Server
	switch *kind {
	case "null":
		gs = grpc.NewServer()
		authv3.RegisterAuthorizationServer(gs, nullServer{})
	case "naive":
		keys, err := exchange.LoadKeysFile(filepath.Join(*dir, "keys.json"))
		if err != nil {
			return err
		}
		gs = grpc.NewServer()
		authv3.RegisterAuthorizationServer(gs, &naiveServer{key: keys[0].Private.Public(), alg: keys[0].Alg})
	case "vakt":
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		cfgPath := filepath.Join(*dir, "vakt.yaml")
		loader := &server.Loader{
			Config: func() (*config.Config, error) { return config.LoadFile(cfgPath) },
			Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{}), Logger: log,
		}
		var cur server.Current
		rt, err := loader.Build(context.Background())
		if err != nil {
			return err
		}
		cur.Store(rt)
		gs, _ = server.AuthorityServices(&cur, nil, log).NewGRPCServer()
	default:
		return fmt.Errorf("unknown kind %q", *kind)
	}
	go func() { _ = gs.Serve(lis) }()
	fmt.Printf("listening %s\n", lis.Addr())
	signal.Ignore(syscall.SIGINT)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if strings.TrimSpace(in.Text()) == "stats" {
			fmt.Println(stats())
		}
	}
	gs.Stop()
	return nil
}

// stats is the live heap after a collection, and the GC's and the
// process's CPU time so far, as the runtime counts them.
func stats() string {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}, {Name: "/cpu/classes/total:cpu-seconds"}}
	metrics.Read(s)
	return fmt.Sprintf("stats %d %f %f", m.HeapAlloc, s[0].Value.Float64(), s[1].Value.Float64())
}

// nullServer allows everything: the floor, what gRPC itself costs.
type nullServer struct {
	authv3.UnimplementedAuthorizationServer
}

var okResponse = &authv3.CheckResponse{Status: &rpcstatus.Status{}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}

func (nullServer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return okResponse, nil
}

// naiveServer is what a team writes in an afternoon: golang-jwt verifies
// the token's signature, exp and aud, the scope is looked for, and the
// subject goes into a header. No path rules, no caller rules, no cache.
type naiveServer struct {
	authv3.UnimplementedAuthorizationServer
	key crypto.PublicKey
	alg string
}

func (s *naiveServer) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	auth := req.GetAttributes().GetRequest().GetHttp().GetHeaders()["authorization"]
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	deny := &authv3.CheckResponse{Status: &rpcstatus.Status{Code: 16}}
	if !ok {
		return deny, nil
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return s.key, nil },
		jwt.WithValidMethods([]string{s.alg}), jwt.WithAudience(appB), jwt.WithExpirationRequired())
	if err != nil {
		return deny, nil
	}
	scope, _ := claims["scope"].(string)
	if !slices.Contains(strings.Fields(scope), "read:users") {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: 7}}, nil
	}
	sub, _ := claims["sub"].(string)
	return &authv3.CheckResponse{Status: &rpcstatus.Status{}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
		Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-vakt-subject", Value: sub}}},
	}}}, nil
}
