package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vakt-dev/vakt/agent"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/server"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// testDialOptions dial a test server in plaintext, every call bounded: a
// hang fails the test, not the run.
func testDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
	}
}

// lockedBuffer is a log sink handlers may write to at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the JSON lines logged with msg, and forgets every line.
func (l *lockedBuffer) lines(t *testing.T, msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	l.b.Reset()
	return out
}

// agentClient is vakt agent, serving on loopback.
type agentClient struct {
	exchange vaktv1.TokenExchangeServiceClient
}

// serveAgent runs vakt agent from env until the test ends.
func serveAgent(t testing.TB, env *agent.Env) *agentClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rt, err := server.NewAgentRuntime(ctx, env, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := server.Listen("127.0.0.1:0", "127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- server.Serve(ctx, server.AgentServices(rt, server.NewMetrics(), quiet), ls) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpc.NewClient(ls.GRPC.Addr().String(), testDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &agentClient{exchange: vaktv1.NewTokenExchangeServiceClient(conn)}
}
