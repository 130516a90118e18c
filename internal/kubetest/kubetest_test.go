package kubetest_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vakt-dev/vakt/internal/kubetest"
	"github.com/vakt-dev/vakt/internal/waittest"
)

var (
	namespaces   = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	configMaps   = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	roles        = schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"}
	roleBindings = schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"}
)

func client(t *testing.T, cfg *rest.Config) *dynamic.DynamicClient {
	t.Helper()
	c, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func obj(m map[string]any) *unstructured.Unstructured { return &unstructured.Unstructured{Object: m} }

func configMap(name string) *unstructured.Unstructured {
	return obj(map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": name},
		"data":     map[string]any{"k": "v"},
	})
}

// The cluster authenticates its token users and authorizes them with RBAC;
// its kubeconfig file works; clients made before a restart of the API
// server work after it, and an informer catches up.
func TestCluster(t *testing.T) {
	c := kubetest.Start(t, kubetest.WithUser("reader", "readers"))
	ctx := t.Context()
	admin := client(t, c.Config)

	if _, err := admin.Resource(namespaces).Create(ctx, obj(map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "test"},
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cms := admin.Resource(configMaps).Namespace("test")
	if _, err := cms.Create(ctx, configMap("before"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The kubeconfig file: the administrator, verifying the server.
	kc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client(t, kc).Resource(configMaps).Namespace("test").Get(ctx, "before", metav1.GetOptions{}); err != nil {
		t.Fatalf("with %s: %v", c.Kubeconfig, err)
	}

	// TokenFor refuses a user the token file lacks, or with other groups.
	for _, tc := range []struct {
		user   string
		groups []string
	}{{"nobody", nil}, {"vakt", []string{"system:masters"}}} {
		ft := &fatalT{TB: t}
		func() {
			defer func() { _ = recover() }()
			c.TokenFor(ft, tc.user, tc.groups...)
		}()
		if !ft.failed {
			t.Errorf("TokenFor(%q, %q): no failure", tc.user, tc.groups)
		}
	}

	// A client that trusts no CA is refused the server's certificate.
	untrusting := rest.CopyConfig(c.Config)
	untrusting.CAData = nil
	if _, err := client(t, untrusting).Resource(namespaces).List(ctx, metav1.ListOptions{}); err == nil {
		t.Error("a client without the cluster's CA: no TLS error")
	}

	// RBAC: "vakt" and "reader" may do nothing, until a Role is bound to
	// the group readers.
	vakt := client(t, c.TokenFor(t, "vakt")).Resource(configMaps).Namespace("test")
	reader := client(t, c.TokenFor(t, "reader", "readers")).Resource(configMaps).Namespace("test")
	for name, r := range map[string]dynamic.ResourceInterface{"vakt": vakt, "reader": reader} {
		if _, err := r.List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("%s lists configmaps before any grant: %v, want Forbidden", name, err)
		}
	}
	if _, err := admin.Resource(roles).Namespace("test").Create(ctx, obj(map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
		"metadata": map[string]any{"name": "read-configmaps"},
		"rules": []any{map[string]any{
			"apiGroups": []any{""}, "resources": []any{"configmaps"}, "verbs": []any{"get", "list", "watch"},
		}},
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Resource(roleBindings).Namespace("test").Create(ctx, obj(map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
		"metadata": map[string]any{"name": "readers"},
		"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
		"subjects": []any{map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "readers"}},
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A grant takes effect when the RBAC authorizer's cache has it.
	waittest.UntilNil(t, 30*time.Second, "reader, in group readers, lists configmaps after the grant", func() error {
		_, err := reader.List(ctx, metav1.ListOptions{})
		return err
	})
	if _, err := vakt.List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("vakt, in no group, after the grant to readers: %v, want Forbidden", err)
	}
	if _, err := reader.Create(ctx, configMap("by-reader"), metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("reader creates a configmap with only get/list/watch: %v, want Forbidden", err)
	}

	// An informer (reader's), running across a restart of the API server.
	var mu sync.Mutex
	seen := map[string]bool{}
	inf := cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return reader.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return reader.Watch(ctx, o)
		},
	}, &unstructured.Unstructured{}, 0, cache.Indexers{})
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(o any) {
		mu.Lock()
		defer mu.Unlock()
		seen[o.(*unstructured.Unstructured).GetName()] = true
	}}); err != nil {
		t.Fatal(err)
	}
	infCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { inf.RunWithContext(infCtx); close(done) }()
	defer func() { stop(); <-done }()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("the informer did not sync")
	}

	// A graceful restart (SIGTERM), then a crash (SIGKILL) and a start.
	for i, restart := range []func(testing.TB){c.RestartAPIServer, func(t testing.TB) {
		c.KillAPIServer(t)
		c.StartAPIServer(t)
	}} {
		restart(t)

		// The same clients work again: nothing was lost (etcd kept), the
		// server's certificate is the same, the tokens too.
		if _, err := cms.Get(ctx, "before", metav1.GetOptions{}); err != nil {
			t.Fatalf("restart %d: %v", i, err)
		}
		waittest.UntilNil(t, 30*time.Second, fmt.Sprintf("restart %d: reader lists configmaps", i), func() error {
			_, err := reader.List(ctx, metav1.ListOptions{})
			return err
		})
		after := fmt.Sprintf("after-%d", i)
		if _, err := cms.Create(ctx, configMap(after), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waittest.UntilNil(t, 30*time.Second, fmt.Sprintf("restart %d: the informer sees %s", i, after), func() error {
			mu.Lock()
			defer mu.Unlock()
			if !seen["before"] || !seen[after] {
				return fmt.Errorf("seen %v", seen)
			}
			return nil
		})
	}
}

// fatalT records Fatal instead of ending the test.
type fatalT struct {
	testing.TB
	failed bool
}

func (f *fatalT) Helper() {}
func (f *fatalT) Fatalf(format string, args ...any) {
	f.failed = true
	panic(errors.New("fatal"))
}
