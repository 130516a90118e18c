package deploy_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/vakt-dev/vakt/internal/kubetest"
)

// A real kube-apiserver (internal/kubetest) accepts deploy/kubernetes as
// `kubectl apply --server-side` would send it: the namespace, then what
// kustomize renders from deploy/kubernetes, then overlays/redis over it,
// every object with strict field validation (an unknown or duplicate field
// is an error, not dropped) and no warning (the namespace warns on pods
// that break the "restricted" Pod Security Standard; the API server checks
// the Deployments' pod templates against it). kubernetes_test.go checks
// the same objects against the Go API types, and their contracts; this
// checks them against the API server's own validation and admission.
func TestKubernetesAPIServerAccepts(t *testing.T) {
	cluster := kubetest.Start(t)
	ctx := t.Context()

	warnings := &warningRecorder{}
	cfg := rest.CopyConfig(cluster.Config)
	cfg.WarningHandler = warnings
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	// apply server-side-applies one object given as JSON, strictly.
	apply := func(source string, data []byte) error {
		t.Helper()
		var u unstructured.Unstructured
		if err := u.UnmarshalJSON(data); err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %s %s: %v", source, gvk, u.GetName(), err)
		}
		var r dynamic.ResourceInterface = client.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			if u.GetNamespace() == "" {
				t.Fatalf("%s: %s %s has no namespace", source, gvk.Kind, u.GetName())
			}
			r = client.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		force := true
		_, err = r.Patch(ctx, u.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
			FieldManager:    "vakt-deploy-test",
			Force:           &force,
			FieldValidation: metav1.FieldValidationStrict,
		})
		return err
	}
	applyAll := func(source string, docs [][]byte) {
		t.Helper()
		for _, data := range docs {
			warnings.take()
			err := apply(source, data)
			kind, name := kindName(data)
			if err != nil {
				t.Errorf("%s: the API server refuses %s %s: %v", source, kind, name, err)
			} else if w := warnings.take(); len(w) > 0 {
				t.Errorf("%s: %s %s: the API server warns: %s", source, kind, name, strings.Join(w, "; "))
			} else {
				t.Logf("%s: %s %s applied", source, kind, name)
			}
		}
	}

	ns, err := os.ReadFile(filepath.Join(baseDir, "namespace.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	nsJSON, err := yaml.YAMLToJSONStrict(ns)
	if err != nil {
		t.Fatal(err)
	}
	applyAll("kubernetes/namespace.yaml", [][]byte{nsJSON})

	for _, dir := range []string{baseDir, redisDir} {
		docs := renderJSON(t, dir)
		applyAll(dir, docs)

		// The checks are strict: the same Deployment with a misspelt field
		// is refused, not stored without it, both by server-side apply and
		// by a create (client-side apply's first request) with strict
		// field validation.
		for _, data := range docs {
			if kind, _ := kindName(data); kind != "Deployment" {
				continue
			}
			var d unstructured.Unstructured
			if err := d.UnmarshalJSON(data); err != nil {
				t.Fatal(err)
			}
			d.Object["spec"].(map[string]any)["replica"] = int64(2)
			bad, err := d.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			if err := apply(dir, bad); err == nil || !strings.Contains(err.Error(), ".spec.replica: field not declared in schema") {
				t.Errorf("%s: server-side apply of a Deployment with spec.replica: %v, want .spec.replica: field not declared in schema", dir, err)
			}
			_, err = client.Resource(appsv1.SchemeGroupVersion.WithResource("deployments")).Namespace(d.GetNamespace()).Create(ctx, &d,
				metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict})
			if err == nil || !strings.Contains(err.Error(), `unknown field "spec.replica"`) {
				t.Errorf("%s: a create of a Deployment with spec.replica: %v, want unknown field \"spec.replica\"", dir, err)
			}
			break
		}
	}
}

// renderJSON builds a kustomization as `kubectl apply -k dir` would (load
// restrictions on, no plugins; as render in kubernetes_test.go) and returns
// its objects as JSON, unchanged: render's decoding into the Go types would
// drop what the API server should see.
func renderJSON(t *testing.T, dir string) [][]byte {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var docs [][]byte
	for _, res := range m.Resources() {
		data, err := res.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, data)
	}
	if len(docs) == 0 {
		t.Fatalf("%s renders nothing", dir)
	}
	return docs
}

func kindName(data []byte) (kind, name string) {
	var o struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(data, &o)
	return o.Kind, o.Metadata.Name
}

// warningRecorder keeps the API server's warnings (Warning headers).
type warningRecorder struct {
	mu   sync.Mutex
	list []string
}

func (w *warningRecorder) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

// take returns the warnings since the last take.
func (w *warningRecorder) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}
