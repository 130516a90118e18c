package kube

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/kubetest"
	"github.com/vakt-dev/vakt/server"
)

// newBareKubeEnv is a cluster with the Application CRD and namespaces,
// and no vakt yet: the test starts its replicas.
func newBareKubeEnv(t *testing.T, namespaces ...string) *kenv {
	c := kubetest.Start(t)
	client, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	e := &kenv{t: t, cluster: c, client: client, apps: client.Resource(applicationsGVR)}
	e.installCRD("../deploy/kubernetes/crds/applications.vakt.dev.yaml")
	for _, ns := range namespaces {
		e.namespace(ns)
	}
	return e
}

// squatReplica is one vakt replica for the squat test: its reload path,
// its status writer, and a Check client.
type squatReplica struct {
	run   *kubeRun
	check authv3.AuthorizationClient
}

func (e *kenv) squatReplica(cfgPath, identity string) *squatReplica {
	e.t.Helper()
	run := startKubeRun(e.t, cfgPath, e.signer, SourceConfig{Client: e.client}, false)
	run.writeStatus(e.cluster.Config, e.client, identity, quiet, nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	gs, _ := server.AuthorityServices(run.cur, nil, quiet).NewGRPCServer()
	go gs.Serve(lis)
	e.t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), testDialOptions()...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	e.until(10*time.Second, identity+": the resources were never read", func() bool { rt := run.cur.Load(); return rt != nil && rt.Ready() == nil })
	return &squatReplica{run: run, check: authv3.NewAuthorizationClient(conn)}
}

// state is what became of ns/name in the replica's configuration.
func (r *squatReplica) state(ns, name string) (State, bool) {
	if s := r.run.src.Served(); s != nil {
		for _, st := range s.States {
			if st.Resource.Namespace == ns && st.Resource.Name == name {
				return st, true
			}
		}
	}
	return State{}, false
}

// anonymous is Check's answer to an unauthenticated DELETE to host: its
// HTTP status, 200 when allowed.
func (r *squatReplica) anonymous(t *testing.T, host string) int {
	t.Helper()
	res, err := r.check.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "DELETE", Host: host, Path: "/admin/users/1",
		}},
	}})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if d := res.GetDeniedResponse(); d != nil {
		return int(d.GetStatus().GetCode())
	}
	return 200
}

// A team cannot take another's host, before or after a restart: the
// oldest resource keeps it, whatever their names (the squatter's
// namespace sorts before its victim's, and after), on a replica that has
// served all along, on one restarted and on a new one. The squatter is
// refused with the reason Conflict, naming the owner; every replica serves
// the same configuration. A host outside a namespace's grant is refused.
func TestKubeSquat(t *testing.T) {
	e := newBareKubeEnv(t, "vakt", "team-a", "team-b", "a-team", "z-team", "team-c")
	cfgPath := filepath.Join(t.TempDir(), "vakt.yaml")
	if err := os.WriteFile(cfgPath, []byte(`issuer: http://127.0.0.1:8080
cluster: dev-gcp
kubernetes:
  enabled: true
  grants:
    - {namespaces: [team-a, team-b, a-team, z-team], hosts: ["*.example.com"]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	key, _ := exchange.GenerateSigningKey("ES256")
	e.signer, _ = exchange.NewSigner(key)

	const private = `{"hosts":[%q],"routes":[{"pathPrefix":"/","scopes":["admin"]}]}`
	const public = `{"hosts":[%q],"routes":[{"pathPrefix":"/","public":true}]}`
	squats := []struct{ victimNS, victim, squatNS, squat, host string }{
		{"team-b", "app-b", "team-a", "squat", "app-b.example.com"}, // the squatter sorts first
		{"a-team", "app-a", "z-team", "squat", "app-a.example.com"}, // the squatter sorts last
	}
	r1 := e.squatReplica(cfgPath, "r1")
	for _, s := range squats {
		e.resource(s.victimNS, s.victim, fmt.Sprintf(private, s.host))
	}
	var newest time.Time
	for _, s := range squats {
		e.until(10*time.Second, s.victim+" never served", func() bool { st, ok := r1.state(s.victimNS, s.victim); return ok && st.Served > 0 })
		st, _ := r1.state(s.victimNS, s.victim)
		if st.Resource.Created.After(newest) {
			newest = st.Resource.Created
		}
	}
	afterSecond(newest)
	for _, s := range squats {
		e.resource(s.squatNS, s.squat, fmt.Sprintf(public, s.host))
	}
	e.resource("team-c", "ungranted", fmt.Sprintf(public, "app-c.example.com"))

	check := func(name string, r *squatReplica) {
		t.Helper()
		for _, s := range squats {
			owner := "dev-gcp:" + s.victimNS + ":" + s.victim
			e.until(10*time.Second, name+": "+s.squatNS+"/"+s.squat+" never refused", func() bool {
				st, ok := r.state(s.squatNS, s.squat)
				return ok && st.Reason == ReasonConflict
			})
			if st, _ := r.state(s.squatNS, s.squat); st.Served != 0 || !strings.Contains(st.Refused.Error(), owner) {
				t.Errorf("%s: the squatter %s/%s: %+v, want refused naming %s", name, s.squatNS, s.squat, st, owner)
			}
			if st, _ := r.state(s.victimNS, s.victim); st.Served == 0 || st.Refused != nil {
				t.Errorf("%s: the owner %s/%s: %+v, want served", name, s.victimNS, s.victim, st)
			}
			if a, ok := r.run.cur.Load().Policy.ApplicationByHost(s.host); !ok || a.ID != owner {
				t.Errorf("%s: %s is %v, want %s", name, s.host, a, owner)
			}
			if got := r.anonymous(t, s.host); got != 401 {
				t.Errorf("%s: an anonymous DELETE to %s: %d, want 401", name, s.host, got)
			}
		}
		e.until(10*time.Second, name+": the ungranted host never refused", func() bool { _, ok := r.state("team-c", "ungranted"); return ok })
		if st, _ := r.state("team-c", "ungranted"); st.Reason != ReasonRefused || !strings.Contains(st.Refused.Error(), `"app-c.example.com" is not granted to namespace team-c`) {
			t.Errorf("%s: team-c's host outside any grant: %+v", name, st)
		}
	}
	check("r1", r1)
	for _, s := range squats {
		e.until(10*time.Second, "no Ready condition with reason Conflict on "+s.squatNS+"/"+s.squat, func() bool {
			c := e.condition(s.squatNS, s.squat, "Ready")
			return c != nil && c["status"] == "False" && c["reason"] == ReasonConflict &&
				strings.Contains(fmt.Sprint(c["message"]), "dev-gcp:"+s.victimNS+":"+s.victim)
		})
	}

	// A restart, and a new replica: the same owners, the same configuration.
	r1.run.stop()
	again, r2 := e.squatReplica(cfgPath, "r1"), e.squatReplica(cfgPath, "r2")
	check("r1 restarted", again)
	check("r2", r2)
	if a, b := again.run.cur.Load().Config.Hash, r2.run.cur.Load().Config.Hash; a != b {
		t.Errorf("the replicas serve configurations %s and %s", a, b)
	}
}

// The version that serves while a newer one is refused is recorded in the
// Application's status (status.served): a replica that never saw it (new,
// or restarted) serves it too, and every replica serves the same
// configuration.
func TestKubeServedVersionRecorded(t *testing.T) {
	e := newKubeEnv(t)
	e.namespace("vakt")
	leader := startKubeRun(t, replicaConfig, e.signer, SourceConfig{Client: e.client}, false)
	leader.writeStatus(e.cluster.Config, e.client, "r1", quiet, nil)
	served := func(r *kubeRun) State {
		if s := r.src.Served(); s != nil {
			for _, st := range s.States {
				if st.Resource.Namespace == "team-b" && st.Resource.Name == "app-b" {
					return st
				}
			}
		}
		return State{}
	}
	recorded := func() int64 {
		u, err := e.apps.Namespace("team-b").Get(context.Background(), "app-b", metav1.GetOptions{})
		if err != nil {
			return 0
		}
		g, _, _ := unstructured.NestedInt64(u.Object, "status", "served", "generation")
		return g
	}
	e.application(appBAllowsApp1)
	e.until(10*time.Second, "generation 1 never recorded as serving", func() bool { return recorded() == 1 })
	e.application(appBInvalid)
	e.until(10*time.Second, "generation 2 never refused with generation 1 serving", func() bool {
		st := served(leader)
		return st.Resource.Generation == 2 && st.Served == 1 && st.Reason == ReasonRefused
	})
	if got := recorded(); got != 1 {
		t.Fatalf("status.served.generation is %d, want 1", got)
	}
	fresh := startKubeRun(t, replicaConfig, e.signer, SourceConfig{Client: e.client}, false)
	e.until(10*time.Second, "the new replica never served generation 1", func() bool {
		st := served(fresh)
		return st.Resource.Generation == 2 && st.Served == 1 && st.Reason == ReasonRefused
	})
	if a, b := leader.cur.Load().Config.Hash, fresh.cur.Load().Config.Hash; a != b {
		t.Errorf("the replicas serve configurations %s and %s", a, b)
	}
	if got := e.status(); got != 200 {
		t.Errorf("Check on the first replica: %d, want generation 1's allow", got)
	}
}
