package server

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// vakt's own failures are RPC errors, never denials: Envoy's status_on_error
// must see an outage as one.
func TestRecoveredPanicIsAnError(t *testing.T) {
	_, err := recoverUnary(quiet)(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"},
		func(context.Context, any) (any, error) { panic("boom") })
	if status.Code(err) != codes.Internal {
		t.Fatalf("got %v", err)
	}
}

func TestOverloadIsAnError(t *testing.T) {
	limit := limitUnary(1)
	release := make(chan struct{})
	started := make(chan struct{})
	go limit(context.Background(), nil, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) {
		close(started)
		<-release
		return "done", nil
	})
	<-started
	_, err := limit(context.Background(), nil, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) { return "ok", nil })
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second request while full: %v", err)
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if res, err := limit(context.Background(), nil, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) { return "ok", nil }); err == nil && res == "ok" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slot was never released")
		}
		time.Sleep(time.Millisecond)
	}
}

// Checks running while the configuration is swapped back and forth get an
// answer from one whole configuration or the other, never an error.
func TestCheckDuringReloads(t *testing.T) {
	e := newCheckEnv(t)
	tok := e.own(app1, appB, "read:users")
	without := strings.Replace(e.yaml, "          - application: app-1\n            namespace: team-a\n", "", 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				res := e.check(creq{app: appB, path: "/read", headers: map[string]string{"authorization": "Bearer " + tok}})
				allowed := res.GetOkResponse() != nil
				denied := res.GetDeniedResponse().GetStatus().GetCode() == 403 && strings.Contains(res.GetDeniedResponse().GetBody(), "access_denied")
				if !allowed && !denied {
					t.Errorf("answer from no whole configuration: %v", res)
					return
				}
			}
		}()
	}
	for i := range 20 {
		if i%2 == 0 {
			e.load(without)
		} else {
			e.load(e.yaml)
		}
	}
	close(stop)
	wg.Wait()
}
