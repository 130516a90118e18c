package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/kubetest"
	"github.com/vakt-dev/vakt/internal/waittest"
	"github.com/vakt-dev/vakt/server"
)

// kenv is vakt in Kubernetes-native mode against a real API server: the
// file's applications (app-1) and the cluster's Application resources.
type kenv struct {
	t       testing.TB
	cluster *kubetest.Cluster
	client  dynamic.Interface
	apps    dynamic.NamespaceableResourceInterface
	cur     *server.Current
	src     *Source
	signer  *exchange.Signer
	check   authv3.AuthorizationClient
}

func newKubeEnv(t testing.TB) *kenv {
	c := kubetest.Start(t)
	client, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	e := &kenv{t: t, cluster: c, client: client, apps: client.Resource(applicationsGVR), cur: &server.Current{}}
	e.installCRD("../deploy/kubernetes/crds/applications.vakt.dev.yaml")
	for _, ns := range []string{"team-b"} {
		e.apply(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "", fmt.Sprintf(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":%q}}`, ns))
	}
	key, _ := exchange.GenerateSigningKey("ES256")
	e.signer, _ = exchange.NewSigner(key)
	informers, api, err := InformerClient(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	run := startKubeRun(t, replicaConfig, e.signer, SourceConfig{Client: informers, API: api}, true)
	e.cur, e.src = run.cur, run.src

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs, _ := server.AuthorityServices(e.cur, nil, quiet).NewGRPCServer()
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), testDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.check = authv3.NewAuthorizationClient(conn)
	e.until(10*time.Second, "the resources were never read", func() bool { return e.cur.Load().Ready() == nil })
	return e
}

// installCRD applies a CRD and waits until it is established.
func (e *kenv) installCRD(file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		e.t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		e.t.Fatal(err)
	}
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	name := e.apply(crds, "", string(j))
	e.until(30*time.Second, "the CRD never established", func() bool {
		u, err := e.client.Resource(crds).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
				return true
			}
		}
		return false
	})
}

// apply server-side applies a JSON object, strictly, and returns its name.
func (e *kenv) apply(gvr schema.GroupVersionResource, namespace, object string) string {
	e.t.Helper()
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON([]byte(object)); err != nil {
		e.t.Fatal(err)
	}
	force := true
	var ri dynamic.ResourceInterface = e.client.Resource(gvr)
	if namespace != "" {
		ri = e.client.Resource(gvr).Namespace(namespace)
	}
	if _, err := ri.Apply(context.Background(), u.GetName(), &u, metav1.ApplyOptions{FieldManager: "vakt-test", Force: force}); err != nil {
		e.t.Fatalf("apply %s: %v", u.GetName(), err)
	}
	return u.GetName()
}

// application applies the Application app-b in team-b with spec.
func (e *kenv) application(spec string) {
	e.t.Helper()
	e.apply(applicationsGVR, "team-b", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-b","namespace":"team-b"},"spec":`+spec+`}`)
}

// until waits for cond, which the API server's watch makes true in its own
// time.
func (e *kenv) until(d time.Duration, what string, cond func() bool) {
	e.t.Helper()
	waittest.Until(e.t, d, what, cond)
}

// status is what Check answers app-1's token for app-b on GET /read: the
// HTTP status of a denial, 200 for an allow.
func (e *kenv) status() int {
	k := e.signer.Keys()[0]
	tok := idptest.Sign(e.t, &idptest.Key{ID: k.ID, Alg: k.Alg, Private: k.Private}, k.Alg, map[string]any{"alg": k.Alg, "kid": k.ID, "typ": "at+jwt"}, map[string]any{
		"iss": "http://127.0.0.1:8080", "sub": "user-1", "aud": "dev-gcp:team-b:app-b", "client_id": "dev-gcp:team-a:app-1",
		"scope": "read", "exp": time.Now().Add(time.Minute).Unix(),
	})
	res, err := e.check.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		ContextExtensions: map[string]string{server.ContextExtensionApp: "dev-gcp:team-b:app-b"},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/read", Headers: map[string]string{"authorization": "Bearer " + tok},
		}},
	}})
	if err != nil {
		e.t.Fatalf("Check: %v", err)
	}
	if d := res.GetDeniedResponse(); d != nil {
		return int(d.GetStatus().GetCode())
	}
	return 200
}

const (
	appBAllowsApp1 = `{"accessPolicy":{"inbound":{"rules":[{"application":"app-1","namespace":"team-a"}]}},"routes":[{"methods":["GET"],"path":"/read","scopes":["read"]}]}`
	appBAllowsNone = `{"routes":[{"methods":["GET"],"path":"/read","scopes":["read"]}]}`
	appBInvalid    = `{"accessPolicy":{"inbound":{"rules":[{"application":"app-1","namespace":"team-a"}]}},"routes":[{"path":"/read","public":true,"scopes":["read"]}]}`
)

// An Application resource applied is enforced by Check within a second;
// changed, the change is; refused, its previous version keeps serving and
// the refusal is recorded; deleted, the application is gone.
func TestKubeApplications(t *testing.T) {
	e := newKubeEnv(t)
	if got := e.status(); got != 403 {
		t.Fatalf("before the resource: %d", got)
	}
	applied := time.Now()
	e.application(appBAllowsApp1)
	e.until(5*time.Second, "the applied resource was never enforced", func() bool { return e.status() == 200 })
	t.Logf("applied → enforced in %v", time.Since(applied).Round(time.Millisecond))

	e.application(appBAllowsNone)
	e.until(5*time.Second, "the removed rule was never enforced", func() bool { return e.status() == 403 })

	e.application(appBAllowsApp1)
	e.until(5*time.Second, "the rule put back was never enforced", func() bool { return e.status() == 200 })
	e.application(appBInvalid)
	e.until(5*time.Second, "the invalid version was never seen", func() bool {
		for _, st := range e.src.Served().States {
			if st.Resource.Name == "app-b" && st.Refused != nil {
				return strings.Contains(st.Refused.Error(), "spec.routes[0]: a public route needs no token") && st.Served != 0 && st.Served < st.Resource.Generation
			}
		}
		return false
	})
	if got := e.status(); got != 200 {
		t.Fatalf("the previous version no longer serves: %d", got)
	}

	if err := e.apps.Namespace("team-b").Delete(context.Background(), "app-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.until(5*time.Second, "the deleted application still serves", func() bool {
		_, ok := e.cur.Load().Policy.Application("dev-gcp:team-b:app-b")
		return !ok
	})
}

// An application id the file defines cannot be taken by a resource: the
// resource is refused, the file's application serves.
func TestKubeApplicationTakingAFilesID(t *testing.T) {
	e := newKubeEnv(t)
	e.apply(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "", `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team-a"}}`)
	e.apply(applicationsGVR, "team-a", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-1","namespace":"team-a"},"spec":{"routes":[{"pathPrefix":"/","public":true}]}}`)
	e.until(5*time.Second, "the resource taking app-1's id was not refused", func() bool {
		for _, st := range e.src.Served().States {
			if st.Resource.Name == "app-1" {
				return st.Refused != nil && strings.Contains(st.Refused.Error(), "application id dev-gcp:team-a:app-1 is already used") && st.Served == 0
			}
		}
		return false
	})
}

// With the API server down, vakt keeps serving the resources it last saw;
// when it returns, the informers resynchronise and changes arrive again.
func TestKubeAPIServerRestart(t *testing.T) {
	e := newKubeEnv(t)
	e.application(appBAllowsApp1)
	e.until(5*time.Second, "never enforced", func() bool { return e.status() == 200 })
	e.cluster.StopAPIServer(t)
	// The metrics say so: the watch fails, and when it last heard.
	reg := prometheus.NewRegistry()
	reg.MustRegister(e.src.Collector())
	gauge := func(name, resource string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				if mf.GetName() != name {
					continue
				}
				if resource == "" && len(m.GetLabel()) == 0 {
					return m.GetGauge().GetValue()
				}
				for _, l := range m.GetLabel() {
					if l.GetName() == "resource" && l.GetValue() == resource {
						return m.GetGauge().GetValue()
					}
				}
			}
		}
		t.Fatalf("no %s{resource=%q}", name, resource)
		return 0
	}
	e.until(60*time.Second, "the API server's absence never showed in the metrics", func() bool { return gauge("vakt_kubernetes_api_failing", "") == 1 })
	// The watch has failed, and vakt still serves what it last saw.
	if got := e.status(); got != 200 {
		t.Fatalf("with the API server down: %d", got)
	}
	before := gauge("vakt_kubernetes_api_last_success_timestamp_seconds", "")
	e.cluster.StartAPIServer(t)
	e.application(appBAllowsNone)
	e.until(30*time.Second, "a change after the API server returned was never enforced", func() bool { return e.status() == 403 })
	if gauge("vakt_kubernetes_api_failing", "") != 0 || gauge("vakt_kubernetes_api_last_success_timestamp_seconds", "") <= before ||
		gauge("vakt_kubernetes_last_sync_timestamp_seconds", "applications") <= before {
		t.Errorf("after the API server returned: failing %v, last success %v, applications last heard %v (was %v)", gauge("vakt_kubernetes_api_failing", ""),
			gauge("vakt_kubernetes_api_last_success_timestamp_seconds", ""), gauge("vakt_kubernetes_last_sync_timestamp_seconds", "applications"), before)
	}
}

func (e *kenv) namespace(ns string) {
	e.t.Helper()
	e.apply(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "", fmt.Sprintf(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":%q}}`, ns))
}

func (e *kenv) resource(ns, name, spec string) {
	e.t.Helper()
	e.apply(applicationsGVR, ns, fmt.Sprintf(`{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":%q,"namespace":%q},"spec":%s}`, name, ns, spec))
}

// afterSecond returns once the clock is past the second of t:
// creationTimestamp has a resolution of one second, and a resource created
// within the same one as another is only younger by name. It sleeps, as
// it waits for an instant that nothing announces, not for an event.
func afterSecond(t time.Time) {
	time.Sleep(time.Until(t.Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
}

// state is what became of the resource ns/name in the runtime in force.
func (e *kenv) state(ns, name string) (State, bool) {
	for _, st := range e.src.Served().States {
		if st.Resource.Namespace == ns && st.Resource.Name == name {
			return st, true
		}
	}
	return State{}, false
}

// Claims are first come, first served: a newcomer whose namespace sorts
// first cannot take a host a serving resource holds; two spellings of one
// resource URI are one; a resource URI on another's host is refused; and
// none of it stops the others' changes from being applied.
func TestKubeClaims(t *testing.T) {
	e := newKubeEnv(t)
	for _, ns := range []string{"team-z", "a-team", "team-x"} {
		e.namespace(ns)
	}
	e.resource("team-z", "victim", `{"hosts":["victim.example"]}`)
	e.until(5*time.Second, "the victim never served", func() bool { st, ok := e.state("team-z", "victim"); return ok && st.Served > 0 })
	st, _ := e.state("team-z", "victim")
	afterSecond(st.Resource.Created)
	e.resource("a-team", "evil", `{"hosts":["victim.example"],"routes":[{"pathPrefix":"/","public":true}]}`)
	e.resource("team-x", "evil1", `{"resources":["https://evil.example"]}`)
	e.resource("team-x", "evil2", `{"resources":["https://EVIL.example:443/"]}`)
	e.resource("team-x", "evil3", `{"resources":["https://victim.example/api"]}`)
	e.application(appBAllowsApp1)
	e.until(5*time.Second, "app-b was never applied beside the refused claims", func() bool { return e.status() == 200 })
	for _, want := range []struct{ ns, name, err string }{
		{"a-team", "evil", `"victim.example" already belongs to dev-gcp:team-z:victim`},
		{"team-x", "evil2", `"https://EVIL.example:443/" already belongs to dev-gcp:team-x:evil1`},
		{"team-x", "evil3", `"https://victim.example/api" is on the host of dev-gcp:team-z:victim`},
	} {
		st, ok := e.state(want.ns, want.name)
		if !ok || st.Refused == nil || !strings.Contains(st.Refused.Error(), want.err) || st.Served != 0 {
			t.Errorf("%s/%s: %+v, want refused: %s", want.ns, want.name, st, want.err)
		}
	}
	if a, ok := e.cur.Load().Policy.ApplicationByHost("victim.example"); !ok || a.ID != "dev-gcp:team-z:victim" {
		t.Fatalf("victim.example is %v", a)
	}
	// A team touching its resource's metadata (not its spec) reloads
	// nothing, so it cannot hold the others' changes off.
	stop := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			patch := fmt.Sprintf(`{"metadata":{"annotations":{"spam":"%d"}}}`, i)
			_, _ = e.apps.Namespace("a-team").Patch(context.Background(), "evil", types.MergePatchType, []byte(patch), metav1.PatchOptions{})
			time.Sleep(20 * time.Millisecond) // the stream's pace: 50 updates a second
		}
	}()
	defer close(stop)
	e.application(appBAllowsNone)
	e.until(3*time.Second, "a change was held off by another team's stream of updates", func() bool { return e.status() == 403 })
}

// The merge a failed build falls back on serves the resources serving
// before, in the version that served, and no newcomer; nothing becomes the
// last good version until its runtime is built (commit).
func TestResourceMergerFallback(t *testing.T) {
	load := func() *config.Config {
		c, err := config.Load([]byte("issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nkubernetes: {enabled: true, grants: [{namespaces: [team-a, team-b], hosts: ['*.example']}]}\n"), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a1 := Resource{Kind: config.KindApplication, Namespace: "team-a", Name: "a", UID: "u-a", Generation: 1, Spec: []byte(`{"hosts":["a.example"]}`)}
	a2 := a1
	a2.Generation, a2.Spec = 2, []byte(`{"hosts":["a2.example"]}`)
	b := Resource{Kind: config.KindApplication, Namespace: "team-b", Name: "b", UID: "u-b", Generation: 1, Spec: []byte(`{}`)}
	var m resourceMerger
	cfg := load()
	_, commit := m.merge(cfg, []Resource{a1}, quiet, false)
	if len(cfg.Applications) != 1 {
		t.Fatalf("%d applications", len(cfg.Applications))
	}
	// Not committed: a is not yet serving, so a fallback serves nothing.
	fallback := load()
	if states, _ := m.merge(fallback, []Resource{a1}, quiet, true); len(fallback.Applications) != 0 || states[0].Refused == nil {
		t.Fatalf("uncommitted served: %+v", states)
	}
	commit()
	fallback = load()
	states, _ := m.merge(fallback, []Resource{a2, b}, quiet, true)
	if len(fallback.Applications) != 1 || fallback.Applications[0].Hosts[0] != "a.example" {
		t.Fatalf("the fallback serves %+v", fallback.Applications)
	}
	for _, st := range states {
		switch st.Resource.Name {
		case "a":
			if st.Served != 1 {
				t.Errorf("a: %+v", st)
			}
		case "b":
			if st.Served != 0 || st.Refused == nil {
				t.Errorf("b: %+v", st)
			}
		}
	}
}

// replica is one more vakt over the same cluster: its own runtime, kept
// up to date by its own informers, and its status writer; stop ends it.
type replica struct {
	cur  *server.Current
	stop context.CancelFunc
	work *workLog // what its controllers reconcile while it leads
}

func (e *kenv) replica(identity string) *replica {
	e.t.Helper()
	r := startKubeRun(e.t, replicaConfig, e.signer, SourceConfig{Client: e.client}, false)
	work := &workLog{}
	r.writeStatus(e.cluster.Config, e.client, identity, quiet, work)
	return &replica{cur: r.cur, stop: r.stop, work: work}
}

// replicaConfig is the configuration file of the tests' replicas.
const replicaConfig = "testdata/vakt.yaml"

// kubeRun is vakt's reload path over a configuration file and a cluster's
// resources (a server.Loader, a server.Reloader, a Source), running until stop; go
// runs more of a replica beside it, stopped with it.
type kubeRun struct {
	cur  *server.Current
	src  *Source
	ctx  context.Context
	wg   sync.WaitGroup
	stop func()
}

func startKubeRun(t testing.TB, cfgPath string, signer *exchange.Signer, kc SourceConfig, watchFiles bool) *kubeRun {
	return startKubeRunAt(t, cfgPath, signer, kc, watchFiles, nil)
}

// startKubeRunAt is startKubeRun whose runtimes read the clock now.
func startKubeRunAt(t testing.TB, cfgPath string, signer *exchange.Signer, kc SourceConfig, watchFiles bool, now func() time.Time) *kubeRun {
	t.Helper()
	r := &kubeRun{cur: &server.Current{}}
	loader := &server.Loader{Config: func() (*config.Config, error) { return config.LoadFile(cfgPath) }, Ephemeral: signer,
		Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{}), Logger: quiet, Now: now}
	rl := &server.Reloader{Current: r.cur, Build: loader.Build, Logger: quiet}
	if watchFiles {
		rl.Files = server.WatchedFiles(cfgPath, r.cur)
	}
	kc.OnChange = rl.Kick
	if kc.Logger == nil {
		kc.Logger = quiet
	}
	r.src = NewSource(kc)
	loader.Resources = r.src
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx = ctx
	// As vakt serve has it: key sets, providers and the verified-token
	// cache outlive each runtime.
	loader.KeySets = server.NewKeySets(ctx, quiet, now)
	if err := rl.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done, err := rl.Watch(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	r.wg.Go(func() { r.src.Run(ctx) })
	var once sync.Once
	r.stop = func() { once.Do(func() { cancel(); <-done; r.wg.Wait() }) }
	t.Cleanup(r.stop)
	return r
}

// writeStatus runs a status writer (and key provisioner) for the run, as
// identity, with short election timings; work, when set, logs what its
// controllers reconcile.
func (r *kubeRun) writeStatus(rc *rest.Config, client dynamic.Interface, identity string, log *slog.Logger, work *workLog) {
	r.wg.Go(func() {
		// As vakt serve wires it: the keys' fetches of the runtime in force.
		keyStats := func(id string) (authz.KeyStats, bool) {
			if rt := r.cur.Load(); rt != nil {
				return rt.ClientKeyStats(id)
			}
			return authz.KeyStats{}, false
		}
		c := StatusConfig{Rest: rc, Client: client, Source: r.src, MakeKeys: true, KeyStats: keyStats,
			LeaseNamespace: "vakt", LeaseName: "vakt-status", Identity: identity,
			LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 200 * time.Millisecond, Logger: log}
		if work != nil {
			c.observe = work.observe
		}
		_ = RunStatusWriter(r.ctx, c)
	})
}

// readyCondition is app-b's Ready condition as its status has it.
func (e *kenv) readyCondition() (map[string]any, int64) {
	u, err := e.apps.Namespace("team-b").Get(context.Background(), "app-b", metav1.GetOptions{})
	if err != nil {
		return nil, 0
	}
	gen, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Ready" {
			return m, gen
		}
	}
	return nil, gen
}

// Two replicas elect one status writer (a Lease); it writes each
// Application's Ready condition as the runtime has it; when it stops, the
// other takes over.
func TestKubeStatusWriter(t *testing.T) {
	e := newKubeEnv(t)
	e.namespace("vakt")
	r1, r2 := e.replica("r1"), e.replica("r2")
	e.application(appBAllowsApp1)
	e.until(10*time.Second, "no Ready True for generation 1", func() bool {
		c, gen := e.readyCondition()
		return c != nil && c["status"] == "True" && c["reason"] == "Serving" && gen == 1
	})
	e.application(appBInvalid)
	e.until(10*time.Second, "no Ready False for the refused generation 2", func() bool {
		c, gen := e.readyCondition()
		return c != nil && c["status"] == "False" && c["reason"] == "Refused" && gen == 2 &&
			strings.Contains(fmt.Sprint(c["message"]), "generation 1 serves") && strings.Contains(fmt.Sprint(c["message"]), "a public route needs no token")
	})
	leases := e.client.Resource(schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}).Namespace("vakt")
	holder := func() string {
		l, err := leases.Get(context.Background(), "vakt-status", metav1.GetOptions{})
		if err != nil {
			return ""
		}
		h, _, _ := unstructured.NestedString(l.Object, "spec", "holderIdentity")
		return h
	}
	leader := holder()
	before, _ := e.readyCondition()
	written, err := time.Parse(time.RFC3339, fmt.Sprint(before["lastTransitionTime"]))
	if err != nil {
		t.Fatalf("lastTransitionTime: %v", err)
	}
	afterSecond(written) // a write from now on stamps a later second
	survivor := map[string]*replica{"r1": r2, "r2": r1}[leader]
	if survivor == nil {
		t.Fatalf("the lease is held by %q", leader)
	}
	survivor.work.take() // not leading, it reconciles nothing until it does
	switch leader {
	case "r1":
		r1.stop()
	case "r2":
		r2.stop()
	default:
		t.Fatalf("the lease is held by %q", leader)
	}
	e.until(15*time.Second, "the other replica never took the lease", func() bool { h := holder(); return h != "" && h != leader })
	// The new writer finds the status as it would write it: once it has
	// gone over app-b, it has left it, its lastTransitionTime with it.
	e.until(15*time.Second, "the new writer never went over app-b", func() bool { return survivor.work.has("status Application/team-b/app-b") })
	if after, _ := e.readyCondition(); after["lastTransitionTime"] != before["lastTransitionTime"] || after["message"] != before["message"] {
		t.Errorf("the new writer rewrote the status: %v, was %v", after, before)
	}
	e.application(appBAllowsApp1)
	e.until(10*time.Second, "the new writer never wrote generation 3", func() bool {
		c, gen := e.readyCondition()
		return c != nil && c["status"] == "True" && gen == 3
	})
}

// A status the API server refuses (here: no RBAC for applications/status)
// is tried again after a doubling wait (the work queue's backoff) and
// logged once per error; granted the permission, it is written.
func TestKubeStatusWriterBackoff(t *testing.T) {
	c := kubetest.Start(t, kubetest.WithUser("writer"))
	admin, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	e := &kenv{t: t, cluster: c, client: admin, apps: admin.Resource(applicationsGVR)}
	e.installCRD("../deploy/kubernetes/crds/applications.vakt.dev.yaml")
	e.namespace("team-b")
	e.namespace("vakt")
	e.application(appBAllowsApp1)
	rbac := func(resource, object string) {
		e.apply(schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: resource}, "", object)
	}
	rbac("clusterroles", `{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"writer"},"rules":[
		{"apiGroups":["coordination.k8s.io"],"resources":["leases"],"verbs":["get","create","update"]}]}`)
	rbac("clusterrolebindings", `{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"writer"},
		"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"writer"},"subjects":[{"kind":"User","name":"writer"}]}`)
	u, err := e.apps.Namespace("team-b").Get(context.Background(), "app-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src := &Source{}
	src.served.Store(&Served{Config: &config.Config{Cluster: "dev-gcp"}, States: []State{{Resource: Resource{Kind: config.KindApplication, Namespace: "team-b", Name: "app-b", UID: string(u.GetUID()), Generation: u.GetGeneration()}, Served: u.GetGeneration()}}})
	rc := c.TokenFor(t, "writer")
	tries := &requestLog{}
	client := tries.client(t, rc)
	logs := &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = RunStatusWriter(ctx, StatusConfig{Rest: rc, Client: client, Source: src, LeaseNamespace: "vakt", LeaseName: "vakt-status", Identity: "w",
			LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 200 * time.Millisecond, Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	}()
	t.Cleanup(func() { cancel(); <-done })
	const warning = "kubernetes: a resource's status could not be written; trying again, less and less often"
	e.until(15*time.Second, "the refused write was never tried", func() bool {
		logs.mu.Lock()
		defer logs.mu.Unlock()
		return strings.Contains(logs.b.String(), warning)
	})
	// Four tries (waits of 0.5, 1 and 2 s between them): each refused,
	// and the same error, logged once.
	var at []time.Time
	e.until(15*time.Second, "the refused write was never tried four times", func() bool {
		tries.mu.Lock()
		defer tries.mu.Unlock()
		at = at[:0]
		for _, r := range tries.reqs {
			if r.method == http.MethodPatch && strings.HasSuffix(r.path, "/applications/app-b/status") {
				at = append(at, r.at)
			}
		}
		return len(at) >= 4
	})
	if n := len(logs.lines(t, warning)); n != 1 {
		t.Fatalf("the same error logged %d times", n)
	}
	if gap := at[1].Sub(at[0]); gap < statusBackoff {
		t.Errorf("the first retry came %v after the first try, within the backoff of %v", gap, statusBackoff)
	}
	for i := 2; i < len(at); i++ {
		if prev, gap := at[i-1].Sub(at[i-2]), at[i].Sub(at[i-1]); gap < prev*3/2 {
			t.Errorf("try %d came %v after the one before, which came %v after its own: the wait did not grow", i+1, gap, prev)
		}
	}
	if cond, _ := e.readyCondition(); cond != nil {
		t.Fatalf("a status was written without the permission: %v", cond)
	}
	rbac("clusterroles", `{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"writer"},"rules":[
		{"apiGroups":["coordination.k8s.io"],"resources":["leases"],"verbs":["get","create","update"]},
		{"apiGroups":["vakt.dev"],"resources":["applications/status"],"verbs":["patch"]}]}`)
	e.until(20*time.Second, "granted, the status was never written", func() bool {
		cond, _ := e.readyCondition()
		return cond != nil && cond["status"] == "True"
	})
}
