package deploy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/internal/kubetest"
	"github.com/vakt-dev/vakt/kube"
)

// A real kube-apiserver (internal/kubetest) accepts deploy/kubernetes as
// `kubectl apply --server-side` would send it: the namespace, then what
// kustomize renders from deploy/kubernetes, then overlays/redis and
// overlays/native-redis over it,
// every object with strict field validation (an unknown or duplicate field
// is an error, not dropped) and no warning (the namespace warns on pods
// that break the "restricted" Pod Security Standard; the API server checks
// the Deployments' pod templates against it). kubernetes_test.go checks
// the same objects against the Go API types, and their contracts; this
// checks them against the API server's own validation and admission.
func TestKubernetesAPIServerAccepts(t *testing.T) {
	cluster := kubetest.Start(t)
	ctx := t.Context()
	a := newApplier(t, cluster.Config)
	client, apply, applyAll := a.client, a.apply, a.applyAll

	applyAll("kubernetes/namespace.yaml", [][]byte{namespaceJSON(t)})

	for _, dir := range []string{baseDir, redisDir, nativeRedisDir} {
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

// applier applies objects as `kubectl apply --server-side` would, as the
// administrator: strictly, and recording the API server's warnings.
type applier struct {
	t        *testing.T
	client   dynamic.Interface
	mapper   meta.RESTMapper
	warnings *warningRecorder
}

func newApplier(t *testing.T, admin *rest.Config) *applier {
	t.Helper()
	warnings := &warningRecorder{}
	cfg := rest.CopyConfig(admin)
	cfg.WarningHandler = warnings
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{t: t, client: client, warnings: warnings,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

// apply server-side-applies one object given as JSON, strictly.
func (a *applier) apply(source string, data []byte) error {
	t := a.t
	t.Helper()
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON(data); err != nil {
		t.Fatalf("%s: %v", source, err)
	}
	gvk := u.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("%s: %s %s: %v", source, gvk, u.GetName(), err)
	}
	var r dynamic.ResourceInterface = a.client.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if u.GetNamespace() == "" {
			t.Fatalf("%s: %s %s has no namespace", source, gvk.Kind, u.GetName())
		}
		r = a.client.Resource(m.Resource).Namespace(u.GetNamespace())
	} else if u.GetNamespace() != "" {
		t.Fatalf("%s: %s %s is cluster-scoped but has namespace %s", source, gvk.Kind, u.GetName(), u.GetNamespace())
	}
	force := true
	_, err = r.Patch(t.Context(), u.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
		FieldManager:    "vakt-deploy-test",
		Force:           &force,
		FieldValidation: metav1.FieldValidationStrict,
	})
	return err
}

// applyAll applies objects, failing the test on a refusal or a warning.
func (a *applier) applyAll(source string, docs [][]byte) {
	t := a.t
	t.Helper()
	for _, data := range docs {
		a.warnings.take()
		err := a.apply(source, data)
		kind, name := kindName(data)
		if err != nil {
			t.Errorf("%s: the API server refuses %s %s: %v", source, kind, name, err)
		} else if w := a.warnings.take(); len(w) > 0 {
			t.Errorf("%s: %s %s: the API server warns: %s", source, kind, name, strings.Join(w, "; "))
		} else {
			t.Logf("%s: %s %s applied", source, kind, name)
		}
	}
}

// namespaceJSON is deploy/kubernetes/namespace.yaml as JSON.
func namespaceJSON(t *testing.T) []byte {
	t.Helper()
	ns, err := os.ReadFile(filepath.Join(baseDir, "namespace.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSONStrict(ns)
	if err != nil {
		t.Fatal(err)
	}
	return j
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

// The CRDs (deploy/kubernetes/crds) on a real kube-apiserver: installed by
// server-side apply, strictly and without a warning; Established; an
// Application and a Jwker created with strict field validation, a field
// their schemas lack refused, and what the API server serves back read by
// vakt (config.ResourceApplication, config.JwkerApplication) as valid. The
// status subresource takes vakt's Ready condition, which kubectl shows in
// its Ready and Reason columns.
func TestKubernetesAPIServerCRDs(t *testing.T) {
	cluster := kubetest.Start(t)
	ctx := t.Context()

	warnings := &warningRecorder{}
	cfg := rest.CopyConfig(cluster.Config)
	cfg.WarningHandler = warnings
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	strict := metav1.FieldValidationStrict
	force := true

	crds := client.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	var names []string
	for _, data := range renderJSON(t, crdsDir) {
		_, name := kindName(data)
		names = append(names, name)
		warnings.take()
		if _, err := crds.Patch(ctx, name, types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: "vakt-deploy-test", Force: &force, FieldValidation: strict}); err != nil {
			t.Fatalf("the API server refuses CustomResourceDefinition %s: %v", name, err)
		}
		if w := warnings.take(); len(w) > 0 {
			t.Errorf("CustomResourceDefinition %s: the API server warns: %s", name, strings.Join(w, "; "))
		}
	}
	for _, name := range names {
		waitEstablished(t, crds, name)
	}

	for _, ns := range []string{"team-b", "myteam"} {
		n := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
		if _, err := client.Resource(corev1.SchemeGroupVersion.WithResource("namespaces")).Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	applications := client.Resource(schema.GroupVersionResource{Group: config.ResourceGroup, Version: config.ResourceVersion, Resource: "applications"})
	jwkers := client.Resource(schema.GroupVersionResource{Group: config.JwkerGroup, Version: config.JwkerVersion, Resource: "jwkers"})

	// create creates an object given as YAML, strictly, with no warning.
	create := func(r dynamic.NamespaceableResourceInterface, manifest string) (*unstructured.Unstructured, error) {
		t.Helper()
		u := objectFromYAML(t, manifest)
		warnings.take()
		got, err := r.Namespace(u.GetNamespace()).Create(ctx, u, metav1.CreateOptions{FieldValidation: strict})
		if w := warnings.take(); err == nil && len(w) > 0 {
			t.Errorf("%s %s: the API server warns: %s", u.GetKind(), u.GetName(), strings.Join(w, "; "))
		}
		return got, err
	}

	// The example of config/resource_test.go, and one with an inline key
	// set, which the schema keeps as it is.
	app, err := create(applications, `apiVersion: vakt.dev/v1alpha1
kind: Application
metadata:
  name: app-b
  namespace: team-b
spec:
  accessPolicy:
    inbound:
      rules:
        - application: app-1
          namespace: team-a
  routes:
    - {methods: [GET], path: /read, scopes: [read]}
  authentication:
    - {identityProvider: auth0, audience: https://api.example.com}
  secretName: app-b-tokenx
`)
	if err != nil {
		t.Fatalf("the API server refuses the sample Application: %v", err)
	}
	jwk := publicJWK(t)
	if _, err := create(applications, `apiVersion: vakt.dev/v1alpha1
kind: Application
metadata:
  name: app-c
  namespace: team-b
spec:
  jwks: {keys: [`+jwk+`]}
  hosts: [app-c.example.com]
  pathParameters: strip
  dynamicMetadata: false
  routes:
    - {pathPrefix: /, public: true}
`); err != nil {
		t.Fatalf("the API server refuses an Application with jwks: %v", err)
	}
	// The Jwker naiserator makes of NAIS's documented example application
	// (docs.nais.io, workloads/application/reference/application-spec):
	// namespace and cluster filled in, permissions kept.
	if _, err := create(jwkers, `apiVersion: nais.io/v1
kind: Jwker
metadata:
  name: myapplication
  namespace: myteam
spec:
  accessPolicy:
    inbound:
      rules:
        - {application: app1, namespace: myteam, cluster: dev-gcp}
        - {application: app2, namespace: q1, cluster: dev-gcp}
        - {application: app3, namespace: q2, cluster: dev-gcp}
        - {application: '*', namespace: q3, cluster: dev-gcp}
        - {application: app4, namespace: myteam, cluster: dev-gcp, permissions: {scopes: [custom-scope]}}
    outbound:
      rules:
        - {application: app1, namespace: myteam, cluster: dev-gcp}
  secretName: tokenx-myapplication-8b3f6a2c
`); err != nil {
		t.Fatalf("the API server refuses the sample Jwker: %v", err)
	}

	// A field the schema lacks is refused, by a create and by server-side
	// apply, not dropped; so is a value the schema's enum lacks.
	for _, tc := range []struct {
		r        dynamic.NamespaceableResourceInterface
		manifest string
		want     string
	}{
		{applications, "apiVersion: vakt.dev/v1alpha1\nkind: Application\nmetadata: {name: bad, namespace: team-b}\nspec:\n  routez: []\n", `unknown field "spec.routez"`},
		{applications, "apiVersion: vakt.dev/v1alpha1\nkind: Application\nmetadata: {name: bad, namespace: team-b}\nspec:\n  routes: [{path: /a, scope: [x]}]\n", `unknown field "spec.routes[0].scope"`},
		{applications, "apiVersion: vakt.dev/v1alpha1\nkind: Application\nmetadata: {name: bad, namespace: team-b}\nspec:\n  pathParameters: keep\n", `spec.pathParameters: Unsupported value: "keep"`},
		{jwkers, "apiVersion: nais.io/v1\nkind: Jwker\nmetadata: {name: bad, namespace: myteam}\nspec:\n  accessPolicy: {inbound: {rules: []}}\n  secretName: s\n  tokenx: true\n", `unknown field "spec.tokenx"`},
	} {
		if _, err := create(tc.r, tc.manifest); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("create %q: %v, want %s", tc.manifest, err, tc.want)
		}
	}
	bad := objectFromYAML(t, "apiVersion: vakt.dev/v1alpha1\nkind: Application\nmetadata: {name: bad, namespace: team-b}\nspec:\n  routez: []\n")
	data, err := bad.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := applications.Namespace("team-b").Patch(ctx, "bad", types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: "vakt-deploy-test", Force: &force, FieldValidation: strict}); err == nil || !strings.Contains(err.Error(), ".spec.routez: field not declared in schema") {
		t.Errorf("server-side apply of an Application with spec.routez: %v, want .spec.routez: field not declared in schema", err)
	}

	// What the API server serves back is what vakt reads.
	c, err := config.Load([]byte(`issuer: http://127.0.0.1:8080
cluster: dev-gcp
identityProviders:
  - name: auth0
    issuer: https://auth0.example/
    jwksUri: https://auth0.example/jwks
kubernetes:
  enabled: true
  grants:
    - {namespaces: [team-b], hosts: ["*.example.com"]}
applications:
  - name: app-1
    namespace: team-a
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	specOf := func(u *unstructured.Unstructured) []byte {
		t.Helper()
		spec, err := json.Marshal(u.Object["spec"])
		if err != nil {
			t.Fatal(err)
		}
		return spec
	}
	for _, name := range []string{"app-b", "app-c"} {
		u, err := applications.Namespace("team-b").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		a, rs, err := c.ResourceApplication(u.GetName(), u.GetNamespace(), specOf(u))
		switch {
		case err != nil:
			t.Errorf("Application %s as served (%s): %v", name, specOf(u), err)
		case name == "app-b" && (a.ID() != "dev-gcp:team-b:app-b" || rs.SecretName != "app-b-tokenx" || len(a.Routes) != 1 || len(a.Authentication) != 1 ||
			len(a.AccessPolicy.Inbound.Rules) != 1 || a.AccessPolicy.Inbound.Rules[0].ID() != "dev-gcp:team-a:app-1"):
			t.Errorf("Application app-b as served: %+v %+v", a, rs)
		case name == "app-c" && (a.Keys == nil || a.PathParameters != config.PathParametersStrip || a.DynamicMetadata == nil || *a.DynamicMetadata || !a.Routes[0].Public):
			t.Errorf("Application app-c as served: %+v", a)
		}
	}
	j, err := jwkers.Namespace("myteam").Get(ctx, "myapplication", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, secret, err := c.JwkerApplication(j.GetName(), j.GetNamespace(), specOf(j))
	if err != nil {
		t.Errorf("Jwker myapplication as served (%s): %v", specOf(j), err)
	} else if a.ID() != "dev-gcp:myteam:myapplication" || len(a.AccessPolicy.Inbound.Rules) != 4 || secret != "tokenx-myapplication-8b3f6a2c" {
		t.Errorf("Jwker myapplication as served: %+v, secret %q", a, secret)
	}

	// The status subresource takes vakt's Ready condition (and nothing the
	// schema lacks); kubectl's columns show it.
	setStatus := func(r dynamic.ResourceInterface, u *unstructured.Unstructured, status map[string]any) error {
		t.Helper()
		u = u.DeepCopy()
		u.Object["status"] = status
		_, err := r.UpdateStatus(ctx, u, metav1.UpdateOptions{FieldValidation: strict})
		return err
	}
	var key map[string]any
	if err := json.Unmarshal([]byte(jwk), &key); err != nil {
		t.Fatal(err)
	}
	ready := map[string]any{
		"observedGeneration": app.GetGeneration(),
		"conditions": []any{map[string]any{
			"type": "Ready", "status": "True", "reason": "Serving", "message": "vakt serves dev-gcp:team-b:app-b",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339), "observedGeneration": app.GetGeneration(),
		}, map[string]any{
			"type": "ClientKey", "status": "True", "reason": "Published", "message": "key k1 is in Secret app-b-tokenx",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339), "observedGeneration": app.GetGeneration(),
		}},
		"keys":       map[string]any{"keys": []any{key}},
		"secretName": "app-b-tokenx",
	}
	if err := setStatus(applications.Namespace("team-b"), app, ready); err != nil {
		t.Fatalf("Application app-b: status: %v", err)
	}
	if err := setStatus(applications.Namespace("team-b"), app, map[string]any{"ready": true}); err == nil || !strings.Contains(err.Error(), `unknown field "status.ready"`) {
		t.Errorf("Application app-b: a status with ready: %v, want unknown field \"status.ready\"", err)
	}
	cols, row := tableRow(t, cfg, "/apis/vakt.dev/v1alpha1/namespaces/team-b/applications/app-b")
	if !slices.Equal(cols, []string{"Name", "Ready", "Reason", "Secret", "Key", "Age"}) || row[0] != "app-b" || row[1] != "True" || row[2] != "Serving" || row[3] != "app-b-tokenx" || row[4] != "Published" {
		t.Errorf("kubectl get applications.vakt.dev shows %v: %v", cols, row)
	}
	if err := setStatus(jwkers.Namespace("myteam"), j, map[string]any{
		"observedGeneration": j.GetGeneration(), "synchronizationState": "RolloutComplete",
		"synchronizationSecretName": secret, "synchronizationTimestamp": time.Now().UTC().Format(time.RFC3339),
		"clientID": "dev-gcp:myteam:myapplication", "keyIDs": []any{"k1"},
	}); err != nil {
		t.Errorf("Jwker myapplication: status: %v", err)
	}
}

// waitEstablished waits until a CustomResourceDefinition is Established
// (its names accepted, its resource served).
func waitEstablished(t *testing.T, crds dynamic.NamespaceableResourceInterface, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		u, err := crds.Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		status := map[string]string{}
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok {
				status[fmt.Sprint(m["type"])] = fmt.Sprintf("%v (%v: %v)", m["status"], m["reason"], m["message"])
			}
		}
		if strings.HasPrefix(status["Established"], "True") && strings.HasPrefix(status["NamesAccepted"], "True") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("CustomResourceDefinition %s is not Established: %v", name, status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// objectFromYAML reads one object.
func objectFromYAML(t *testing.T, manifest string) *unstructured.Unstructured {
	t.Helper()
	data, err := yaml.YAMLToJSONStrict([]byte(manifest))
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		t.Fatal(err)
	}
	return u
}

// publicJWK returns a new P-256 public key as a JWK.
func publicJWK(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := key.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	return fmt.Sprintf(`{"kty":"EC","crv":"P-256","kid":"app-c-1","alg":"ES256","use":"sig","x":%q,"y":%q}`, b64(pt[1:33]), b64(pt[33:]))
}

// tableRow gets one object as kubectl get does (a Table, with the CRD's
// printer columns) and returns the columns' names and the row's cells.
func tableRow(t *testing.T, cfg *rest.Config, path string) ([]string, []string) {
	t.Helper()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, cfg.Host+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var table metav1.Table
	if err := json.NewDecoder(resp.Body).Decode(&table); err != nil || resp.StatusCode != http.StatusOK || len(table.Rows) != 1 {
		t.Fatalf("GET %s as a Table: %s, %v, %d rows", path, resp.Status, err, len(table.Rows))
	}
	var cols, cells []string
	for _, c := range table.ColumnDefinitions {
		cols = append(cols, c.Name)
	}
	for _, c := range table.Rows[0].Cells {
		cells = append(cells, fmt.Sprint(c))
	}
	return cols, cells
}

// overlays/native on a real kube-apiserver: the CRDs, the namespace and the
// overlay applied as docs/kubernetes.md says (strictly, without a warning); then,
// acting as vakt's service account (a token user with the name and groups
// Kubernetes gives system:serviceaccount:vakt:vakt, so no impersonation
// rights are involved), the RBAC is shown to be enough for what vakt does
// and no more: vakt's own kube.Source and status writer read an Application
// cluster-wide, win the Lease vakt-status and write the Application's
// status; the API server's rules review lists exactly the permissions of
// kubernetes_test.go; and Secrets, an Application's spec, Leases of other
// names or namespaces are forbidden.
func TestKubernetesAPIServerNativeRBAC(t *testing.T) {
	const saUser = "system:serviceaccount:vakt:vakt"
	saGroups := []string{"system:serviceaccounts", "system:serviceaccounts:vakt"}
	cluster := kubetest.Start(t, kubetest.WithUser(saUser, saGroups...))
	ctx := t.Context()
	a := newApplier(t, cluster.Config)
	admin := a.client

	crds := admin.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	crdDocs := renderJSON(t, crdsDir)
	a.applyAll(crdsDir, crdDocs)
	for _, data := range crdDocs {
		_, name := kindName(data)
		waitEstablished(t, crds, name)
	}
	a.applyAll("kubernetes/namespace.yaml", [][]byte{namespaceJSON(t)})
	a.applyAll(nativeDir, renderJSON(t, nativeDir))
	if t.Failed() {
		t.FailNow()
	}

	applications := schema.GroupVersionResource{Group: config.ResourceGroup, Version: config.ResourceVersion, Resource: "applications"}
	jwkers := schema.GroupVersionResource{Group: config.JwkerGroup, Version: config.JwkerVersion, Resource: "jwkers"}
	leases := schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}
	secrets := corev1.SchemeGroupVersion.WithResource("secrets")
	configMaps := corev1.SchemeGroupVersion.WithResource("configmaps")

	n := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "team-b"}}}
	if _, err := admin.Resource(corev1.SchemeGroupVersion.WithResource("namespaces")).Create(ctx, n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"app-b", "rbac-check"} {
		app := objectFromYAML(t, "apiVersion: vakt.dev/v1alpha1\nkind: Application\nmetadata: {name: "+name+", namespace: team-b}\nspec:\n  routes: [{pathPrefix: /, public: true}]\n")
		if _, err := admin.Resource(applications).Namespace("team-b").Create(ctx, app, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}); err != nil {
			t.Fatal(err)
		}
	}
	// Two applications whose client keys vakt makes, one of each kind.
	keyed := objectFromYAML(t, "apiVersion: vakt.dev/v1alpha1\nkind: Application\nmetadata: {name: keyed, namespace: team-b}\nspec: {secretName: keyed-tokenx}\n")
	if _, err := admin.Resource(applications).Namespace("team-b").Create(ctx, keyed, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}); err != nil {
		t.Fatal(err)
	}
	jw := objectFromYAML(t, "apiVersion: nais.io/v1\nkind: Jwker\nmetadata: {name: jw, namespace: team-b}\nspec: {accessPolicy: {}, secretName: jw-tokenx}\n")
	if _, err := admin.Resource(jwkers).Namespace("team-b").Create(ctx, jw, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}); err != nil {
		t.Fatal(err)
	}
	secret := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Secret", "metadata": map[string]any{"name": "vakt-signing-keys", "namespace": "vakt"}}}
	if _, err := admin.Resource(secrets).Namespace("vakt").Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	lease := func(name, ns, holder string) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
			"metadata": map[string]any{"name": name, "namespace": ns},
			"spec":     map[string]any{"holderIdentity": holder, "leaseDurationSeconds": int64(1)},
		}}
	}
	if _, err := admin.Resource(leases).Namespace("vakt").Create(ctx, lease("other", "vakt", "someone"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	saCfg := cluster.TokenFor(t, saUser, saGroups...)
	sa, err := dynamic.NewForConfig(saCfg)
	if err != nil {
		t.Fatal(err)
	}

	// What vakt needs works (once the authorizer has seen the bindings:
	// polled).
	eventually(t, "list applications.vakt.dev in every namespace", func() error {
		l, err := sa.Resource(applications).List(ctx, metav1.ListOptions{})
		if err == nil && len(l.Items) != 3 {
			err = fmt.Errorf("%d Applications, want 3", len(l.Items))
		}
		return err
	})
	eventually(t, "watch applications.vakt.dev in every namespace", func() error {
		w, err := sa.Resource(applications).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		defer w.Stop()
		select {
		case ev := <-w.ResultChan():
			if ev.Type != "ADDED" {
				return fmt.Errorf("the watch's first event: %s %v", ev.Type, ev.Object)
			}
			return nil
		case <-time.After(5 * time.Second):
			return fmt.Errorf("the watch sent nothing")
		}
	})
	eventually(t, "list jwkers.nais.io in every namespace", func() error {
		_, err := sa.Resource(jwkers).List(ctx, metav1.ListOptions{})
		return err
	})
	eventually(t, "get an Application", func() error {
		_, err := sa.Resource(applications).Namespace("team-b").Get(ctx, "rbac-check", metav1.GetOptions{})
		return err
	})
	eventually(t, "server-side apply an Application's status", func() error {
		st := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "vakt.dev/v1alpha1", "kind": "Application",
			"metadata": map[string]any{"name": "rbac-check", "namespace": "team-b"},
			"status": map[string]any{"observedGeneration": int64(1), "conditions": []any{map[string]any{
				"type": "Ready", "status": "True", "reason": "Serving", "message": "generation 1 serves",
				"observedGeneration": int64(1), "lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
			}}},
		}}
		_, err := sa.Resource(applications).Namespace("team-b").ApplyStatus(ctx, "rbac-check", st, metav1.ApplyOptions{FieldManager: "vakt", Force: true})
		return err
	})
	eventually(t, "create the Lease vakt-status in namespace vakt", func() error {
		_, err := sa.Resource(leases).Namespace("vakt").Create(ctx, lease(statusLease, "vakt", "rbac-check"), metav1.CreateOptions{})
		return err
	})
	l, err := sa.Resource(leases).Namespace("vakt").Get(ctx, statusLease, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get the Lease %s: %v", statusLease, err)
	}
	if err := unstructured.SetNestedField(l.Object, "rbac-check-2", "spec", "holderIdentity"); err != nil {
		t.Fatal(err)
	}
	if _, err := sa.Resource(leases).Namespace("vakt").Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Errorf("update the Lease %s: %v", statusLease, err)
	}

	// The API server's own account of what the service account may do, in
	// vakt's namespace and in a team's, is exactly kubernetes_test.go's
	// permissions (besides what every authenticated user may: review its
	// own access).
	for ns, want := range map[string][]string{
		"vakt":   slices.Concat(nativeClusterPermissions, nativeLeasePermissions),
		"team-b": nativeClusterPermissions,
	} {
		slices.Sort(want)
		eventually(t, "the rules review in "+ns, func() error {
			got := rulesReview(t, sa, ns)
			if !slices.Equal(got, want) {
				return fmt.Errorf("the service account may %q, want %q", got, want)
			}
			return nil
		})
	}

	// What vakt does not need is forbidden.
	forbidden := func(what string, err error) {
		t.Helper()
		if !apierrors.IsForbidden(err) {
			t.Errorf("as vakt's service account, %s: %v, want Forbidden", what, err)
		}
	}
	_, err = sa.Resource(secrets).Namespace("vakt").List(ctx, metav1.ListOptions{})
	forbidden("list Secrets in vakt", err)
	_, err = sa.Resource(secrets).List(ctx, metav1.ListOptions{})
	forbidden("list Secrets in every namespace", err)
	_, err = sa.Resource(secrets).Namespace("team-b").Watch(ctx, metav1.ListOptions{})
	forbidden("watch Secrets in a team's namespace", err)
	// RBAC lets vakt write Secrets by name; the policy vakt-secrets lets it
	// write only the ones it makes.
	eventually(t, "the policy vakt-secrets in force", func() error {
		s, err := sa.Resource(secrets).Namespace("vakt").Get(ctx, "vakt-signing-keys", metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.SetLabels(map[string]string{"touched": "by-vakt"})
		_, err = sa.Resource(secrets).Namespace("vakt").Update(ctx, s, metav1.UpdateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "vakt changes and deletes only the Secrets it made") {
			return fmt.Errorf("update Secret vakt-signing-keys: %v, want Forbidden by the policy", err)
		}
		return nil
	})
	forbidden("delete Secret vakt-signing-keys", sa.Resource(secrets).Namespace("vakt").Delete(ctx, "vakt-signing-keys", metav1.DeleteOptions{}))
	unowned := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Secret",
		"metadata": map[string]any{"name": "planted", "namespace": "team-b", "labels": map[string]any{"app.kubernetes.io/managed-by": "vakt"}}}}
	_, err = sa.Resource(secrets).Namespace("team-b").Create(ctx, unowned, metav1.CreateOptions{})
	forbidden("create a Secret no Application or Jwker controls", err)
	app0, err := admin.Resource(applications).Namespace("team-b").Get(ctx, "app-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	owned := func(typ string, data map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Secret", "type": typ, "data": data,
			"metadata": map[string]any{"name": "planted", "namespace": "team-b",
				"labels":          map[string]any{"app.kubernetes.io/managed-by": "vakt"},
				"annotations":     map[string]any{"kubernetes.io/service-account.name": "default"},
				"ownerReferences": []any{map[string]any{"apiVersion": "vakt.dev/v1alpha1", "kind": "Application", "name": "app-b", "uid": string(app0.GetUID()), "controller": true}}}}}
	}
	_, err = sa.Resource(secrets).Namespace("team-b").Create(ctx, owned("kubernetes.io/service-account-token", nil), metav1.CreateOptions{})
	forbidden("create a service-account token Secret", err)
	_, err = sa.Resource(secrets).Namespace("team-b").Create(ctx, owned("Opaque", map[string]any{"password": "aHVudGVyMg=="}), metav1.CreateOptions{})
	forbidden("create a Secret of other data", err)
	eventually(t, "the policy vakt-key-records in force", func() error {
		cfgMap, err := sa.Resource(configMaps).Namespace("vakt").Get(ctx, "vakt-config", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cfgMap.SetLabels(map[string]string{"vakt.dev/record": "keys"})
		_, err = sa.Resource(configMaps).Namespace("vakt").Update(ctx, cfgMap, metav1.UpdateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "vakt writes only the ConfigMaps of the keys it publishes") {
			return fmt.Errorf("update vakt-config: %v, want Forbidden by the policy", err)
		}
		return nil
	})
	forbidden("delete vakt's own configuration", sa.Resource(configMaps).Namespace("vakt").Delete(ctx, "vakt-config", metav1.DeleteOptions{}))
	app, err := sa.Resource(applications).Namespace("team-b").Get(ctx, "app-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedField(app.Object, "ops", "spec", "secretName"); err != nil {
		t.Fatal(err)
	}
	_, err = sa.Resource(applications).Namespace("team-b").Update(ctx, app, metav1.UpdateOptions{})
	forbidden("update an Application", err)
	_, err = sa.Resource(applications).Namespace("team-b").Patch(ctx, "app-b", types.MergePatchType, []byte(`{"spec":{"routes":[]}}`), metav1.PatchOptions{})
	forbidden("patch an Application's spec", err)
	forbidden("delete an Application", sa.Resource(applications).Namespace("team-b").Delete(ctx, "app-b", metav1.DeleteOptions{}))
	_, err = sa.Resource(applications).Namespace("team-b").Create(ctx, objectFromYAML(t, "apiVersion: vakt.dev/v1alpha1\nkind: Application\nmetadata: {name: new, namespace: team-b}\nspec: {}\n"), metav1.CreateOptions{})
	forbidden("create an Application", err)
	_, err = sa.Resource(leases).Namespace("vakt").Get(ctx, "other", metav1.GetOptions{})
	forbidden("get another Lease", err)
	other := lease("other", "vakt", "vakt")
	other.SetResourceVersion("1")
	_, err = sa.Resource(leases).Namespace("vakt").Update(ctx, other, metav1.UpdateOptions{})
	forbidden("update another Lease", err)
	forbidden("delete the Lease vakt-status", sa.Resource(leases).Namespace("vakt").Delete(ctx, statusLease, metav1.DeleteOptions{}))
	_, err = sa.Resource(leases).Namespace("team-b").Create(ctx, lease(statusLease, "team-b", "vakt"), metav1.CreateOptions{})
	forbidden("create a Lease in another namespace", err)
	_, err = sa.Resource(corev1.SchemeGroupVersion.WithResource("pods")).Namespace("vakt").List(ctx, metav1.ListOptions{})
	forbidden("list Pods", err)

	// vakt itself, with these credentials: its Source reads the
	// Applications, and its status writer wins the Lease and writes each
	// one's status, then gives the Lease up as it stops.
	if err := admin.Resource(leases).Namespace("vakt").Delete(ctx, statusLease, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	var src *kube.Source
	var merging sync.Mutex
	src = kube.NewSource(kube.SourceConfig{Client: sa, Jwkers: true, KeysNamespace: "vakt", Logger: logger, OnChange: func() {
		// What a reload does: a fresh configuration, merged with the
		// resources, put in force.
		merging.Lock()
		defer merging.Unlock()
		cfg, err := config.Load([]byte("issuer: https://vakt.example\ncluster: dev-gcp\n"), t.TempDir())
		if err != nil {
			t.Error(err)
			return
		}
		commit, _ := src.Merge(cfg, false)
		commit()
	}})
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { src.Run(runCtx) })
	wg.Go(func() {
		err := kube.RunStatusWriter(runCtx, kube.StatusConfig{
			Rest: saCfg, Client: sa, Source: src, MakeKeys: true, LeaseNamespace: "vakt", LeaseName: statusLease, Identity: "vakt-0",
			LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 200 * time.Millisecond, Logger: logger,
		})
		if err != nil {
			t.Errorf("RunStatusWriter: %v", err)
		}
	})
	stopped := false
	defer func() {
		if !stopped {
			stop()
			wg.Wait()
		}
	}()
	eventually(t, "vakt writes Application app-b's status", func() error {
		u, err := admin.Resource(applications).Namespace("team-b").Get(ctx, "app-b", metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		if len(conds) != 1 {
			return fmt.Errorf("status %v", u.Object["status"])
		}
		c, _ := conds[0].(map[string]any)
		if c["type"] != "Ready" || c["status"] != "True" || c["reason"] != "Serving" || c["observedGeneration"] != u.GetGeneration() {
			return fmt.Errorf("status %v", u.Object["status"])
		}
		return nil
	})
	holder := func() string {
		t.Helper()
		l, err := admin.Resource(leases).Namespace("vakt").Get(ctx, statusLease, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		h, _, _ := unstructured.NestedString(l.Object, "spec", "holderIdentity")
		return h
	}
	if h := holder(); h != "vakt-0" {
		t.Errorf("the Lease %s is held by %q, want vakt-0", statusLease, h)
	}
	// The client keys: a Secret each, the keys published in the
	// Application's status and the Jwker's record, the Jwker's status and
	// the record of its version serving (written past the policy
	// vakt-key-records).
	for _, k := range []struct {
		gvr          schema.GroupVersionResource
		name, secret string
	}{{applications, "keyed", "keyed-tokenx"}, {jwkers, "jw", "jw-tokenx"}} {
		eventually(t, "vakt makes and publishes "+k.name+"'s key", func() error {
			s, err := admin.Resource(secrets).Namespace("team-b").Get(ctx, k.secret, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if _, ok, _ := unstructured.NestedString(s.Object, "data", "TOKEN_X_PRIVATE_JWK"); !ok {
				return fmt.Errorf("secret %v", s.Object)
			}
			u, err := admin.Resource(k.gvr).Namespace("team-b").Get(ctx, k.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if keys, _, _ := unstructured.NestedMap(u.Object, "status", "keys"); k.gvr == applications && keys == nil {
				return fmt.Errorf("no keys in status: %v", u.Object["status"])
			}
			if k.gvr == jwkers {
				if _, err := admin.Resource(configMaps).Namespace("vakt").Get(ctx, "vakt-keys-"+string(u.GetUID()), metav1.GetOptions{}); err != nil {
					return fmt.Errorf("no published keys: %w", err)
				}
				if _, err := admin.Resource(configMaps).Namespace("vakt").Get(ctx, "vakt-served-"+string(u.GetUID()), metav1.GetOptions{}); err != nil {
					return fmt.Errorf("no record of the version serving: %w", err)
				}
				if st, _, _ := unstructured.NestedString(u.Object, "status", "synchronizationState"); st != "RolloutComplete" {
					return fmt.Errorf("Jwker status %v", u.Object["status"])
				}
			}
			return nil
		})
	}
	stop()
	wg.Wait()
	stopped = true
	if h := holder(); h != "" {
		t.Errorf("vakt stopped, yet the Lease %s is held by %q: releasing it (an update) failed", statusLease, h)
	}
}

// rulesReview returns what the client's user may do in a namespace, as the
// API server's SelfSubjectRulesReview says and permissions (in
// kubernetes_test.go) lists it; without the reviews of its own access
// every authenticated user may ask for (system:basic-user).
func rulesReview(t *testing.T, client dynamic.Interface, ns string) []string {
	t.Helper()
	review := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
		"spec": map[string]any{"namespace": ns},
	}}
	got, err := client.Resource(authorizationv1.SchemeGroupVersion.WithResource("selfsubjectrulesreviews")).Create(t.Context(), review, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var r authorizationv1.SelfSubjectRulesReview
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &r); err != nil {
		t.Fatal(err)
	}
	if r.Status.Incomplete {
		t.Fatalf("the rules review in %s is incomplete: %s", ns, r.Status.EvaluationError)
	}
	var rules []rbacv1.PolicyRule
	for _, rr := range r.Status.ResourceRules {
		if slices.ContainsFunc(rr.APIGroups, func(g string) bool {
			return g == authorizationv1.GroupName || g == "authentication.k8s.io"
		}) {
			continue
		}
		rules = append(rules, rbacv1.PolicyRule{Verbs: rr.Verbs, APIGroups: rr.APIGroups, Resources: rr.Resources, ResourceNames: rr.ResourceNames})
	}
	return permissions(rules)
}

// eventually polls f until it succeeds, for at most 30 s: RBAC objects are
// authorized a moment after they are stored.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
