package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/vakt-dev/vakt/exchange"
)

const (
	issuer = "http://127.0.0.1:8080"
	app1   = "dev-gcp:team-a:app-1"
	appB   = "dev-gcp:team-b:app-b"
	check  = "/envoy.service.auth.v3.Authorization/Check"
)

type options struct {
	tokens, inFlight, conns int
	duration                time.Duration
	uncached                bool
	noMetadata              bool
	only                    string
}

// result is one server's measurement.
type result struct {
	kind          string
	requests      int64
	rps           float64
	p50, p99      time.Duration
	cpuPerRequest time.Duration
	heapPerToken  float64 // vakt: live heap per cached token, bytes
	gcShare       float64 // share of the server's CPU time in GC while measured
}

func run(o options) error {
	dir, err := os.MkdirTemp("", "vakt-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	reqs, err := prepare(dir, o)
	if err != nil {
		return err
	}
	pinned := pin()
	fmt.Printf("%d tokens, %d in flight over %d connections, %v per server; server pinned: %v\n",
		o.tokens, o.inFlight, o.conns, o.duration, pinned)
	var results []result
	for _, kind := range []string{"null", "naive", "vakt"} {
		if o.only != "" && o.only != kind {
			continue
		}
		r, err := measure(kind, dir, reqs, o, pinned)
		if err != nil {
			return fmt.Errorf("%s: %w", kind, err)
		}
		results = append(results, r)
	}
	report(os.Stdout, results, o)
	return nil
}

// prepare writes vakt's keys and configuration and makes one marshalled
// CheckRequest per token: an allowed GET /read to app-b, with the headers a
// mesh request carries.
func prepare(dir string, o options) ([][]byte, error) {
	key, err := exchange.GenerateSigningKey("ES256")
	if err != nil {
		return nil, err
	}
	if err := exchange.WriteKeysFile(filepath.Join(dir, "keys.json"), []*exchange.SigningKey{key}); err != nil {
		return nil, err
	}
	cache := 100_000
	if o.uncached {
		cache = -1
	}
	metadata := "true"
	if o.noMetadata {
		metadata = "false"
	}
	yaml := fmt.Sprintf(`issuer: %s
cluster: dev-gcp
validation:
  cacheSize: %d
  cacheMemory: 1Gi
signing:
  keysFile: keys.json
applications:
  - name: app-1
    namespace: team-a
  - name: app-b
    namespace: team-b
    dynamicMetadata: %s
    routes:
      - {methods: [GET], path: /read, scopes: ["read:users"]}
    accessPolicy:
      inbound:
        rules:
          - {application: app-1, namespace: team-a}
`, issuer, cache, metadata)
	if err := os.WriteFile(filepath.Join(dir, "vakt.yaml"), []byte(yaml), 0o600); err != nil {
		return nil, err
	}
	signer, err := exchange.NewSigner(key)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	reqs := make([][]byte, o.tokens)
	for i := range reqs {
		tok, err := signer.Sign(exchange.IssuedTokenType, map[string]any{
			"iss": issuer, "sub": fmt.Sprintf("user-%07d", i), "aud": appB, "client_id": app1,
			"idp": "https://idporten.example/", "acr": "idporten-loa-high", "pid": fmt.Sprintf("%011d", i),
			"scope": "openid read:users", "iat": now.Unix(), "exp": now.Add(2 * time.Hour).Unix(),
			"jti": fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i),
		})
		if err != nil {
			return nil, err
		}
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			ContextExtensions: map[string]string{"vakt_app": appB},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/read", Host: "app-b.example.com",
				Headers: map[string]string{
					":method": "GET", ":path": "/read", ":authority": "app-b.example.com", "authorization": "Bearer " + tok,
					"user-agent": "Go-http-client/1.1", "accept": "*/*", "x-request-id": fmt.Sprintf("req-%d", i),
				},
			}},
		}}
		if reqs[i], err = proto.Marshal(req); err != nil {
			return nil, err
		}
	}
	return reqs, nil
}

// pin moves this process to the second core when taskset is there, so the
// server has the first one to itself.
func pin() bool {
	if _, err := exec.LookPath("taskset"); err != nil || runtime.NumCPU() < 2 {
		return false
	}
	if exec.Command("taskset", "-a", "-p", "-c", "1", strconv.Itoa(os.Getpid())).Run() != nil {
		return false
	}
	runtime.GOMAXPROCS(1)
	return true
}

func measure(kind, dir string, reqs [][]byte, o options, pinned bool) (result, error) {
	self, err := os.Executable()
	if err != nil {
		return result{}, err
	}
	args := []string{self, "serve", "-kind", kind, "-dir", dir}
	if pinned {
		args = append([]string{"taskset", "-c", "0"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		return result{}, fmt.Errorf("the server said nothing")
	}
	addr, ok := strings.CutPrefix(lines.Text(), "listening ")
	if !ok {
		return result{}, fmt.Errorf("the server said %q", lines.Text())
	}
	stat := func() (heap, gc, total float64, err error) {
		if _, err := io.WriteString(stdin, "stats\n"); err != nil {
			return 0, 0, 0, err
		}
		if !lines.Scan() {
			return 0, 0, 0, fmt.Errorf("no stats")
		}
		_, err = fmt.Sscanf(lines.Text(), "stats %g %g %g", &heap, &gc, &total)
		return heap, gc, total, err
	}

	conns := make([]*grpc.ClientConn, o.conns)
	for i := range conns {
		if conns[i], err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}))); err != nil {
			return result{}, err
		}
		defer conns[i].Close()
	}
	// Warm up: every token once (vakt verifies and caches each), and the
	// connections.
	heap0, _, _, err := stat()
	if err != nil {
		return result{}, err
	}
	if _, _, err := loop(conns, reqs, o.inFlight, 0, len(reqs)); err != nil {
		return result{}, err
	}
	heap1, gc0, total0, err := stat()
	if err != nil {
		return result{}, err
	}
	cpu0, err := cpuTime(cmd.Process.Pid)
	if err != nil {
		return result{}, err
	}
	n, lat, err := loop(conns, reqs, o.inFlight, o.duration, 0)
	if err != nil {
		return result{}, err
	}
	cpu1, _ := cpuTime(cmd.Process.Pid)
	_, gc1, total1, err := stat()
	if err != nil {
		return result{}, err
	}
	slices.Sort(lat)
	r := result{
		kind: kind, requests: n, rps: float64(n) / o.duration.Seconds(),
		p50: lat[len(lat)/2], p99: lat[len(lat)*99/100],
		cpuPerRequest: (cpu1 - cpu0) / time.Duration(n),
	}
	if kind == "vakt" {
		r.heapPerToken = (heap1 - heap0) / float64(len(reqs))
	}
	if total1 > total0 {
		r.gcShare = (gc1 - gc0) / (total1 - total0)
	}
	return r, nil
}

// loop runs inFlight closed loops over the requests, for d (or, when d is
// 0, until count requests are done), and returns how many completed and
// their latencies.
func loop(conns []*grpc.ClientConn, reqs [][]byte, inFlight int, d time.Duration, count int) (int64, []time.Duration, error) {
	var next, done atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr atomic.Value
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := conns[w%len(conns)]
			own := make([]time.Duration, 0, 1<<16)
			var resp []byte
			for {
				i := next.Add(1) - 1
				if d == 0 && i >= int64(count) || d > 0 && time.Now().After(deadline) {
					break
				}
				start := time.Now()
				if err := conn.Invoke(context.Background(), check, reqs[i%int64(len(reqs))], &resp); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				own = append(own, time.Since(start))
				done.Add(1)
			}
			mu.Lock()
			lat = append(lat, own...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, nil, err
	}
	return done.Load(), lat, nil
}

// cpuTime is a process's user and system CPU time, from /proc.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command, which is in parentheses and may hold spaces.
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks, nil
}

// rawCodec sends bytes as they are and keeps the answer's bytes: the client
// spends nothing on protobuf.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

func report(w io.Writer, rs []result, o options) {
	byKind := map[string]result{}
	for _, r := range rs {
		byKind[r.kind] = r
	}
	fmt.Fprintln(w, "| server | requests/s | p50 | p99 | server CPU per request | vs. null | vs. naive | GC share of CPU | live heap per cached token |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		ratio := func(base string) string {
			b, ok := byKind[base]
			if !ok || b.cpuPerRequest == 0 {
				return ""
			}
			return fmt.Sprintf("%.2f×", float64(r.cpuPerRequest)/float64(b.cpuPerRequest))
		}
		heap := ""
		if r.heapPerToken > 0 {
			heap = fmt.Sprintf("%.0f B", r.heapPerToken)
		}
		fmt.Fprintf(w, "| %s | %.0f | %v | %v | %.1f µs | %s | %s | %.1f%% | %s |\n", r.kind, r.rps,
			r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), float64(r.cpuPerRequest)/1e3,
			ratio("null"), ratio("naive"), 100*r.gcShare, heap)
	}
	if v, ok := byKind["vakt"]; ok {
		if n, ok := byKind["null"]; ok && n.p99 > 0 {
			fmt.Fprintf(w, "\nvakt's p99 is %.2f× the null server's.\n", float64(v.p99)/float64(n.p99))
		}
	}
	_ = o
}
