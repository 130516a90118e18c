package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
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
	Source     *Source
	MakeKeys   bool
	KeysClient dynamic.Interface
	// LeaseNamespace and LeaseName name the coordination.k8s.io Lease the
	// replicas elect the writer with; Identity is this replica (its pod).
	LeaseNamespace, LeaseName, Identity string
	// The election's timing; 15 s, 10 s and 2 s when zero.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Logger                                    *slog.Logger
}

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
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, LeaseDuration: lease, RenewDeadline: renew, RetryPeriod: retry, ReleaseOnCancel: true,
		Name: c.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				log.Info("kubernetes: this replica writes the resources' status", "identity", c.Identity)
				w := &statusWriter{client: c.Client, src: c.Source, log: log, written: map[string]writtenStatus{}, failing: map[string]*failure{}}
				var keys sync.WaitGroup
				if c.MakeKeys {
					// Keys are made beside the status writes, so that neither
					// waits for the other.
					kc := c.KeysClient
					if kc == nil {
						kc = c.Client
					}
					w.keys = newKeyProvisioner(kc, c.Source, c.LeaseNamespace, log)
					keys.Go(func() { w.keys.run(lctx) })
				}
				w.run(lctx)
				keys.Wait()
			},
			OnStoppedLeading: func() { log.Info("kubernetes: this replica no longer writes status", "identity", c.Identity) },
		},
	})
	if err != nil {
		return fmt.Errorf("kubernetes: the status writer's election: %w", err)
	}
	// Run returns when leadership is lost: stand again until ctx ends.
	for ctx.Err() == nil {
		le.Run(ctx)
	}
	return nil
}

type statusWriter struct {
	client dynamic.Interface
	log    *slog.Logger
	src    *Source         // what is served, and the status as it stands
	keys   *keyProvisioner // nil unless it makes keys
	// written is each resource's status as last written.
	written map[string]writtenStatus
	// failing holds the resources whose status could not be written: each
	// is tried again after a wait that doubles, to 5 minutes, and its error
	// is logged when it changes, not on every try.
	failing map[string]*failure
}

type failure struct {
	next time.Time
	wait time.Duration
	err  string
}

// writtenStatus is a status as last written, to write only changes and
// keep each condition's lastTransitionTime while its status stands.
type writtenStatus struct {
	uid       string
	sig       string            // what was written, but for times
	statuses  map[string]string // condition type → status
	changedAt map[string]string // condition type → lastTransitionTime
}

func (w *statusWriter) run(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	var last *Served
	problems := 0
	for {
		rt := w.src.Served()
		changed := false
		if w.keys != nil {
			if n := w.keys.changeCount(); n != problems {
				problems, changed = n, true
			}
		}
		if rt != nil && (rt != last || changed) {
			if w.write(ctx, rt) {
				last = rt // every status written; else try again
			} else {
				last = nil
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
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
	return map[string]any{"observedGeneration": r.Generation}, conds, true
}

// write writes every status that changed; false when one is still to be
// written (it failed, and waits to be tried again).
func (w *statusWriter) write(ctx context.Context, rt *Served) bool {
	ok := true
	now := time.Now()
	stamp := now.UTC().Format(time.RFC3339)
	cluster := ""
	if rt.Config != nil {
		cluster = rt.Config.Cluster
	}
	present := make(map[string]bool, len(rt.States))
	for _, st := range rt.States {
		if ctx.Err() != nil {
			return false // no longer leading, or stopping
		}
		r := st.Resource
		present[r.key()] = true
		if f := w.failing[r.key()]; f != nil && now.Before(f.next) {
			ok = false
			continue
		}
		fields, conds, ready := w.statusOf(st, cluster)
		if !ready {
			continue
		}
		sig := sigOf(fields, conds)
		prev, seen := w.written[r.key()]
		if !seen || prev.uid != r.UID {
			// A new writer (this replica was just elected) starts from the
			// status as it stands: no write when it says what would be
			// written, and each condition's lastTransitionTime kept.
			if uid, st, ok := w.src.status(r.Kind, r.Namespace, r.Name); ok && uid == r.UID {
				prev, seen = observedStatus(r, st), true
			}
		}
		if seen && prev.uid == r.UID && prev.sig == sig {
			continue
		}
		want := writtenStatus{uid: r.UID, sig: sig, statuses: map[string]string{}, changedAt: map[string]string{}}
		status := map[string]any{}
		for k, v := range fields {
			status[k] = v
		}
		gvr, kind, apiVersion := applicationsGVR, config.KindApplication, config.ResourceGroup+"/"+config.ResourceVersion
		if r.Kind == config.KindJwker {
			gvr, kind, apiVersion = jwkersGVR, config.KindJwker, config.JwkerGroup+"/"+config.JwkerVersion
			status["synchronizationTimestamp"] = stamp
		}
		if len(conds) > 0 {
			list := make([]any, 0, len(conds))
			for _, c := range conds {
				// A condition's lastTransitionTime moves only when its status does.
				at := stamp
				if seen && prev.uid == r.UID && prev.statuses[c.typ] == c.status {
					at = prev.changedAt[c.typ]
				}
				want.statuses[c.typ], want.changedAt[c.typ] = c.status, at
				list = append(list, map[string]any{
					"type": c.typ, "status": c.status, "reason": c.reason, "message": c.message,
					"observedGeneration": r.Generation, "lastTransitionTime": at,
				})
			}
			status["conditions"] = list
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
			delete(w.failing, r.key())
			w.written[r.key()] = want
		case ctx.Err() != nil:
			return false
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
			// Deleted, or recreated under the name: the next runtime says.
			w.written[r.key()] = want
		default:
			f := w.failing[r.key()]
			if f == nil {
				f = &failure{}
				w.failing[r.key()] = f
			}
			f.wait = min(max(2*f.wait, time.Second), 5*time.Minute)
			f.next = now.Add(f.wait)
			if msg := err.Error(); msg != f.err {
				f.err = msg
				w.log.Warn("kubernetes: a resource's status could not be written; trying again, less and less often", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "error", err)
			}
			ok = false
		}
	}
	if ok {
		// Forget what was written of resources no longer there.
		for key := range w.written {
			if !present[key] {
				delete(w.written, key)
			}
		}
	}
	return ok
}

// sigOf is what a status says but for its times: a write is skipped when
// it would not change it.
func sigOf(fields map[string]any, conds []condition) string {
	type cond struct{ Type, Status, Reason, Message string }
	cs := make([]cond, 0, len(conds))
	for _, c := range conds {
		cs = append(cs, cond{c.typ, c.status, c.reason, c.message})
	}
	f := make(map[string]any, len(fields))
	for k, v := range fields {
		if k != "synchronizationTimestamp" {
			f[k] = v
		}
	}
	b, _ := json.Marshal(struct {
		F map[string]any
		C []cond
	}{f, cs})
	return string(b)
}

// observedStatus is a resource's status as the informer holds it, in the
// form of what vakt writes: the fields and conditions vakt owns.
func observedStatus(r Resource, st map[string]any) writtenStatus {
	ws := writtenStatus{uid: r.UID, statuses: map[string]string{}, changedAt: map[string]string{}}
	fields := map[string]any{}
	names := []string{"observedGeneration"}
	if r.Kind == config.KindJwker {
		names = append(names, "clientID", "keyIDs", "synchronizationState", "synchronizationSecretName")
	}
	for _, n := range names {
		if v, ok := st[n]; ok {
			fields[n] = v
		}
	}
	var conds []condition
	list, _ := st["conditions"].([]any)
	for _, c := range list {
		m, ok := c.(map[string]any)
		if !ok {
			continue
		}
		typ, _ := m["type"].(string)
		if typ != "Ready" && typ != "ClientKey" {
			continue // not vakt's
		}
		cd := condition{typ: typ}
		cd.status, _ = m["status"].(string)
		cd.reason, _ = m["reason"].(string)
		cd.message, _ = m["message"].(string)
		conds = append(conds, cd)
		ws.statuses[typ] = cd.status
		ws.changedAt[typ], _ = m["lastTransitionTime"].(string)
	}
	ws.sig = sigOf(fields, conds)
	return ws
}
