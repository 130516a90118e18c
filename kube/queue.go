package kube

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// The elected replica's two controllers, the status writer and the key
// provisioner, are each a rate-limited work queue of resource keys
// (Resource.key) drained by workers, as Kubernetes controllers are:
// something that can change what a resource needs enqueues its key (a
// configuration committed, an informer event, a key problem reported),
// a worker reconciles it, and a failure is retried with the queue's
// backoff. Nothing polls: a quiet cluster costs the leader nothing.

// Two items of the queues are not resources (a resource's key is
// kind/namespace/name, never one of these).
const (
	// servedKey says a new Served was committed: its worker compares it
	// with the one it saw last and enqueues the resources whose work
	// changed. Commits in a burst are one item.
	servedKey = "served"
	// collectKey is the key provisioner's housekeeping, requeued every
	// collectEvery: the records of Jwkers that are gone, and what it
	// remembers of keys no longer made.
	collectKey = "collect"
)

const (
	// maxBackoff caps a failing item's wait (the per-item exponential
	// backoff of client-go's workqueue).
	maxBackoff = 5 * time.Minute
	// collectEvery is how often collectKey runs.
	collectEvery = time.Minute
)

// controllerQueue is a controller's work queue of resource keys.
type controllerQueue = workqueue.TypedRateLimitingInterface[string]

// newQueue is a work queue whose failing items wait base, doubling to
// maxBackoff, and whose retries all together make at most 10 a second
// (bursts of 100): client-go's DefaultTypedControllerRateLimiter, with
// vakt's first wait and cap. name names it to client-go's workqueue
// metrics, should a provider be registered.
func newQueue(name string, base time.Duration) controllerQueue {
	return workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedMaxOfRateLimiter(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](base, maxBackoff),
			&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
		),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: name})
}

// syncFunc reconciles one item of a queue: the error retries it after the
// queue's backoff; without one its failures are forgotten, and a positive
// duration brings it back after that long.
type syncFunc func(ctx context.Context, key string) (time.Duration, error)

// observer is told of every item a controller reconciled, with what its
// reconciliation returned (tests).
type observer func(key string, after time.Duration, err error)

// runWorkers drains q with n workers until ctx ends, then shuts q down and
// returns once every worker has. observe, when set, is told of every item
// reconciled.
func runWorkers(ctx context.Context, q controllerQueue, n int, reconcile syncFunc, observe observer) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for {
				key, shutdown := q.Get()
				if shutdown {
					return
				}
				after, err := reconcile(ctx, key)
				switch {
				case err != nil:
					if ctx.Err() == nil {
						q.AddRateLimited(key)
					}
				default:
					q.Forget(key)
					if after > 0 {
						q.AddAfter(key, after)
					}
				}
				q.Done(key)
				if observe != nil {
					observe(key, after, err)
				}
			}
		})
	}
	<-ctx.Done()
	q.ShutDown()
	wg.Wait()
}

// servedHooks are told of every Served a Source commits: the queues of the
// elected replica's controllers, while it leads. The zero value has none.
type servedHooks struct {
	mu   sync.Mutex
	next int
	fns  map[int]func()
}

// add registers fn; the function returned unregisters it.
func (h *servedHooks) add(fn func()) (remove func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fns == nil {
		h.fns = map[int]func(){}
	}
	id := h.next
	h.next++
	h.fns[id] = fn
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.fns, id)
	}
}

// notify tells every hook; a hook only enqueues, never blocks.
func (h *servedHooks) notify() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, fn := range h.fns {
		fn()
	}
}

// addHandlers adds res to the informers of the resources (Applications,
// Jwkers) and rec, when set, to the one of the Jwkers' records; remove
// takes them off. An informer already running replays its objects to a
// new handler as additions.
func (k *Source) addHandlers(res, rec cache.ResourceEventHandler) (remove func()) {
	type added struct {
		inf cache.SharedIndexInformer
		reg cache.ResourceEventHandlerRegistration
	}
	var regs []added
	for _, inf := range k.informers {
		if reg, err := inf.AddEventHandler(res); err == nil {
			regs = append(regs, added{inf, reg})
		}
	}
	if rec != nil && k.records != nil {
		if reg, err := k.records.AddEventHandler(rec); err == nil {
			regs = append(regs, added{k.records, reg})
		}
	}
	// A notification under way when its handler is removed may still
	// enqueue: into a queue shut down by then, where Add does nothing.
	return func() {
		for _, a := range regs {
			_ = a.inf.RemoveEventHandler(a.reg)
		}
	}
}

// objectOf is the object of an informer event (a deletion's last state
// when the informer missed it).
func objectOf(obj any) (*unstructured.Unstructured, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	return u, ok
}

// resourceKey is the key (Resource.key) of an Application or a Jwker.
func resourceKey(u *unstructured.Unstructured) string {
	return u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
}

// servedIndex finds a resource's State in a Served by its key; it indexes
// the last Served it was asked of.
type servedIndex struct {
	mu sync.Mutex
	of *Served
	at map[string]int
}

func (x *servedIndex) state(s *Served, key string) (State, bool) {
	if s == nil {
		return State{}, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.of != s {
		x.of, x.at = s, statesByKey(s)
	}
	i, ok := x.at[key]
	if !ok {
		return State{}, false
	}
	return s.States[i], true
}

// statesByKey indexes a Served's states by their resource's key.
func statesByKey(s *Served) map[string]int {
	if s == nil {
		return nil
	}
	at := make(map[string]int, len(s.States))
	for i, st := range s.States {
		at[st.Resource.key()] = i
	}
	return at
}
