package exchange

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/vakt-dev/vakt/internal/idptest"
)

func TestMemoryReplay(t *testing.T) {
	clock := idptest.NewClock(time.Unix(1_800_000_000, 0))
	m := NewMemoryReplay(2, clock.Now)
	ctx := context.Background()
	claim := func(key string, ttl time.Duration) (bool, error) {
		return m.Claim(ctx, key, clock.Now().Add(ttl))
	}
	if ok, err := claim("a\x00j1", time.Minute); !ok || err != nil {
		t.Fatalf("first: %v %v", ok, err)
	}
	if ok, _ := claim("a\x00j1", time.Minute); ok {
		t.Fatal("replay accepted")
	}
	if ok, _ := claim("b\x00j1", time.Minute); !ok {
		t.Fatal("another client's jti refused")
	}
	// Full of unexpired ids: refuse rather than forget one.
	if _, err := claim("c\x00j1", time.Minute); !errors.Is(err, ErrReplayStoreFull) {
		t.Fatalf("full store: %v", err)
	}
	clock.Advance(time.Minute)
	if ok, err := claim("c\x00j1", time.Minute); !ok || err != nil {
		t.Fatalf("after expiry: %v %v", ok, err)
	}
	// An expired id may come again: its assertion can no longer be used.
	if ok, _ := claim("a\x00j1", time.Minute); !ok {
		t.Fatal("expired id still remembered")
	}
}

// startRedis runs a real redis-server on a free loopback port.
func startRedis(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server is not installed; .ci/run installs it")
		}
		t.Skip("redis-server is not installed (apt-get install redis-server); skipping the Redis replay tests")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	var out bytes.Buffer
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := redis.NewClient(&redis.Options{Addr: addr, DialerRetries: 1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("redis-server exited (%v):\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server did not answer on %s:\n%s", addr, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr
}

func TestRedisReplay(t *testing.T) {
	addr := startRedis(t)
	ctx := context.Background()
	// Two replicas, one Redis: what one has seen, the other refuses.
	a := NewRedisReplay(RedisOptions{Address: addr}, nil)
	b := NewRedisReplay(RedisOptions{Address: addr}, nil)
	defer a.Close()
	defer b.Close()
	exp := time.Now().Add(90 * time.Second)
	if ok, err := a.Claim(ctx, "app-1\x00j1", exp); !ok || err != nil {
		t.Fatalf("first: %v %v", ok, err)
	}
	if ok, err := b.Claim(ctx, "app-1\x00j1", exp); ok || err != nil {
		t.Fatalf("replay on another replica: %v %v", ok, err)
	}
	if ok, err := b.Claim(ctx, "app-2\x00j1", exp); !ok || err != nil {
		t.Fatalf("another client's jti: %v %v", ok, err)
	}
	// Redis forgets the id when the assertion expires.
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	keys, err := c.Keys(ctx, "vakt:jti:*").Result()
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys %v %v", keys, err)
	}
	ttl, err := c.TTL(ctx, keys[0]).Result()
	if err != nil || ttl <= 80*time.Second || ttl > 90*time.Second {
		t.Fatalf("ttl %v %v", ttl, err)
	}
}

func TestRedisReplayDown(t *testing.T) {
	addr := startRedis(t)
	r := NewRedisReplay(RedisOptions{Address: addr}, nil)
	defer r.Close()
	ctx := context.Background()
	if _, err := r.Claim(ctx, "k1", time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// Stop the server: claims fail (and the caller refuses), quickly.
	c := redis.NewClient(&redis.Options{Addr: addr})
	_ = c.Shutdown(ctx).Err()
	c.Close()
	start := time.Now()
	if ok, err := r.Claim(ctx, "k2", time.Now().Add(time.Minute)); err == nil || ok {
		t.Fatalf("with Redis down: %v %v", ok, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v to fail", d)
	}
}
