package server

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/vakt-dev/vakt/config"
)

// KubeStatusConfig configures the writing of the Application resources'
// status.
type KubeStatusConfig struct {
	Rest    *rest.Config
	Client  dynamic.Interface
	Current *Current
	// LeaseNamespace and LeaseName name the coordination.k8s.io Lease the
	// replicas elect the writer with; Identity is this replica (its pod).
	LeaseNamespace, LeaseName, Identity string
	// The election's timing; 15 s, 10 s and 2 s when zero.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Logger                                    *slog.Logger
}

// RunStatusWriter takes part in the election of the replica that writes
// status until ctx ends. While this replica leads, it writes each
// Application's status from the runtime in force, whenever it changes:
// condition Ready True (Serving) while its latest generation serves, False
// with the reason when it was refused (the message says which earlier
// generation serves, if one does), and observedGeneration. One writer,
// so that replicas never fight over a status; every replica enforces.
func RunStatusWriter(ctx context.Context, c KubeStatusConfig) error {
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
				(&statusWriter{client: c.Client, cur: c.Current, log: log, written: map[string]writtenStatus{}, failing: map[string]*failure{}}).run(lctx)
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
	client  dynamic.Interface
	cur     *Current
	log     *slog.Logger
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

// writtenStatus is a status as last written, to write only changes and keep
// the condition's lastTransitionTime while its status stands.
type writtenStatus struct {
	uid                     string
	generation, served      int64
	status, reason, message string
	lastTransition          string
}

func (w *statusWriter) run(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	var last *Runtime
	for {
		if rt := w.cur.Load(); rt != nil && rt != last {
			if w.write(ctx, rt) {
				last = rt // every status written; else try again
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// write writes every status that changed; false when one is still to be
// written (it failed, and waits to be tried again).
func (w *statusWriter) write(ctx context.Context, rt *Runtime) bool {
	ok := true
	now := time.Now()
	present := make(map[string]bool, len(rt.Resources))
	for _, st := range rt.Resources {
		if ctx.Err() != nil {
			return false // no longer leading, or stopping
		}
		r := st.Resource
		present[r.key()] = true
		if r.Kind != config.KindApplication {
			continue // Jwker status: later, in NAIS's fields
		}
		if f := w.failing[r.key()]; f != nil && now.Before(f.next) {
			ok = false
			continue
		}
		want := writtenStatus{uid: r.UID, generation: r.Generation, served: st.Served, status: "True", reason: "Serving",
			message: fmt.Sprintf("generation %d serves", r.Generation)}
		switch {
		case st.Refused != nil && st.Served > 0:
			want.status, want.reason = "False", "Refused"
			want.message = fmt.Sprintf("generation %d was refused; generation %d serves: %v", r.Generation, st.Served, st.Refused)
		case st.Refused != nil:
			want.status, want.reason = "False", "Refused"
			want.message = fmt.Sprintf("generation %d was refused: %v", r.Generation, st.Refused)
		}
		prev, seen := w.written[r.key()]
		if seen && prev.uid == want.uid && prev.generation == want.generation && prev.served == want.served &&
			prev.status == want.status && prev.reason == want.reason && prev.message == want.message {
			continue
		}
		want.lastTransition = time.Now().UTC().Format(time.RFC3339)
		if seen && prev.uid == want.uid && prev.status == want.status {
			want.lastTransition = prev.lastTransition
		}
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": config.ResourceGroup + "/" + config.ResourceVersion,
			"kind":       config.KindApplication,
			// The uid makes the write a precondition: never the status of a
			// namesake created since.
			"metadata": map[string]any{"name": r.Name, "namespace": r.Namespace, "uid": r.UID},
			"status": map[string]any{
				"observedGeneration": r.Generation,
				"conditions": []any{map[string]any{
					"type": "Ready", "status": want.status, "reason": want.reason, "message": want.message,
					"observedGeneration": r.Generation, "lastTransitionTime": want.lastTransition,
				}},
			},
		}}
		_, err := w.client.Resource(applicationsGVR).Namespace(r.Namespace).ApplyStatus(ctx, r.Name, obj, metav1.ApplyOptions{FieldManager: "vakt", Force: true})
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
				w.log.Warn("kubernetes: a resource's status could not be written; trying again, less and less often", "namespace", r.Namespace, "name", r.Name, "error", err)
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
