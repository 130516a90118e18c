package kube

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
)

// StatusConfig configures the writing of the Application resources'
// status.
type StatusConfig struct {
	Rest   *rest.Config
	Client dynamic.Interface
	// Source is the replica's Source: the status says what became of each
	// resource in the configuration it merged last (Source.Served). With
	// MakeKeys, the elected replica also makes the client keys of the
	// resources with a secretName, with KeysClient (Client when nil: a
	// client of its own has a rate limit of its own, so that making keys
	// never holds status writes back).
	Source   *Source
	MakeKeys bool
	// KeyStats, when set, says how the fetches of an application's key set
	// from its jwksUri go (server.Runtime.ClientKeyStats of the runtime in
	// force): its status says it in the condition Keys.
	KeyStats   func(appID string) (authz.KeyStats, bool)
	KeysClient dynamic.Interface
	// LeaseNamespace and LeaseName name the coordination.k8s.io Lease the
	// replicas elect the writer with; Identity is this replica (its pod).
	LeaseNamespace, LeaseName, Identity string
	// The election's timing; 15 s, 10 s and 2 s when zero.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Logger                                    *slog.Logger

	// observe, when set, is told of every item the controllers' workers
	// reconcile: queue "status" or "keys", the item, and what its
	// reconciliation returned (tests).
	observe func(queue, key string, after time.Duration, err error)
}

// Backoff and workers of the status writer's queue.
const (
	// statusBackoff is a refused status write's first wait, doubling to
	// maxBackoff.
	statusBackoff = 500 * time.Millisecond
	// statusWorkers write statuses at once: one slow write (a webhook's
	// timeout) does not hold the others back. The client's rate limit
	// bounds them together.
	statusWorkers = 2
)

// RunStatusWriter takes part in the election of the replica that writes
// status until ctx ends. While this replica leads, it writes each
// Application's status from the configuration in force, whenever it changes:
// condition Ready True (Serving) while its latest generation serves, False
// with the reason when it was refused (the message says which earlier
// generation serves, if one does), and observedGeneration. One writer,
// so that replicas never fight over a status; every replica enforces.
func RunStatusWriter(ctx context.Context, c StatusConfig) error {
	log := cmp.Or(c.Logger, slog.Default())
	lease := cmp.Or(c.LeaseDuration, 15*time.Second)
	renew := cmp.Or(c.RenewDeadline, 10*time.Second)
	retry := cmp.Or(c.RetryPeriod, 2*time.Second)
	lock, err := resourcelock.NewFromKubeconfig(resourcelock.LeasesResourceLock, c.LeaseNamespace, c.LeaseName,
		resourcelock.ResourceLockConfig{Identity: c.Identity}, c.Rest, renew)
	if err != nil {
		return fmt.Errorf("kubernetes: the status writer's lease: %w", err)
	}
	// The elector starts OnStartedLeading in a goroutine it does not wait
	// for: the callback hands the term to a goroutine of this function's,
	// which leads one term at a time (a term won again waits for the last
	// one's controllers to stop) and is joined before it returns.
	terms := make(chan context.Context)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, LeaseDuration: lease, RenewDeadline: renew, RetryPeriod: retry, ReleaseOnCancel: true,
		Name: c.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				select {
				case terms <- lctx:
				case <-lctx.Done():
				}
			},
			OnStoppedLeading: func() { log.Info("kubernetes: this replica no longer writes status", "identity", c.Identity) },
		},
	})
	if err != nil {
		return fmt.Errorf("kubernetes: the status writer's election: %w", err)
	}
	var leader sync.WaitGroup
	leader.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case lctx := <-terms:
				log.Info("kubernetes: this replica writes the resources' status", "identity", c.Identity)
				lead(lctx, c, log)
			}
		}
	})
	// Run returns when leadership is lost: stand again until ctx ends.
	for ctx.Err() == nil {
		le.Run(ctx)
	}
	leader.Wait()
	return nil
}

// lead runs the elected replica's controllers, the status writer and the
// key provisioner, each with its own queue and workers, until ctx ends
// (leadership lost, or stopping); it returns once all their goroutines
// have.
func lead(ctx context.Context, c StatusConfig, log *slog.Logger) {
	observe := func(queue string) observer {
		if c.observe == nil {
			return nil
		}
		return func(key string, after time.Duration, err error) { c.observe(queue, key, after, err) }
	}
	w := &statusWriter{client: c.Client, src: c.Source, log: log, queue: newQueue("vakt-status", statusBackoff), logged: map[string]string{}, keyStats: c.KeyStats}
	var wg sync.WaitGroup
	if c.MakeKeys {
		// Keys are made beside the status writes, so that neither waits
		// for the other.
		kc := c.KeysClient
		if kc == nil {
			kc = c.Client
		}
		w.keys = newKeyProvisioner(kc, c.Source, c.LeaseNamespace, log)
		w.keys.onProblem = w.queue.Add
		wg.Go(func() { w.keys.run(ctx, observe("keys")) })
	}
	wg.Go(func() { w.run(ctx, observe("status")) })
	wg.Wait()
}

// statusWriter writes the resources' status while its replica leads.
type statusWriter struct {
	client dynamic.Interface
	log    *slog.Logger
	src    *Source         // what is served, and the status as it stands
	keys   *keyProvisioner // nil unless it makes keys
	queue  controllerQueue // keys of the resources whose status to check
	// last is the Served whose changes were enqueued last (servedKey's).
	last  *Served
	index servedIndex
	// logged holds the error last logged of each resource whose status
	// could not be written: an error is logged when it changes, not on
	// every try.
	mu     sync.Mutex
	logged map[string]string
	// keyStats says how an application's jwksUri fetches go; nil: unknown.
	keyStats func(appID string) (authz.KeyStats, bool)
}

// keysRecheck is how often the status of an application whose keys come
// from a jwksUri is looked at again: a fetch's success or failure is no
// event.
const keysRecheck = 10 * time.Second

// run enqueues, until ctx ends, the resources whose status may have to
// change: those whose status is new or changes with each Served committed,
// those whose status changed under it (an informer event; on a newly
// elected replica, every resource once, read from the cache), and those
// whose key problem changed (keyProvisioner.onProblem); its workers write
// them.
func (w *statusWriter) run(ctx context.Context, observe observer) {
	q := w.queue
	stopServed := w.src.onServed.add(func() { q.Add(servedKey) })
	defer stopServed()
	enqueue := func(obj any) {
		if u, ok := objectOf(obj); ok {
			q.Add(resourceKey(u))
		}
	}
	removeHandlers := w.src.addHandlers(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue,
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*unstructured.Unstructured)
			n, ok2 := cur.(*unstructured.Unstructured)
			// A change of the status, or of the object: not of the spec
			// or an annotation alone (a new Served says what those make).
			if !ok1 || !ok2 || o.GetUID() != n.GetUID() || !equality.Semantic.DeepEqual(o.Object["status"], n.Object["status"]) {
				enqueue(cur)
			}
		},
		DeleteFunc: enqueue,
	}, nil)
	defer removeHandlers()
	q.Add(servedKey)
	runWorkers(ctx, q, statusWorkers, w.sync, observe)
}

// condition is a status condition as vakt writes it.
type condition struct{ typ, status, reason, message string }

// statusOf is what the status of a resource should say: its fields but the
// conditions, and its conditions (an Application's; a Jwker has NAIS's
// fields and none). ok is false when nothing is to be written yet.
func (w *statusWriter) statusOf(st State, cluster string) (fields map[string]any, conds []condition, ok bool) {
	r := st.Resource
	problem := ""
	if w.keys != nil {
		problem = w.keys.problem(r.key())
	}
	if r.Kind == config.KindJwker {
		// NAIS's fields (liberator's JwkerStatus), with jwker's states.
		fields = map[string]any{"observedGeneration": r.Generation}
		switch {
		case st.Refused != nil:
			fields["synchronizationState"] = "FailedPrepare"
		case problem != "":
			fields["synchronizationState"] = "FailedSynchronization"
		case len(st.KeyIDs) == 0:
			return nil, nil, false // the key is being made
		default:
			fields["synchronizationState"] = "RolloutComplete"
		}
		if st.Served > 0 && cluster != "" {
			fields["clientID"] = authz.AppID{Cluster: cluster, Namespace: r.Namespace, Name: r.Name}.String()
			fields["synchronizationSecretName"] = st.SecretName
			kids := make([]any, 0, len(st.KeyIDs))
			for _, k := range st.KeyIDs {
				kids = append(kids, k)
			}
			fields["keyIDs"] = kids
		}
		return fields, nil, true
	}
	ready := condition{typ: "Ready", status: "True", reason: ReasonServing, message: fmt.Sprintf("generation %d serves", r.Generation)}
	if st.Refused != nil {
		// What a team wrote may be quoted: never at any length.
		why := truncate(st.Refused.Error(), 1024)
		ready.status, ready.reason = "False", cmp.Or(st.Reason, ReasonRefused)
		verb := "was refused"
		switch ready.reason {
		case ReasonSlowed:
			verb = "waits"
		case ReasonConflict:
			verb = "conflicts with what another application holds"
		case ReasonLimitExceeded:
			verb = "is past its namespace's limits"
		}
		if st.Served > 0 {
			ready.message = fmt.Sprintf("generation %d %s; generation %d serves: %s", r.Generation, verb, st.Served, why)
		} else {
			ready.message = fmt.Sprintf("generation %d %s: %s", r.Generation, verb, why)
		}
	}
	conds = []condition{ready}
	if st.SecretName != "" && st.Served > 0 {
		keys := condition{typ: "ClientKey", status: "True", reason: "Published"}
		switch {
		case problem != "":
			keys.status, keys.reason, keys.message = "False", "Failed", problem
		case len(st.KeyIDs) == 0:
			keys.status, keys.reason = "False", "Pending"
			keys.message = fmt.Sprintf("vakt is making the client key in Secret %s", st.SecretName)
		default:
			keys.message = fmt.Sprintf("key %s is in Secret %s", st.KeyIDs[0], st.SecretName)
			if n := len(st.KeyIDs) - 1; n > 0 {
				keys.message += fmt.Sprintf("; %d replaced key(s) stay valid for the overlap", n)
			}
		}
		conds = append(conds, keys)
	}
	if st.JWKSURI != "" && st.Served > 0 && w.keyStats != nil && cluster != "" {
		if ks, ok := w.keyStats(authz.AppID{Cluster: cluster, Namespace: r.Namespace, Name: r.Name}.String()); ok {
			keys := condition{typ: "Keys", status: "True", reason: "Fetched", message: fmt.Sprintf("%d keys from %s", ks.Keys, st.JWKSURI)}
			switch {
			case ks.LastError != nil:
				keys.status, keys.reason = "False", "FetchFailed"
				keys.message = truncate(fmt.Sprintf("the last fetch of %s failed: %v", st.JWKSURI, ks.LastError), 1024)
				if !ks.LastSuccess.IsZero() {
					keys.message += fmt.Sprintf("; the %d keys fetched before stay in use", ks.Keys)
				}
			case ks.LastSuccess.IsZero():
				keys.status, keys.reason, keys.message = "Unknown", "Pending", fmt.Sprintf("vakt is fetching the keys from %s", st.JWKSURI)
			}
			conds = append(conds, keys)
		}
	}
	return map[string]any{"observedGeneration": r.Generation}, conds, true
}

// withServed adds to an Application's status fields the version that
// serves, for replicas that never saw it (status.served). Apart from
// statusOf, which runs for every resource at every commit: the spec is up
// to 256 KiB, and whether it changed is its generation's to say.
func withServed(fields map[string]any, st State) map[string]any {
	if st.Resource.Kind == config.KindApplication && st.Served > 0 {
		fields["served"] = map[string]any{"generation": st.Served, "spec": string(st.ServedSpec)}
	}
	return fields
}

// recordServed writes a Jwker's version that serves into its record in
// vakt's namespace (servedRecordName) when the record says otherwise: what
// an Application's status.served is, for replicas that never saw that
// version serve (Resource.Recorded).
func (w *statusWriter) recordServed(ctx context.Context, st State) error {
	r := st.Resource
	if r.Kind != config.KindJwker || st.Served <= 0 || w.src.records == nil {
		return nil
	}
	if rec, ok := w.src.servedRecord(r.UID); ok && rec.Generation == st.Served && bytes.Equal(rec.Spec, st.ServedSpec) {
		return nil
	}
	name, ns := servedRecordName(r.UID), w.src.keysNamespace
	meta := map[string]any{
		"name": name, "namespace": ns,
		"labels":      map[string]any{labelRecord: recordServed, labelManagedBy: managedByVakt},
		"annotations": map[string]any{annotationOwner: r.Namespace + "/" + r.Name},
	}
	obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
		"data": map[string]any{servedGeneration: strconv.FormatInt(st.Served, 10), servedSpec: string(st.ServedSpec)}}}
	cms := w.client.Resource(configMapsGVR).Namespace(ns)
	var err error
	if live, ok, _ := w.src.records.GetStore().GetByKey(ns + "/" + name); ok {
		u, _ := live.(*unstructured.Unstructured)
		meta["resourceVersion"] = u.GetResourceVersion()
		_, err = cms.Update(ctx, obj, metav1.UpdateOptions{FieldManager: "vakt"})
	} else {
		_, err = cms.Create(ctx, obj, metav1.CreateOptions{FieldManager: "vakt"})
	}
	if err != nil {
		// A conflict is an informer behind the API server: tried again.
		return fmt.Errorf("recording the version serving in ConfigMap %s/%s: %w", ns, name, err)
	}
	return nil
}

// sync writes one resource's status when what vakt owns of it is not as
// statusOf says; servedKey enqueues what a new Served changed.
func (w *statusWriter) sync(ctx context.Context, key string) (time.Duration, error) {
	if key == servedKey {
		w.servedChanged()
		return 0, nil
	}
	rt := w.src.Served()
	st, ok := w.index.state(rt, key)
	if !ok {
		w.failed(key, nil) // not served: nothing to write
		w.failed("served/"+key, nil)
		return 0, nil
	}
	cluster := ""
	if rt.Config != nil {
		cluster = rt.Config.Cluster
	}
	// The record first, but its failure (a policy that forbids it, say)
	// holds up no status: both are tried again after the queue's backoff.
	recErr := w.recordServed(ctx, st)
	w.failed("served/"+key, recErr)
	wait, err := w.writeStatus(ctx, key, st, cluster)
	if err == nil && recErr != nil && ctx.Err() == nil {
		return 0, recErr
	}
	return wait, err
}

// writeStatus is sync's status write.
func (w *statusWriter) writeStatus(ctx context.Context, key string, st State, cluster string) (time.Duration, error) {
	fields, conds, ready := w.statusOf(st, cluster)
	fields = withServed(fields, st)
	if !ready {
		w.failed(key, nil)
		return 0, nil
	}
	r := st.Resource
	// The status as it stands, as the informer has it: a newly elected
	// writer starts from it, writing nothing when it says what would be
	// written (each condition's lastTransitionTime kept).
	var observed map[string]any
	if uid, o, ok := w.src.status(r.Kind, r.Namespace, r.Name); ok {
		if uid != r.UID {
			w.failed(key, nil)
			return 0, nil // recreated since: the next Served says
		}
		observed = o
	}
	var again time.Duration
	if st.JWKSURI != "" && w.keyStats != nil {
		again = keysRecheck
	}
	now := time.Now()
	status, changed := desiredStatus(r, fields, conds, observed, now)
	if !changed {
		w.failed(key, nil)
		return again, nil
	}
	gvr, kind, apiVersion := applicationsGVR, config.KindApplication, config.ResourceGroup+"/"+config.ResourceVersion
	if r.Kind == config.KindJwker {
		gvr, kind, apiVersion = jwkersGVR, config.KindJwker, config.JwkerGroup+"/"+config.JwkerVersion
		status["synchronizationTimestamp"] = now.UTC().Format(time.RFC3339)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": apiVersion,
		"kind":       kind,
		// The uid makes the write a precondition: never the status of a
		// namesake created since.
		"metadata": map[string]any{"name": r.Name, "namespace": r.Namespace, "uid": r.UID},
		"status":   status,
	}}
	_, err := w.client.Resource(gvr).Namespace(r.Namespace).ApplyStatus(ctx, r.Name, obj, metav1.ApplyOptions{FieldManager: "vakt", Force: true})
	switch {
	case err == nil:
		w.failed(key, nil)
		return again, nil
	case ctx.Err() != nil:
		return 0, err // no longer leading, or stopping
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		// Deleted, or recreated under the name: the next Served says.
		w.failed(key, nil)
		return 0, nil
	default:
		w.failed(key, err)
		return 0, err // tried again after the queue's backoff
	}
}

// failed logs a resource's error when it is not the one logged last; nil
// forgets it.
func (w *statusWriter) failed(key string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		delete(w.logged, key)
		return
	}
	if msg := err.Error(); msg != w.logged[key] {
		w.logged[key] = msg
		what := "a resource's status could not be written"
		if k, ok := strings.CutPrefix(key, "served/"); ok {
			key, what = k, "the version of a Jwker that serves could not be recorded"
		}
		kind, ns, name := splitKey(key)
		w.log.Warn("kubernetes: "+what+"; trying again, less and less often", "kind", kind, "namespace", ns, "name", name, "error", err)
	}
}

// splitKey is a resource key's kind, namespace and name.
func splitKey(key string) (kind, namespace, name string) {
	kind, rest, _ := strings.Cut(key, "/")
	namespace, name, _ = strings.Cut(rest, "/")
	return kind, namespace, name
}

// servedChanged enqueues the resources whose status a new Served changes:
// new ones, ones whose status it says differently, and ones gone (their
// failures forgotten).
func (w *statusWriter) servedChanged() {
	cur := w.src.Served()
	prev := w.last
	w.last = cur
	if cur == prev || cur == nil {
		return
	}
	before := statesByKey(prev)
	for _, st := range cur.States {
		key := st.Resource.key()
		if i, ok := before[key]; ok {
			delete(before, key)
			if w.sameStatus(prev.States[i], prev.Config, st, cur.Config) {
				continue
			}
		}
		w.queue.Add(key)
	}
	for key := range before {
		w.queue.Add(key)
	}
}

// sameStatus reports whether statusOf says the same of two states of a
// resource, in the configurations they were merged into.
func (w *statusWriter) sameStatus(a State, ca *config.Config, b State, cb *config.Config) bool {
	if a.Resource.UID != b.Resource.UID {
		return false
	}
	cluster := func(c *config.Config) string {
		if c == nil {
			return ""
		}
		return c.Cluster
	}
	if a.Served != b.Served || !bytes.Equal(a.ServedSpec, b.ServedSpec) {
		return false // status.served (withServed)
	}
	fa, conda, oka := w.statusOf(a, cluster(ca))
	fb, condb, okb := w.statusOf(b, cluster(cb))
	return oka == okb && slices.Equal(conda, condb) && sameJSON(fa, fb)
}

// sameJSON reports whether two values are the same JSON (an int64 of a
// status as written and as read back are).
func sameJSON(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}

// vaktConditions are the condition types the status writer owns: one
// statusOf no longer asks for is removed.
var vaktConditions = []string{"Ready", "ClientKey", "Keys"}

// ownedFields are the fields of a kind's status the status writer owns,
// but its conditions and synchronizationTimestamp.
func ownedFields(kind string) []string {
	if kind == config.KindJwker {
		return []string{"observedGeneration", "clientID", "keyIDs", "synchronizationState", "synchronizationSecretName"}
	}
	return []string{"observedGeneration", "served"}
}

// desiredStatus is the status to apply for a resource (what the field
// manager vakt owns of it: fields and conditions), from statusOf's fields
// and conditions and the status observed (nil when unknown), and whether
// it changes what vakt owns. Conditions are merged into the observed ones
// with meta.SetStatusCondition: a condition's lastTransitionTime moves
// only when its status does.
func desiredStatus(r Resource, fields map[string]any, want []condition, observed map[string]any, now time.Time) (map[string]any, bool) {
	changed := observed == nil
	status := maps.Clone(fields)
	if status == nil {
		status = map[string]any{}
	}
	for _, f := range ownedFields(r.Kind) {
		if !sameJSON(fields[f], observed[f]) {
			changed = true
		}
	}
	conds := observedConditions(observed)
	for _, c := range want {
		if meta.SetStatusCondition(&conds, metav1.Condition{
			Type: c.typ, Status: metav1.ConditionStatus(c.status), Reason: c.reason, Message: c.message,
			ObservedGeneration: r.Generation, LastTransitionTime: metav1.NewTime(now),
		}) {
			changed = true
		}
	}
	for _, typ := range vaktConditions {
		if !slices.ContainsFunc(want, func(c condition) bool { return c.typ == typ }) && meta.RemoveStatusCondition(&conds, typ) {
			changed = true
		}
	}
	if len(conds) > 0 {
		list := make([]any, 0, len(conds))
		for _, c := range conds {
			list = append(list, map[string]any{
				"type": c.Type, "status": string(c.Status), "reason": c.Reason, "message": c.Message,
				"observedGeneration": c.ObservedGeneration, "lastTransitionTime": c.LastTransitionTime.UTC().Format(time.RFC3339),
			})
		}
		status["conditions"] = list
	}
	return status, changed
}

// observedConditions are the conditions of vakt's types in a status as the
// informer holds it; one without a readable lastTransitionTime is left
// out, to be written anew.
func observedConditions(status map[string]any) []metav1.Condition {
	list, _ := status["conditions"].([]any)
	var out []metav1.Condition
	for _, c := range list {
		m, ok := c.(map[string]any)
		if !ok {
			continue
		}
		typ, _ := m["type"].(string)
		if !slices.Contains(vaktConditions, typ) {
			continue // not vakt's
		}
		at, _ := m["lastTransitionTime"].(string)
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			continue
		}
		cd := metav1.Condition{Type: typ, LastTransitionTime: metav1.NewTime(t)}
		s, _ := m["status"].(string)
		cd.Status = metav1.ConditionStatus(s)
		cd.Reason, _ = m["reason"].(string)
		cd.Message, _ = m["message"].(string)
		cd.ObservedGeneration, _ = m["observedGeneration"].(int64)
		out = append(out, cd)
	}
	return out
}
