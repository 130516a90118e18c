package kube

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/vakt-dev/vakt/internal/waittest"
)

// requestLog records the requests a client makes: method, path, time.
type requestLog struct {
	mu   sync.Mutex
	reqs []loggedRequest
}

type loggedRequest struct {
	method, path string
	at           time.Time
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// client is a dynamic client for rc whose requests l records.
func (l *requestLog) client(t *testing.T, rc *rest.Config) dynamic.Interface {
	t.Helper()
	rc = rest.CopyConfig(rc)
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			l.mu.Lock()
			l.reqs = append(l.reqs, loggedRequest{r.Method, r.URL.Path, time.Now()})
			l.mu.Unlock()
			return rt.RoundTrip(r)
		})
	})
	c, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// take returns the requests recorded, and forgets them: reads (GET) and
// writes (the others).
func (l *requestLog) take() (reads, writes []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.reqs {
		if r.method == http.MethodGet {
			reads = append(reads, r.method+" "+r.path)
		} else {
			writes = append(writes, r.method+" "+r.path)
		}
	}
	l.reqs = nil
	return reads, writes
}

// workLog records the items the controllers' workers reconcile, and what
// each item's last reconciliation returned.
type workLog struct {
	mu    sync.Mutex
	items []string
	last  map[string]outcome
}

// outcome is what a reconciliation returned: the wait before the item
// comes back by itself (none: 0), or the error it is retried after.
type outcome struct {
	after time.Duration
	err   error
}

func (w *workLog) observe(queue, key string, after time.Duration, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.items = append(w.items, queue+" "+key)
	if w.last == nil {
		w.last = map[string]outcome{}
	}
	w.last[queue+" "+key] = outcome{after, err}
}

// comesBack says which items come back by themselves within d, as their
// last reconciliation left them (an error is retried within the queue's
// backoff), and which of want were never reconciled; nil when none.
func (w *workLog) comesBack(d time.Duration, want ...string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var soon, missing []string
	for item, o := range w.last {
		if o.err != nil || (o.after > 0 && o.after < d) {
			soon = append(soon, fmt.Sprintf("%s (after %v, error %v)", item, o.after, o.err))
		}
	}
	for _, item := range want {
		if _, ok := w.last[item]; !ok {
			missing = append(missing, item)
		}
	}
	if len(soon) > 0 || len(missing) > 0 {
		slices.Sort(soon)
		return fmt.Errorf("back within %v: %q; never reconciled: %q", d, soon, missing)
	}
	return nil
}

// take returns the resources reconciled (not the queues' own items,
// servedKey and collectKey), and forgets every item.
func (w *workLog) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, it := range w.items {
		if _, key, _ := strings.Cut(it, " "); key != servedKey && key != collectKey {
			out = append(out, it)
		}
	}
	w.items = nil
	return out
}

func (w *workLog) has(item string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Contains(w.items, item)
}

// The elected replica's controllers do nothing while nothing changes (the
// status writer polled every 200 ms and the key provisioner every second
// before they ran on work queues): settled, no item of their queues comes
// back by itself within a minute, as what each reconciliation returned
// says, rather than a quiet period watched. A replica elected in its place
// finds every status as it would write it and every key published: over
// its first pass, every resource reconciled, it writes nothing and reads
// at most what a key's check does; and a change still reaches it at once
// (a rotation asked for).
func TestKubeControllerQuiet(t *testing.T) {
	e := newKeysEnv(t, "") // a replica whose status writers this test runs
	r := e.replicas[""]
	e.apply(applicationsGVR, "team-b", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-b","namespace":"team-b"},
		"spec":{"accessPolicy":{"inbound":{"rules":[{"application":"app-1","namespace":"team-a"}]}}}}`)
	e.apply(applicationsGVR, "team-a", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-1","namespace":"team-a"},
		"spec":{"secretName":"app-1-tokenx"}}`)
	e.apply(jwkersGVR, "myteam", `{"apiVersion":"nais.io/v1","kind":"Jwker","metadata":{"name":"jw","namespace":"myteam"},
		"spec":{"accessPolicy":{},"secretName":"jw-tokenx"}}`)
	const keyed = 2 // resources with a secretName

	// writer runs a status writer (and key provisioner) as identity, its
	// requests and work logged; the lease's are not.
	writer := func(identity string) (*requestLog, *workLog, func()) {
		reqs, work := &requestLog{}, &workLog{}
		client := reqs.client(t, e.cluster.Config)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = RunStatusWriter(ctx, StatusConfig{Rest: e.cluster.Config, Client: client, Source: r.src, MakeKeys: true,
				LeaseNamespace: "vakt", LeaseName: "vakt-status", Identity: identity,
				LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 200 * time.Millisecond,
				Logger: quiet, observe: work.observe})
		}()
		stop := sync.OnceFunc(func() { cancel(); <-done })
		t.Cleanup(stop)
		return reqs, work, stop
	}
	reqs, work, stop := writer("a")
	var kid string
	e.until(30*time.Second, "the keys and statuses were never settled", func() bool {
		k := e.secretKey("team-a", "app-1-tokenx")
		if k == nil {
			return false
		}
		kid = k.ID
		key := e.condition("team-a", "app-1", "ClientKey")
		ready := e.condition("team-b", "app-b", "Ready")
		jw, err := e.client.Resource(jwkersGVR).Namespace("myteam").Get(context.Background(), "jw", metav1.GetOptions{})
		if err != nil || key == nil || ready == nil {
			return false
		}
		state, _, _ := unstructured.NestedString(jw.Object, "status", "synchronizationState")
		return key["status"] == "True" && strings.Contains(fmt.Sprint(key["message"]), kid) && ready["status"] == "True" && state == "RolloutComplete"
	})
	// Settled, each item's last reconciliation is final: no error left to
	// retry (a conflict's, say, retried at once). The wait is for those
	// retries; an item that comes back by itself never passes it.
	want := []string{"status Application/team-b/app-b", "status Application/team-a/app-1", "status Jwker/myteam/jw",
		"keys Application/team-a/app-1", "keys Jwker/myteam/jw"} // the keyed ones' keys
	waittest.UntilNil(t, 30*time.Second, "the controllers never came to rest", func() error { return work.comesBack(time.Minute, want...) })
	reads, writes := reqs.take()
	t.Logf("settling: %d reads, %d writes, %d resources reconciled", len(reads), len(writes), len(work.take()))

	// Stopped, the writer has joined every goroutine of its controllers.
	stop()
	if g := controllerGoroutines(); len(g) > 0 {
		t.Errorf("the stopped writer left goroutines:\n%s", strings.Join(g, "\n\n"))
	}

	// A replica elected in its place starts from what stands.
	reqs, work, _ = writer("b")
	e.until(15*time.Second, "b never took the lease", func() bool { return e.leader() == "b" })
	// b's first pass: every resource reconciled in both queues (what b
	// would write, it writes there), each reconciliation final. A key's
	// check comes at a random moment within keyResync of the election.
	e.until(10*time.Second, "b never went over what is served", func() bool {
		return work.has("status "+servedKey) && work.has("keys "+servedKey)
	})
	waittest.UntilNil(t, 30*time.Second, "b's first pass never ended", func() error { return work.comesBack(0, want...) })
	if len(controllerGoroutines()) == 0 {
		t.Error("no controller goroutine seen while b leads: controllerGoroutines sees nothing")
	}
	reads, writes = reqs.take()
	if len(writes) > 0 || len(reads) > 3*keyed {
		// A key is checked (three reads) at a random moment within
		// keyResync of an election: rarely as soon as this.
		t.Errorf("the newly elected replica's first pass: reads %q, writes %q; want no write and at most %d reads", reads, writes, 3*keyed)
	}
	t.Logf("the newly elected replica, settled: %d reads, reconciled %q", len(reads), work.take())

	// Nothing polls, yet a change is seen at once.
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"quiet"}}}`, AnnotationRotateKey)
	if _, err := e.apps.Namespace("team-a").Patch(context.Background(), "app-1", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	e.until(10*time.Second, "the rotation was never made", func() bool {
		k := e.secretKey("team-a", "app-1-tokenx")
		return k != nil && k.ID != kid
	})
}

// controllerGoroutines are the stacks of the goroutines running the
// elected replica's controllers (their workers, their run and lead).
func controllerGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, f := range []string{"kube.runWorkers", "kube.lead(", "kube.(*statusWriter)", "kube.(*keyProvisioner)", "kube.RunStatusWriter"} {
			if strings.Contains(g, f) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}
