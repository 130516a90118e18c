package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/waittest"
)

// served is a Services served on loopback: its clients and how to stop it.
type served struct {
	admin  string
	health healthpb.HealthClient
	intro  vaktv1.IntrospectionServiceClient
	grpc   string
	http   string
	cancel context.CancelFunc
	done   chan error
}

func serveOnLoopback(t *testing.T, s *Services) *served {
	t.Helper()
	ls, err := Listen("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sv := &served{admin: "http://" + ls.Admin.Addr().String(), grpc: ls.GRPC.Addr().String(), http: "http://" + ls.HTTP.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { sv.done <- Serve(ctx, s, ls) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-sv.done:
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return")
		}
	})
	conn, err := grpc.NewClient(sv.grpc, testDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	sv.health = healthpb.NewHealthClient(conn)
	sv.intro = vaktv1.NewIntrospectionServiceClient(conn)
	return sv
}

// status is the gRPC health of the server ("" for the whole server), or
// the error of asking.
func (sv *served) status() (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	res, err := sv.health.Check(ctx, &healthpb.HealthCheckRequest{})
	return res.GetStatus(), err
}

// readyz is /readyz's status code and reason.
func (sv *served) readyz(t *testing.T) (int, string) {
	t.Helper()
	resp, err := testHTTP.Get(sv.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]string
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &body)
	return resp.StatusCode, body["reason"]
}

// On stop, health turns NOT_SERVING first, and vakt keeps answering for the
// drain delay before it stops accepting: a probe during the drain sees
// NOT_SERVING and still gets an answer, and so do requests.
func TestDrainBeforeStopping(t *testing.T) {
	e := newEnv(t)
	const drain = 1500 * time.Millisecond
	sv := serveOnLoopback(t, AuthorityServices(e.cur, NewMetrics(), quiet).WithShutdown(drain, 5*time.Second))
	waittest.Until(t, 10*time.Second, "never SERVING", func() bool { st, _ := sv.status(); return st == healthpb.HealthCheckResponse_SERVING })
	if code, reason := sv.readyz(t); code != http.StatusOK {
		t.Fatalf("/readyz %d (%s) while serving", code, reason)
	}

	stopped := time.Now()
	sv.cancel()
	waittest.Until(t, time.Second, "health did not turn NOT_SERVING at once", func() bool {
		st, err := sv.status()
		return err == nil && st == healthpb.HealthCheckResponse_NOT_SERVING
	})
	if code, reason := sv.readyz(t); code != http.StatusServiceUnavailable || !strings.Contains(reason, "draining") {
		t.Fatalf("/readyz while draining: %d %q", code, reason)
	}
	// Still answering, on existing connections and new ones.
	if res, err := sv.intro.Introspect(context.Background(), &vaktv1.IntrospectRequest{IdentityProvider: "idporten", Token: e.idp.Token(e.idp.Claims(time.Now(), "my-api"))}); err != nil || !res.GetActive() {
		t.Fatalf("introspection while draining: %v %v", res, err)
	}
	conn, err := grpc.NewClient(sv.grpc, testDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if res, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || res.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("a new connection while draining: %v %v", res, err)
	}
	resp, err := testHTTP.Get(sv.http + "/healthz")
	if err != nil {
		t.Fatalf("HTTP while draining: %v", err)
	}
	resp.Body.Close()

	select {
	case err := <-sv.done:
		sv.done <- err
		if took := time.Since(stopped); took < drain {
			t.Fatalf("stopped %v after the signal, before the drain delay %v", took, drain)
		}
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(drain + 10*time.Second):
		t.Fatal("Serve did not return after drain and grace")
	}
	if _, err := testHTTP.Get(sv.http + "/healthz"); err == nil {
		t.Fatal("still accepting after the drain")
	}
}

// Not ready until every identity provider has keys: a replica whose
// provider is down stays out of rotation, and joins once the keys arrive.
func TestReadyWaitsForKeys(t *testing.T) {
	up := idptest.NewIssuer(t, "ES256")
	down := idptest.NewIssuer(t, "ES256")
	down.SetDown(true)
	rt := testRuntime(t, `issuer: http://127.0.0.1:8080
cluster: dev-gcp
identityProviders:
  - name: up
    issuer: `+up.URL+`
    jwksUri: `+up.JWKSURI()+`
  - name: late
    issuer: `+down.URL+`
    wellKnownUrl: `+down.WellKnownURL()+`
`)
	cur := &Current{}
	cur.Store(rt)
	sv := serveOnLoopback(t, AuthorityServices(cur, nil, quiet))
	waittest.Until(t, 5*time.Second, "no NOT_SERVING while a provider is down", func() bool {
		st, err := sv.status()
		return err == nil && st == healthpb.HealthCheckResponse_NOT_SERVING
	})
	// Once up's keys are in (fetched in the background), late is what is
	// in the way.
	waittest.Until(t, 5*time.Second, "/readyz never named the provider that is down", func() bool {
		code, reason := sv.readyz(t)
		return code == http.StatusServiceUnavailable && reason == "identity provider late has no keys yet"
	})
	down.SetDown(false)
	// The first retry is 5 s after the failed fetch.
	waittest.Until(t, 15*time.Second, "not SERVING after the provider came up", func() bool {
		st, _ := sv.status()
		return st == healthpb.HealthCheckResponse_SERVING
	})
	if code, reason := sv.readyz(t); code != http.StatusOK {
		t.Fatalf("/readyz: %d %q", code, reason)
	}
}
