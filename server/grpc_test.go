package server

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/authz"
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

// Past its budget a request is refused with RESOURCE_EXHAUSTED, an error
// (Envoy's status_on_error), and only requests of its own kind: a full
// budget of Introspect and Exchange never refuses a Check, nor the other
// way round; health is always answered.
func TestOverloadIsAnError(t *testing.T) {
	b := newBudgets(1, 1)
	m := NewMetrics()
	admit := admitUnary(b, m)
	check := &grpc.UnaryServerInfo{FullMethod: "/envoy.service.auth.v3.Authorization/Check"}
	introspect := &grpc.UnaryServerInfo{FullMethod: "/vakt.v1.IntrospectionService/Introspect"}
	health := &grpc.UnaryServerInfo{FullMethod: "/grpc.health.v1.Health/Check"}
	ok := func(context.Context, any) (any, error) { return "ok", nil }
	release := make(chan struct{})
	started := make(chan struct{})
	held := make(chan struct{}) // the first Introspect has returned: its slot is free
	go func() {
		defer close(held)
		admit(context.Background(), nil, introspect, func(context.Context, any) (any, error) {
			close(started)
			<-release
			return "done", nil
		})
	}()
	<-started
	if _, err := admit(context.Background(), nil, introspect, ok); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second Introspect while full: %v", err)
	}
	if n := testutil.ToFloat64(m.overloaded.WithLabelValues("introspect")); n != 1 {
		t.Fatalf("%v Introspects counted as refused for overload, want 1", n)
	}
	if res, err := admit(context.Background(), nil, check, ok); err != nil || res != "ok" {
		t.Fatalf("a Check while Introspect's budget is full: %v %v", res, err)
	}
	if res, err := admit(context.Background(), nil, health, ok); err != nil || res != "ok" {
		t.Fatalf("health: %v %v", res, err)
	}
	close(release)
	<-held
	if res, err := admit(context.Background(), nil, introspect, ok); err != nil || res != "ok" {
		t.Fatalf("an Introspect once the first has returned: %v %v", res, err)
	}

	// A Check past its budget is counted as decided for overloaded.
	b.check <- struct{}{}
	if _, err := admit(context.Background(), nil, check, ok); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a Check while its budget is full: %v", err)
	}
	if n := m.checks.decisions[authz.ReasonOverloaded].Load(); n != 1 || testutil.ToFloat64(m.overloaded.WithLabelValues("check")) != 1 {
		t.Fatalf("%v Checks counted as overloaded, want 1", n)
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
