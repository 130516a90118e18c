package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	// Created is the object's creationTimestamp: of two resources claiming
	// one id, host or resource URI, the older keeps it.
	Created time.Time
	Spec    []byte // JSON, as the API server serves it
	// Published is what vakt published of the client key it made for the
	// resource (spec.secretName): an Application's status.keys,
	// status.retiredKeys, status.rotation and status.secretName, a Jwker's
	// record in vakt's namespace (SourceConfig.KeysNamespace), as JSON
	// (publishedKeys); nil when there is none.
	Published []byte
	// RotateKey is the annotation vakt.dev/rotate-key: a value not yet
	// honoured asks for a new client key.
	RotateKey string
	// NamespaceLabels are the labels of the resource's namespace, which
	// kubernetes.grants may select it by.
	NamespaceLabels map[string]string
	// Recorded is the version the elected replica recorded as serving
	// (an Application's status.served, a Jwker's record in vakt's
	// namespace); nil when none is.
	Recorded *Recorded
}

// Recorded is a version of a resource that served: its generation and
// spec.
type Recorded struct {
	Generation int64
	Spec       []byte
}

// recordedOf reads an Application's status.served, or a Jwker's record of
// the version serving.
func (k *Source) recordedOf(u *unstructured.Unstructured) *Recorded {
	var gen int64
	var spec string
	switch u.GetKind() {
	case config.KindApplication:
		var ok1, ok2 bool
		gen, ok1, _ = unstructured.NestedInt64(u.Object, "status", "served", "generation")
		spec, ok2, _ = unstructured.NestedString(u.Object, "status", "served", "spec")
		if !ok1 || !ok2 {
			return nil
		}
	case config.KindJwker:
		rec, ok := k.servedRecord(string(u.GetUID()))
		if !ok {
			return nil
		}
		gen, spec = rec.Generation, string(rec.Spec)
	}
	if gen <= 0 || len(spec) > config.MaxResourceSpec {
		return nil
	}
	return &Recorded{Generation: gen, Spec: []byte(spec)}
}

// servedRecord is the version of the Jwker with the given uid recorded as
// serving, as the informer last saw it.
func (k *Source) servedRecord(uid string) (Recorded, bool) {
	if k.records == nil {
		return Recorded{}, false
	}
	obj, ok, err := k.records.GetStore().GetByKey(k.keysNamespace + "/" + servedRecordName(uid))
	if err != nil || !ok {
		return Recorded{}, false
	}
	rec, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return Recorded{}, false
	}
	g, _, _ := unstructured.NestedString(rec.Object, "data", servedGeneration)
	spec, ok, _ := unstructured.NestedString(rec.Object, "data", servedSpec)
	gen, err := strconv.ParseInt(g, 10, 64)
	if !ok || err != nil {
		return Recorded{}, false
	}
	return Recorded{Generation: gen, Spec: []byte(spec)}, true
}

// key names the resource across its versions.
func (r *Resource) key() string { return r.Kind + "/" + r.Namespace + "/" + r.Name }

// Source watches the Application (and Jwker) resources of a cluster: an
// informer each, per namespace watched, whose caches are what the reload
// path merges into the configuration (Merge). The caches outlive an API
// server that is down: vakt keeps serving the resources it last saw, and
// the informers resynchronise when it returns.
type Source struct {
	log       *slog.Logger
	informers []cache.SharedIndexInformer
	watched   []watched // what each informer watches
	// records holds the ConfigMaps of Jwkers' published keys, in
	// keysNamespace; nil without Jwkers.
	records cache.SharedIndexInformer
	// namespaces holds the namespaces' labels: kubernetes.grants may name
	// namespaces by label selector.
	namespaces    cache.SharedIndexInformer
	keysNamespace string
	onChange      func()

	merger  resourceMerger
	watches []*watchState // one per informer, for metrics
	specs   struct {
		mu sync.Mutex
		m  map[string]specJSON // by uid
	}
	api *APIHealth // nil when not known
	// served is what the configuration in force was merged from, and what
	// became of each resource in it: the status writer and the key
	// provisioner work from it.
	served atomic.Pointer[Served]
	// onServed are told of each Served committed: the elected replica's
	// status writer and key provisioner.
	onServed servedHooks
}

// Served is what a configuration in force holds of the cluster's
// resources: the configuration they were merged into, and what became of
// each.
type Served struct {
	Config *config.Config
	States []State
}

type watched struct{ kind, namespace string }

// SourceConfig configures a Source.
type SourceConfig struct {
	Client dynamic.Interface
	// API, when set, is what Client's requests say of the API server
	// (InformerClient), for the metrics.
	API *APIHealth
	// Namespaces to watch; every namespace when empty.
	Namespaces []string
	// Jwkers watches jwkers.nais.io too.
	Jwkers bool
	// KeysNamespace is vakt's own namespace, where the keys vakt published
	// for Jwkers are kept (ConfigMaps vakt-keys-<uid>: NAIS's Jwker has no
	// status field for keys, and its annotations are a team's, or
	// naiserator's, to overwrite). Without it, no Jwker has keys.
	KeysNamespace string
	Logger        *slog.Logger
	// OnChange is called after every change the informers see, and once
	// when they have first synchronised: the caller reloads, which merges
	// the resources again (Merge).
	OnChange func()
}

var (
	applicationsGVR = schema.GroupVersionResource{Group: config.ResourceGroup, Version: config.ResourceVersion, Resource: "applications"}
	jwkersGVR       = schema.GroupVersionResource{Group: config.JwkerGroup, Version: config.JwkerVersion, Resource: "jwkers"}
)

// NewSource returns the watcher; Run starts it.
func NewSource(cfg SourceConfig) *Source {
	k := &Source{log: cmp.Or(cfg.Logger, slog.Default()), onChange: cfg.OnChange, api: cfg.API}
	if k.onChange == nil {
		k.onChange = func() {}
	}
	// A change that waits for its namespace's rate is merged when it may.
	k.merger.retry = func(d time.Duration) { time.AfterFunc(d, k.changed) }
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
			// not its managedFields, nor annotations and status but vakt's.
			_ = inf.SetTransform(slim)
			_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
				AddFunc: func(obj any) { k.resourceChanged(obj) },
				// A change of metadata or status (an annotation, vakt's own
				// status) leaves the generation: no reload, which a team
				// could otherwise keep from ever settling. The keys vakt
				// published in an Application's status do reload: every
				// replica serves them (a team cannot write status).
				UpdateFunc: func(old, cur any) {
					o, ok1 := old.(*unstructured.Unstructured)
					n, ok2 := cur.(*unstructured.Unstructured)
					switch {
					case !ok1 || !ok2 || o.GetUID() != n.GetUID() || string(applicationPublished(o)) != string(applicationPublished(n)):
						k.changed()
					case o.GetGeneration() != n.GetGeneration() && !k.merger.waiting(n.GetNamespace()):
						// A new version in a namespace that must wait is merged
						// when its rate allows (a merge is asked for then): a
						// namespace patching in a loop costs a merge per change
						// it may make, not one per patch.
						k.changed()
					}
				},
				DeleteFunc: func(obj any) { k.resourceChanged(obj) },
			})
			k.track(gvr.Resource, inf, "the resources last seen stay in force")
			k.informers = append(k.informers, inf)
			kind := config.KindApplication
			if gvr == jwkersGVR {
				kind = config.KindJwker
			}
			k.watched = append(k.watched, watched{kind: kind, namespace: ns})
		}
	}
	if cfg.Jwkers && cfg.KeysNamespace != "" {
		k.keysNamespace = cfg.KeysNamespace
		f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(cfg.Client, 0, cfg.KeysNamespace, func(o *metav1.ListOptions) {
			o.LabelSelector = labelRecord + " in (" + recordKeys + "," + recordServed + ")"
		})
		k.records = f.ForResource(configMapsGVR).Informer()
		_ = k.records.SetTransform(slimRecord)
		_, _ = k.records.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { k.changed() },
			UpdateFunc: func(any, any) { k.changed() },
			DeleteFunc: func(any) { k.changed() },
		})
		k.track("configmaps (the Jwkers' published keys)", k.records, "the keys last seen stay in force")
	}
	k.namespaces = dynamicinformer.NewDynamicSharedInformerFactory(cfg.Client, 0).ForResource(namespacesGVR).Informer()
	_ = k.namespaces.SetTransform(slimNamespace)
	// Only a change of labels can change what a grant gives, and only when
	// a grant selects namespaces by them: a tenant relabelling its
	// namespace in a loop merges nothing otherwise.
	_, _ = k.namespaces.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { k.labelsChanged() },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*unstructured.Unstructured)
			n, ok2 := cur.(*unstructured.Unstructured)
			if !ok1 || !ok2 || !maps.Equal(o.GetLabels(), n.GetLabels()) {
				k.labelsChanged()
			}
		},
		DeleteFunc: func(any) { k.labelsChanged() },
	})
	k.track("namespaces", k.namespaces, "the labels last seen stay in force")
	return k
}

// slimRecord keeps of a keys record its name, uid, labels, owner and data.
func slimRecord(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	out := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap"}}
	out.SetName(u.GetName())
	out.SetNamespace(u.GetNamespace())
	out.SetUID(u.GetUID())
	out.SetLabels(u.GetLabels())
	if o, ok := u.GetAnnotations()[annotationOwner]; ok {
		out.SetAnnotations(map[string]string{annotationOwner: o})
	}
	out.SetResourceVersion(u.GetResourceVersion())
	if d, ok := u.Object["data"]; ok {
		out.Object["data"] = d
	}
	return out, nil
}

var namespacesGVR = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}

// track follows an informer's watch for metrics and the log: a failure is
// logged once, when the watch starts failing, and its end once, with how
// long it lasted.
func (k *Source) track(resource string, inf cache.SharedIndexInformer, kept string) {
	w := &watchState{resource: resource, inf: inf}
	k.watches = append(k.watches, w)
	var since atomic.Int64 // when the failure began, unix nanoseconds
	recovered := func() {
		if start := since.Swap(0); start != 0 {
			k.log.Info("kubernetes: watching works again", "resource", resource, "outage", time.Since(time.Unix(0, start)).Round(time.Second).String())
		}
	}
	_ = inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		w.failed()
		if since.CompareAndSwap(0, time.Now().UnixNano()) {
			k.log.Warn("kubernetes: watching failed; "+kept+"; retrying with backoff", "resource", resource, "error", err)
		}
	})
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.event(time.Now()); recovered() },
		UpdateFunc: func(any, any) { w.event(time.Now()); recovered() },
		DeleteFunc: func(any) { w.event(time.Now()); recovered() },
	})
}

// slimNamespace keeps of a namespace its name and labels.
func slimNamespace(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	out := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace"}}
	out.SetName(u.GetName())
	out.SetUID(u.GetUID())
	out.SetLabels(u.GetLabels())
	out.SetResourceVersion(u.GetResourceVersion())
	return out, nil
}

// namespaceLabels are a namespace's labels as last seen; nil when unknown.
func (k *Source) namespaceLabels(ns string) map[string]string {
	obj, ok, err := k.namespaces.GetStore().GetByKey(ns)
	if err != nil || !ok {
		return nil
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil
	}
	return u.GetLabels()
}

// recordName names the ConfigMap holding a Jwker's published keys: by uid,
// unique and never reused.
func recordName(uid string) string { return "vakt-keys-" + uid }

// servedRecordName names the ConfigMap holding the version of a Jwker that
// serves, by uid as recordName.
func servedRecordName(uid string) string { return "vakt-served-" + uid }

// allInformers are the informers Run runs and Synced waits for.
func (k *Source) allInformers() []cache.SharedIndexInformer {
	all := append(slices.Clip(k.informers), k.namespaces)
	if k.records != nil {
		all = append(all, k.records)
	}
	return all
}

// slim keeps of an object what vakt reads: kind, name, namespace, uid,
// generation, spec, the keys vakt published for it (and the request for
// new ones), and the status vakt wrote.
func slim(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	out := &unstructured.Unstructured{Object: map[string]any{"apiVersion": u.GetAPIVersion(), "kind": u.GetKind()}}
	out.SetName(u.GetName())
	out.SetNamespace(u.GetNamespace())
	out.SetUID(u.GetUID())
	out.SetCreationTimestamp(u.GetCreationTimestamp())
	out.SetGeneration(u.GetGeneration())
	out.SetResourceVersion(u.GetResourceVersion())
	if spec, ok := u.Object["spec"]; ok {
		out.Object["spec"] = spec
	}
	if v, ok := u.GetAnnotations()[AnnotationRotateKey]; ok {
		out.SetAnnotations(map[string]string{AnnotationRotateKey: v})
	}
	if st, ok := u.Object["status"].(map[string]any); ok {
		keep := map[string]any{}
		// The keys vakt published, and what a new status writer compares
		// with before writing.
		for _, f := range [...]string{"keys", "retiredKeys", "rotation", "secretName", "conditions", "observedGeneration", "served",
			"clientID", "keyIDs", "synchronizationState", "synchronizationSecretName"} {
			if v, ok := st[f]; ok {
				keep[f] = v
			}
		}
		if len(keep) > 0 {
			out.Object["status"] = keep
		}
	}
	return out, nil
}

// publishedOf is what vakt published of a resource's client key (see
// Resource.Published): JSON, nil when nothing.
func (k *Source) publishedOf(u *unstructured.Unstructured) []byte {
	if u.GetKind() != config.KindJwker {
		return applicationPublished(u)
	}
	if k.records == nil {
		return nil
	}
	obj, ok, err := k.records.GetStore().GetByKey(k.keysNamespace + "/" + recordName(string(u.GetUID())))
	if err != nil || !ok {
		return nil
	}
	rec, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil
	}
	v, _, _ := unstructured.NestedString(rec.Object, "data", recordKey)
	if v == "" {
		return nil
	}
	return []byte(v)
}

// applicationPublished is what vakt published in an Application's status.
func applicationPublished(u *unstructured.Unstructured) []byte {
	if u.GetKind() != config.KindApplication {
		return nil
	}
	st, ok := u.Object["status"].(map[string]any)
	if !ok || st["keys"] == nil {
		return nil
	}
	b, err := json.Marshal(map[string]any{"keys": st["keys"], "retiredKeys": st["retiredKeys"], "rotation": st["rotation"], "secretName": st["secretName"]})
	if err != nil {
		return nil
	}
	return b
}

// resourceChanged is a resource created or deleted: a merge, unless its
// namespace must wait for its rate (a merge is asked for when it may).
func (k *Source) resourceChanged(obj any) {
	if u, ok := objectOf(obj); ok && k.merger.waiting(u.GetNamespace()) {
		return
	}
	k.changed()
}

// labelsChanged is a namespace's labels changed: a merge, when a grant of
// the configuration in force selects namespaces by their labels.
func (k *Source) labelsChanged() {
	if s := k.Served(); s == nil || s.Config == nil || s.Config.Kubernetes.UsesNamespaceLabels() {
		k.changed()
	}
}

func (k *Source) changed() {
	if k.Synced() {
		k.onChange()
	}
}

// Run runs the informers until ctx ends, and calls OnChange once they
// have synchronised.
func (k *Source) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, inf := range k.allInformers() {
		wg.Add(1)
		go func() { defer wg.Done(); inf.Run(ctx.Done()) }()
	}
	if cache.WaitForCacheSync(ctx.Done(), k.hasSyncedFuncs()...) {
		k.log.Info("kubernetes: resources synchronised", "informers", len(k.allInformers()))
		k.onChange()
	}
	wg.Wait()
}

func (k *Source) hasSyncedFuncs() []cache.InformerSynced {
	all := k.allInformers()
	out := make([]cache.InformerSynced, len(all))
	for i, inf := range all {
		out[i] = inf.HasSynced
	}
	return out
}

// Synced reports whether every informer has listed its resources once.
func (k *Source) Synced() bool {
	for _, inf := range k.allInformers() {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

// Resources are the resources the informers hold, oldest first (by
// creationTimestamp, then namespace, name and kind): of two claiming one
// id, host or resource URI, the older keeps it, on every replica and
// across restarts, whatever the order of events (as the Gateway API
// resolves conflicting routes).
func (k *Source) Resources() []Resource {
	var out []Resource
	seen := make(map[string]specJSON, len(k.specs.m))
	defer func() {
		k.specs.mu.Lock()
		k.specs.m = seen // what is gone is forgotten
		k.specs.mu.Unlock()
	}()
	for _, inf := range k.informers {
		for _, obj := range inf.GetStore().List() {
			u, ok := obj.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			b, ok := k.specOf(u, seen)
			if !ok {
				continue
			}
			out = append(out, Resource{
				Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(),
				UID: string(u.GetUID()), Generation: u.GetGeneration(), Created: u.GetCreationTimestamp().Time, Spec: b,
				Published: k.publishedOf(u), RotateKey: u.GetAnnotations()[AnnotationRotateKey],
				NamespaceLabels: k.namespaceLabels(u.GetNamespace()), Recorded: k.recordedOf(u),
			})
		}
	}
	slices.SortFunc(out, olderFirst)
	return out
}

// specJSON is an object's spec as JSON, for one resourceVersion of it.
type specJSON struct {
	rv   string
	spec []byte
}

// specOf is u's spec as JSON: written once per version of the object, not
// at every merge (a merge reads every resource; specs are up to 256 KiB,
// and a refused one may be larger). seen collects what was read.
func (k *Source) specOf(u *unstructured.Unstructured, seen map[string]specJSON) ([]byte, bool) {
	uid, rv := string(u.GetUID()), u.GetResourceVersion()
	k.specs.mu.Lock()
	c, ok := k.specs.m[uid]
	k.specs.mu.Unlock()
	if !ok || c.rv != rv || rv == "" {
		b, err := json.Marshal(u.Object["spec"]) // the informer's object: read, never changed
		if err != nil {
			return nil, false
		}
		c = specJSON{rv: rv, spec: b}
	}
	seen[uid] = c
	return c.spec, true
}

// olderFirst orders resources by creationTimestamp, then the one recorded
// as serving first, then namespace, name and kind.
func olderFirst(a, b Resource) int {
	return cmp.Or(a.Created.Compare(b.Created), recordedFirst(a, b), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Kind, b.Kind))
}

// recordedFirst orders, of two resources created within the same second
// (creationTimestamp's resolution), the one recorded as serving before the
// one not: a newcomer cannot take a name from the resource that holds it
// by being created within the same second under a name that sorts first.
// The record is in the cluster, so every replica orders them alike.
func recordedFirst(a, b Resource) int {
	switch {
	case a.Recorded != nil && b.Recorded == nil:
		return -1
	case a.Recorded == nil && b.Recorded != nil:
		return 1
	}
	return 0
}

// object is one resource as the informers hold it now (slimmed).
func (k *Source) object(kind, namespace, name string) (*unstructured.Unstructured, bool) {
	for i, inf := range k.informers {
		if w := k.watched[i]; w.kind != kind || (w.namespace != "" && w.namespace != namespace) {
			continue
		}
		obj, ok, err := inf.GetStore().GetByKey(namespace + "/" + name)
		if err != nil || !ok {
			continue
		}
		if u, ok := obj.(*unstructured.Unstructured); ok {
			return u, true
		}
	}
	return nil, false
}

// lookup is one resource as the informers hold it now (its spec left out).
func (k *Source) lookup(kind, namespace, name string) (Resource, bool) {
	u, ok := k.object(kind, namespace, name)
	if !ok {
		return Resource{}, false
	}
	return Resource{Kind: kind, Namespace: namespace, Name: name, UID: string(u.GetUID()), Generation: u.GetGeneration(),
		Published: k.publishedOf(u), RotateKey: u.GetAnnotations()[AnnotationRotateKey]}, true
}

// status is one resource's status as the informers hold it (what slim
// keeps of it), and its uid.
func (k *Source) status(kind, namespace, name string) (uid string, status map[string]any, ok bool) {
	u, ok := k.object(kind, namespace, name)
	if !ok {
		return "", nil, false
	}
	st, _ := u.Object["status"].(map[string]any)
	return string(u.GetUID()), st, true
}

// lastKeys are the keys last published for an object, by uid.
type lastKeys struct {
	uid       string
	published []byte
}

// errNotSynced keeps vakt out of rotation until the resources are in.
var errNotSynced = errors.New("the Kubernetes resources have not been read yet")

// Merge adds the cluster's resources to cfg, a configuration not yet in
// force, each checked by config's own code; with servingOnly, only the
// resources serving now, in the version that serves (the configuration to
// fall back on when the one with everything could not be built). The
// caller calls commit once the runtime built from cfg is in force: what it
// accepted then becomes the last good version of each resource, and the
// status writer and the key provisioner work from it. notReady is why vakt
// is not ready with cfg: the resources had not been read yet.
func (k *Source) Merge(cfg *config.Config, servingOnly bool) (commit func(), notReady error) {
	// Read before the merge: what is said of the resources is true of the
	// ones merged.
	synced := k.Synced()
	if !synced {
		notReady = errNotSynced
	}
	states, accept := k.merger.merge(cfg, k.Resources(), k.log, servingOnly)
	return func() {
		accept()
		if synced {
			k.merger.prime()
		}
		k.served.Store(&Served{Config: cfg, States: states})
		k.onServed.notify()
	}, notReady
}

// Served is what the configuration in force was merged from; nil before
// the first.
func (k *Source) Served() *Served { return k.served.Load() }
