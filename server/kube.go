package server

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/vakt-dev/vakt/config"
)

// Resource is an application declared in the cluster: an Application
// resource, or NAIS's Jwker.
type Resource struct {
	Kind            string // config.KindApplication or config.KindJwker
	Namespace, Name string
	UID             string
	Generation      int64
	Spec            []byte // JSON, as the API server serves it
}

// key names the resource across its versions.
func (r *Resource) key() string { return r.Kind + "/" + r.Namespace + "/" + r.Name }

// KubeSource watches the Application (and Jwker) resources of a cluster:
// an informer each, per namespace watched, whose caches are what the
// reload path merges into the configuration. The caches outlive an API
// server that is down: vakt keeps serving the resources it last saw, and
// the informers resynchronise when it returns.
type KubeSource struct {
	log       *slog.Logger
	informers []cache.SharedIndexInformer
	onChange  func()
}

// KubeSourceConfig configures a KubeSource.
type KubeSourceConfig struct {
	Client dynamic.Interface
	// Namespaces to watch; every namespace when empty.
	Namespaces []string
	// Jwkers watches jwkers.nais.io too.
	Jwkers bool
	Logger *slog.Logger
	// OnChange is called after every change the informers see, and once
	// when they have first synchronised: the caller reloads.
	OnChange func()
}

var (
	applicationsGVR = schema.GroupVersionResource{Group: config.ResourceGroup, Version: config.ResourceVersion, Resource: "applications"}
	jwkersGVR       = schema.GroupVersionResource{Group: config.JwkerGroup, Version: config.JwkerVersion, Resource: "jwkers"}
)

// NewKubeSource returns the watcher; Run starts it.
func NewKubeSource(cfg KubeSourceConfig) *KubeSource {
	k := &KubeSource{log: cmp.Or(cfg.Logger, slog.Default()), onChange: cfg.OnChange}
	if k.onChange == nil {
		k.onChange = func() {}
	}
	namespaces := cfg.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{""} // every namespace
	}
	gvrs := []schema.GroupVersionResource{applicationsGVR}
	if cfg.Jwkers {
		gvrs = append(gvrs, jwkersGVR)
	}
	for _, ns := range namespaces {
		// No periodic resync: every change is an event, and a reload
		// reads the whole cache anyway.
		f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(cfg.Client, 0, ns, nil)
		for _, gvr := range gvrs {
			inf := f.ForResource(gvr).Informer()
			// The cache keeps what vakt reads of each object, no more:
			// not its managedFields, annotations or status.
			_ = inf.SetTransform(slim)
			_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
				AddFunc: func(any) { k.changed() },
				// A change of metadata or status (an annotation, vakt's own
				// status) leaves the generation: no reload, which a team
				// could otherwise keep from ever settling.
				UpdateFunc: func(old, cur any) {
					o, ok1 := old.(*unstructured.Unstructured)
					n, ok2 := cur.(*unstructured.Unstructured)
					if !ok1 || !ok2 || o.GetGeneration() != n.GetGeneration() || o.GetUID() != n.GetUID() {
						k.changed()
					}
				},
				DeleteFunc: func(any) { k.changed() },
			})
			_ = inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
				k.log.Warn("kubernetes: watching resources failed; the resources last seen stay in force", "resource", gvr.Resource, "error", err)
			})
			k.informers = append(k.informers, inf)
		}
	}
	return k
}

// slim keeps of an object what vakt reads: kind, name, namespace, uid,
// generation and spec.
func slim(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	out := &unstructured.Unstructured{Object: map[string]any{"apiVersion": u.GetAPIVersion(), "kind": u.GetKind()}}
	out.SetName(u.GetName())
	out.SetNamespace(u.GetNamespace())
	out.SetUID(u.GetUID())
	out.SetGeneration(u.GetGeneration())
	out.SetResourceVersion(u.GetResourceVersion())
	if spec, ok := u.Object["spec"]; ok {
		out.Object["spec"] = spec
	}
	return out, nil
}

func (k *KubeSource) changed() {
	if k.Synced() {
		k.onChange()
	}
}

// Run runs the informers until ctx ends, and calls OnChange once they
// have synchronised.
func (k *KubeSource) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, inf := range k.informers {
		wg.Add(1)
		go func() { defer wg.Done(); inf.Run(ctx.Done()) }()
	}
	if cache.WaitForCacheSync(ctx.Done(), k.hasSyncedFuncs()...) {
		k.log.Info("kubernetes: resources synchronised", "informers", len(k.informers))
		k.onChange()
	}
	wg.Wait()
}

func (k *KubeSource) hasSyncedFuncs() []cache.InformerSynced {
	out := make([]cache.InformerSynced, len(k.informers))
	for i, inf := range k.informers {
		out[i] = inf.HasSynced
	}
	return out
}

// Synced reports whether every informer has listed its resources once.
func (k *KubeSource) Synced() bool {
	for _, inf := range k.informers {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

// Resources are the resources the informers hold, in a fixed order
// (namespace, name, kind), so that which of two claiming one id wins does
// not depend on the order of events.
func (k *KubeSource) Resources() []Resource {
	var out []Resource
	for _, inf := range k.informers {
		for _, obj := range inf.GetStore().List() {
			u, ok := obj.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			spec, _, _ := unstructured.NestedMap(u.Object, "spec")
			b, err := json.Marshal(spec)
			if err != nil {
				continue
			}
			out = append(out, Resource{
				Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(),
				UID: string(u.GetUID()), Generation: u.GetGeneration(), Spec: b,
			})
		}
	}
	slices.SortFunc(out, func(a, b Resource) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Kind, b.Kind))
	})
	return out
}

// ResourceState is what became of a resource in the configuration in
// force: served as it is, served in an earlier version (its latest was
// refused), or not served.
type ResourceState struct {
	Resource Resource
	// Served is the generation in force, 0 when none is.
	Served int64
	// Refused is why the latest version was refused; nil when it is served.
	Refused error
}

// resourceMerger merges resources into configurations, remembering the last
// version of each that was accepted: a resource whose new version does not
// validate keeps its previous one serving.
type resourceMerger struct {
	mu       sync.Mutex
	lastGood map[string]Resource
}

// merge adds the resources' applications to cfg (a fresh configuration,
// not yet in force), each checked by config.ResourceApplication (or
// JwkerApplication) against the file's applications and the resources
// accepted before it, and returns what became of each. cfg.Hash comes to
// name the resources in force too.
//
// What it accepted becomes the last good version of each resource only by
// commit, once the runtime built from cfg is in hand. With servingOnly,
// only the resources serving now are merged (newcomers and new versions
// wait): the configuration to fall back on when one with everything could
// not be built.
func (m *resourceMerger) merge(cfg *config.Config, resources []Resource, log *slog.Logger, servingOnly bool) (states []ResourceState, commit func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lastGood == nil {
		m.lastGood = map[string]Resource{}
	}
	accepted := map[string]Resource{}
	index := cfg.NewResourceIndex()
	read := func(r Resource) (*config.Application, error) {
		var a *config.Application
		var err error
		switch r.Kind {
		case config.KindApplication:
			a, _, err = index.ResourceApplicationIn(r.Name, r.Namespace, r.Spec)
		case config.KindJwker:
			a, _, err = index.JwkerApplicationIn(r.Name, r.Namespace, r.Spec)
		default:
			err = fmt.Errorf("%s is not a kind vakt reads", r.Kind)
		}
		if err != nil {
			// A refusal may quote what a team wrote: kept short, in the
			// log and in the runtime.
			return nil, errors.New(truncate(err.Error(), 1024))
		}
		return a, nil
	}
	// First come, first served: resources serving now (a version of the
	// same object accepted before) keep their claims, and are checked
	// before newcomers, whatever their names; a newcomer that sorts first
	// cannot displace them.
	incumbent := func(r Resource) bool {
		good, ok := m.lastGood[r.key()]
		return ok && good.UID == r.UID
	}
	resources = slices.Clone(resources)
	slices.SortStableFunc(resources, func(a, b Resource) int {
		ia, ib := incumbent(a), incumbent(b)
		switch {
		case ia && !ib:
			return -1
		case ib && !ia:
			return 1
		}
		return 0
	})
	h := sha256.New()
	h.Write([]byte(cfg.Hash))
	states = make([]ResourceState, 0, len(resources))
	for _, r := range resources {
		st := ResourceState{Resource: r}
		if servingOnly && !incumbent(r) {
			st.Refused = errors.New("not served yet: the configuration with it could not be built")
			states = append(states, st)
			continue
		}
		var a *config.Application
		var err error
		if servingOnly {
			if good := m.lastGood[r.key()]; good.Generation != r.Generation {
				st.Refused = errors.New("this version waits: the configuration with it could not be built")
				r = good
			}
		}
		a, err = read(r)
		served := r
		if err != nil {
			st.Refused = err
			log.Warn("kubernetes: a resource was refused", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "generation", r.Generation, "error", err)
			a = nil
			if good, ok := m.lastGood[r.key()]; ok && good.UID == r.UID {
				if a, err = read(good); err == nil {
					served = good
				} else {
					a = nil
				}
			}
		} else {
			accepted[r.key()] = r
		}
		if a != nil {
			cfg.Applications = append(cfg.Applications, *a)
			st.Served = served.Generation
			fmt.Fprintf(h, "\n%s %s %d ", served.key(), served.UID, served.Generation)
			h.Write(served.Spec)
		}
		states = append(states, st)
	}
	if len(resources) > 0 {
		cfg.Hash = hex.EncodeToString(h.Sum(nil)[:8])
	}
	seen := make(map[string]bool, len(resources))
	for _, r := range resources {
		seen[r.key()] = true
	}
	return states, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		for key := range m.lastGood {
			if !seen[key] {
				delete(m.lastGood, key) // deleted: no version of it serves
			}
		}
		maps.Copy(m.lastGood, accepted)
	}
}

// errKubeNotSynced keeps vakt out of rotation until the resources are in.
var errKubeNotSynced = errors.New("the Kubernetes resources have not been read yet")
