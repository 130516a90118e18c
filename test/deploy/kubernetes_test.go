package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/kube"
)

// The Kubernetes manifests (deploy/kubernetes) are rendered with kustomize's
// own library, as `kubectl apply -k` renders them, and every object is
// decoded strictly into its Kubernetes API type: an unknown or misspelt
// field, a duplicate key or a kind the test does not know fails. Then the
// contracts between the objects, and between them and vakt's configuration,
// are checked: ports, paths, selectors, security.

const (
	baseDir  = "kubernetes"
	redisDir = "kubernetes/overlays/redis"
	// nativeRedisDir is overlays/native with components/redis.
	nativeRedisDir = "kubernetes/overlays/native-redis"
	nativeDir      = "kubernetes/overlays/native"
)

// clusterScoped are the kinds a rendering may hold outside namespace vakt:
// they have no namespace at all.
var clusterScoped = map[string]bool{"ClusterRole": true, "ClusterRoleBinding": true,
	"ValidatingAdmissionPolicy": true, "ValidatingAdmissionPolicyBinding": true}

// objects are the decoded objects of one rendering, by kind and name.
type objects map[string]any

// newObject returns the Go type that an apiVersion and kind decode into;
// nil for a kind the test does not know.
func newObject(apiVersion, kind string) any {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return new(appsv1.Deployment)
	case "v1 Service":
		return new(corev1.Service)
	case "v1 ConfigMap":
		return new(corev1.ConfigMap)
	case "v1 Secret":
		return new(corev1.Secret)
	case "v1 ServiceAccount":
		return new(corev1.ServiceAccount)
	case "v1 Namespace":
		return new(corev1.Namespace)
	case "policy/v1 PodDisruptionBudget":
		return new(policyv1.PodDisruptionBudget)
	case "networking.k8s.io/v1 NetworkPolicy":
		return new(networkingv1.NetworkPolicy)
	case "rbac.authorization.k8s.io/v1 ClusterRole":
		return new(rbacv1.ClusterRole)
	case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
		return new(rbacv1.ClusterRoleBinding)
	case "rbac.authorization.k8s.io/v1 Role":
		return new(rbacv1.Role)
	case "rbac.authorization.k8s.io/v1 RoleBinding":
		return new(rbacv1.RoleBinding)
	case "admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy":
		return new(admissionregistrationv1.ValidatingAdmissionPolicy)
	case "admissionregistration.k8s.io/v1 ValidatingAdmissionPolicyBinding":
		return new(admissionregistrationv1.ValidatingAdmissionPolicyBinding)
	}
	return nil
}

// decodeStrict decodes one object given as JSON into its API type, as the
// API server's strict field validation would: unknown fields, duplicate
// fields and fields in the wrong case are errors.
func decodeStrict(data []byte) (kind, name string, obj any, err error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		return "", "", nil, err
	}
	obj = newObject(meta.APIVersion, meta.Kind)
	if obj == nil {
		return meta.Kind, meta.Metadata.Name, nil, fmt.Errorf("%s %s: a kind this test does not know", meta.APIVersion, meta.Kind)
	}
	strict, err := kjson.UnmarshalStrict(data, obj)
	if err == nil && len(strict) > 0 {
		err = fmt.Errorf("%v", strict)
	}
	if err != nil {
		return meta.Kind, meta.Metadata.Name, nil, fmt.Errorf("%s %s: %w", meta.Kind, meta.Metadata.Name, err)
	}
	return meta.Kind, meta.Metadata.Name, obj, nil
}

// render builds a kustomization as `kubectl apply -k dir` would (load
// restrictions on, no plugins) and decodes every object it makes.
func render(t *testing.T, dir string) objects {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	objs := objects{}
	for _, res := range m.Resources() {
		data, err := res.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		kind, name, obj, err := decodeStrict(data)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		objs[kind+"/"+name] = obj
	}
	if len(objs) == 0 {
		t.Fatalf("%s renders nothing", dir)
	}
	return objs
}

// decodeFile decodes a multi-document YAML file of objects strictly, keeping
// those newObject knows and returning the others as JSON.
func decodeFile(t *testing.T, file string) (objects, map[string][]byte) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	known, other := objects{}, map[string][]byte{}
	for doc := range strings.SplitSeq(string(data), "\n---\n") {
		j, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		kind, name, obj, err := decodeStrict(j)
		switch {
		case obj != nil:
			known[kind+"/"+name] = obj
		case kind != "":
			other[kind+"/"+name] = j
		default:
			t.Fatalf("%s: %v", file, err)
		}
	}
	return known, other
}

// get returns the object of type T named name, failing the test without it.
func get[T any](t *testing.T, objs objects, name string) *T {
	t.Helper()
	kind := reflect.TypeFor[T]().Name()
	o, ok := objs[kind+"/"+name].(*T)
	if !ok {
		t.Fatalf("no %s %q among %v", kind, name, slices.Sorted(maps.Keys(objs)))
	}
	return o
}

// all returns every object of type T.
func all[T any](objs objects) []*T {
	var out []*T
	for _, k := range slices.Sorted(maps.Keys(objs)) {
		if o, ok := objs[k].(*T); ok {
			out = append(out, o)
		}
	}
	return out
}

// selects reports whether a label selector (matchLabels only) selects labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func containerPort(c *corev1.Container, name string) (int32, bool) {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

// portExists reports whether a probe's or Service's target port is one of
// the container's ports, by name or number.
func portExists(c *corev1.Container, p intstr.IntOrString) bool {
	if p.Type == intstr.String {
		_, ok := containerPort(c, p.StrVal)
		return ok
	}
	for _, cp := range c.Ports {
		if cp.ContainerPort == p.IntVal {
			return true
		}
	}
	return false
}

func container(t *testing.T, d *appsv1.Deployment, name string) *corev1.Container {
	t.Helper()
	for i := range d.Spec.Template.Spec.Containers {
		if c := &d.Spec.Template.Spec.Containers[i]; c.Name == name {
			return c
		}
	}
	t.Fatalf("Deployment %s has no container %s", d.Name, name)
	return nil
}

func volume(t *testing.T, d *appsv1.Deployment, name string) *corev1.Volume {
	t.Helper()
	for i := range d.Spec.Template.Spec.Volumes {
		if v := &d.Spec.Template.Spec.Volumes[i]; v.Name == name {
			return v
		}
	}
	t.Fatalf("Deployment %s has no volume %s", d.Name, name)
	return nil
}

// checkObjects checks what every rendering must hold: one namespace (or
// none, for a cluster-scoped kind), and the references between objects.
func checkObjects(t *testing.T, objs objects) {
	t.Helper()
	for key, o := range objs {
		ns := reflect.ValueOf(o).Elem().FieldByName("Namespace").String()
		kind, _, _ := strings.Cut(key, "/")
		switch {
		case clusterScoped[kind] && ns != "":
			t.Errorf("%s is cluster-scoped but has namespace %q", key, ns)
		case !clusterScoped[kind] && ns != "vakt":
			t.Errorf("%s is in namespace %q, not vakt", key, ns)
		}
	}
	checkRBAC(t, objs)
	deployments := all[appsv1.Deployment](objs)
	for _, d := range deployments {
		checkDeployment(t, objs, d)
	}
	// Each Service selects the pods of exactly one Deployment, on ports
	// those pods have.
	for _, s := range all[corev1.Service](objs) {
		var matched []*appsv1.Deployment
		for _, d := range deployments {
			if selects(s.Spec.Selector, d.Spec.Template.Labels) {
				matched = append(matched, d)
			}
		}
		if len(matched) != 1 {
			t.Errorf("Service %s selects the pods of %d Deployments, want 1", s.Name, len(matched))
			continue
		}
		for _, p := range s.Spec.Ports {
			ok := false
			for _, c := range matched[0].Spec.Template.Spec.Containers {
				ok = ok || portExists(&c, p.TargetPort)
			}
			if !ok || p.Protocol != corev1.ProtocolTCP {
				t.Errorf("Service %s port %s: target port %s is no TCP port of Deployment %s", s.Name, p.Name, p.TargetPort.String(), matched[0].Name)
			}
		}
	}
	for _, pdb := range all[policyv1.PodDisruptionBudget](objs) {
		n := 0
		for _, d := range deployments {
			if selects(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				n++
				if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() >= int(*d.Spec.Replicas) {
					t.Errorf("PodDisruptionBudget %s: minAvailable %v leaves no disruption to %d replicas", pdb.Name, pdb.Spec.MinAvailable, *d.Spec.Replicas)
				}
			}
		}
		if n != 1 {
			t.Errorf("PodDisruptionBudget %s selects %d Deployments, want 1", pdb.Name, n)
		}
	}
	// A NetworkPolicy's named ports are ports of the pods it selects.
	for _, np := range all[networkingv1.NetworkPolicy](objs) {
		var pods []*appsv1.Deployment
		for _, d := range deployments {
			if selects(np.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) {
				pods = append(pods, d)
			}
		}
		if len(pods) == 0 {
			t.Errorf("NetworkPolicy %s selects no pods", np.Name)
		}
		for _, rule := range np.Spec.Ingress {
			if len(rule.From) == 0 {
				t.Errorf("NetworkPolicy %s: an ingress rule without from admits everyone", np.Name)
			}
			for _, p := range rule.Ports {
				for _, d := range pods {
					ok := false
					for _, c := range d.Spec.Template.Spec.Containers {
						ok = ok || portExists(&c, *p.Port)
					}
					if !ok {
						t.Errorf("NetworkPolicy %s: port %s is no port of Deployment %s", np.Name, p.Port.String(), d.Name)
					}
				}
			}
		}
	}
}

// boundServiceAccounts are the ServiceAccounts ("namespace/name") the
// rendering's RoleBindings and ClusterRoleBindings give a role.
func boundServiceAccounts(objs objects) map[string]bool {
	out := map[string]bool{}
	var subjects []rbacv1.Subject
	for _, b := range all[rbacv1.RoleBinding](objs) {
		subjects = append(subjects, b.Subjects...)
	}
	for _, b := range all[rbacv1.ClusterRoleBinding](objs) {
		subjects = append(subjects, b.Subjects...)
	}
	for _, s := range subjects {
		if s.Kind == rbacv1.ServiceAccountKind {
			out[s.Namespace+"/"+s.Name] = true
		}
	}
	return out
}

// checkRBAC checks the rendering's roles and bindings: no wildcard, no
// Secret listed or watched, nothing that grants more permissions (escalate, bind,
// impersonate) or non-resource URLs; every binding gives a role of the
// rendering to ServiceAccounts of the rendering, and every role is given.
func checkRBAC(t *testing.T, objs objects) {
	t.Helper()
	rules := map[string][]rbacv1.PolicyRule{}
	for _, r := range all[rbacv1.ClusterRole](objs) {
		if r.AggregationRule != nil {
			t.Errorf("ClusterRole %s aggregates other roles", r.Name)
		}
		rules["ClusterRole/"+r.Name] = r.Rules
	}
	for _, r := range all[rbacv1.Role](objs) {
		rules["Role/"+r.Name] = r.Rules
	}
	for role, rs := range rules {
		for _, r := range rs {
			for _, v := range slices.Concat(r.APIGroups, r.Resources, r.Verbs, r.ResourceNames) {
				if strings.Contains(v, "*") {
					t.Errorf("%s: a wildcard in %+v", role, r)
				}
			}
			if len(r.NonResourceURLs) > 0 || len(r.Verbs) == 0 || len(r.Resources) == 0 || len(r.APIGroups) == 0 {
				t.Errorf("%s: want resource rules with groups, resources and verbs: %+v", role, r)
			}
			// Secrets only as the client keys need them: by name, never
			// listed or watched (which would read every Secret).
			if slices.Contains(r.Resources, "secrets") && (len(r.ResourceNames) == 0 && slices.ContainsFunc(r.Verbs, func(v string) bool {
				return !slices.Contains([]string{"get", "create", "update", "delete"}, v)
			})) {
				t.Errorf("%s gives more access to Secrets than the client keys need: %+v", role, r)
			}
			for _, v := range []string{"escalate", "bind", "impersonate"} {
				if slices.Contains(r.Verbs, v) {
					t.Errorf("%s: verb %s: %+v", role, v, r)
				}
			}
		}
	}
	given := map[string]bool{}
	checkBinding := func(key, ns string, ref rbacv1.RoleRef, subjects []rbacv1.Subject) {
		roleKey := ref.Kind + "/" + ref.Name
		if ref.APIGroup != rbacv1.GroupName || rules[roleKey] == nil || (ns == "" && ref.Kind != "ClusterRole") {
			t.Errorf("%s gives %+v, which is no role of the rendering", key, ref)
		}
		if ref.Kind == "Role" && ns != get[rbacv1.Role](t, objs, ref.Name).Namespace {
			t.Errorf("%s gives Role %s of another namespace", key, ref.Name)
		}
		given[roleKey] = true
		if len(subjects) == 0 {
			t.Errorf("%s has no subject", key)
		}
		for _, s := range subjects {
			if s.Kind != rbacv1.ServiceAccountKind || s.APIGroup != "" || s.Namespace != "vakt" || objs["ServiceAccount/"+s.Name] == nil {
				t.Errorf("%s: subject %+v is no ServiceAccount of the rendering", key, s)
			}
		}
	}
	for _, b := range all[rbacv1.ClusterRoleBinding](objs) {
		checkBinding("ClusterRoleBinding/"+b.Name, "", b.RoleRef, b.Subjects)
	}
	for _, b := range all[rbacv1.RoleBinding](objs) {
		checkBinding("RoleBinding/"+b.Name, b.Namespace, b.RoleRef, b.Subjects)
	}
	for role := range rules {
		if !given[role] {
			t.Errorf("%s is given to no one", role)
		}
	}
}

// permissions flattens rules into "verb group/resource" lines, with
// " name" when the rule names the objects: the permissions they grant,
// whatever the rules' grouping and order.
func permissions(rules []rbacv1.PolicyRule) []string {
	var out []string
	for _, r := range rules {
		for _, v := range r.Verbs {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					if len(r.ResourceNames) == 0 {
						out = append(out, v+" "+g+"/"+res)
					}
					for _, n := range r.ResourceNames {
						out = append(out, v+" "+g+"/"+res+" "+n)
					}
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// checkDeployment checks a Deployment on its own: selector, probes,
// volumes, and the restricted Pod Security Standard.
func checkDeployment(t *testing.T, objs objects, d *appsv1.Deployment) {
	t.Helper()
	pod := &d.Spec.Template.Spec
	if !selects(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("Deployment %s: selector %v does not select its pods %v", d.Name, d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
	}
	// A pod has its service account's token only when the rendering gives
	// that account a role, and then has it: a token is a credential, and a
	// role bound to an account without one is a mistake.
	bound := boundServiceAccounts(objs)[d.Namespace+"/"+pod.ServiceAccountName]
	switch mounts := pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken; {
	case mounts && !bound:
		t.Errorf("Deployment %s mounts a service account token, but its ServiceAccount %q has no role", d.Name, pod.ServiceAccountName)
	case !mounts && bound:
		t.Errorf("Deployment %s mounts no service account token, but its ServiceAccount %q is given roles", d.Name, pod.ServiceAccountName)
	case pod.AutomountServiceAccountToken == nil:
		t.Errorf("Deployment %s: say automountServiceAccountToken, the default mounts a token", d.Name)
	}
	if sa := pod.ServiceAccountName; sa != "" {
		acct := get[corev1.ServiceAccount](t, objs, sa)
		if acct.AutomountServiceAccountToken == nil || *acct.AutomountServiceAccountToken {
			t.Errorf("ServiceAccount %s: automountServiceAccountToken must be false", sa)
		}
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("Deployment %s: the pod must run as non-root with seccomp RuntimeDefault: %+v", d.Name, psc)
	}
	mounted := map[string]bool{}
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s/%s has no securityContext", d.Name, c.Name)
			continue
		case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0:
			t.Errorf("%s/%s must run as a non-root numeric user", d.Name, c.Name)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s/%s: readOnlyRootFilesystem must be true", d.Name, c.Name)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s/%s: allowPrivilegeEscalation must be false", d.Name, c.Name)
		case sc.Privileged != nil && *sc.Privileged:
			t.Errorf("%s/%s is privileged", d.Name, c.Name)
		case sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			t.Errorf("%s/%s must drop ALL capabilities and add none", d.Name, c.Name)
		case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
			t.Errorf("%s/%s: seccompProfile must be RuntimeDefault", d.Name, c.Name)
		}
		if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s/%s needs memory and CPU requests and a memory limit", d.Name, c.Name)
		}
		probes := map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe}
		for kind, p := range probes {
			if p == nil {
				if kind != "startup" {
					t.Errorf("%s/%s has no %s probe", d.Name, c.Name, kind)
				}
				continue
			}
			var port intstr.IntOrString
			switch h := p.ProbeHandler; {
			case h.GRPC != nil:
				port = intstr.FromInt32(h.GRPC.Port)
			case h.HTTPGet != nil:
				port = h.HTTPGet.Port
			case h.TCPSocket != nil:
				port = h.TCPSocket.Port
			default:
				t.Errorf("%s/%s: %s probe: want grpc, httpGet or tcpSocket", d.Name, c.Name, kind)
				continue
			}
			if !portExists(&c, port) {
				t.Errorf("%s/%s: %s probe's port %s is no container port", d.Name, c.Name, kind, port.String())
			}
		}
		for _, m := range c.VolumeMounts {
			volume(t, d, m.Name)
			mounted[m.Name] = true
			if m.SubPath != "" || m.SubPathExpr != "" {
				t.Errorf("%s/%s mounts %s with a subPath: the kubelet never updates it", d.Name, c.Name, m.Name)
			}
		}
	}
	for _, v := range pod.Volumes {
		if !mounted[v.Name] {
			t.Errorf("Deployment %s: volume %s is mounted by no container", d.Name, v.Name)
		}
	}
}

// vaktPod is what the tests read of vakt's Deployment, and its
// configuration as the container would load it.
type vaktPod struct {
	d       *appsv1.Deployment
	c       *corev1.Container
	cfgPath string // the file --config names
	raw     []byte // the ConfigMap's vakt.yaml
	cfg     *config.Config
	root    string // the pod's files, under a temporary directory
}

// loadVakt finds vakt's Deployment and builds, under a temporary directory,
// the files its volumes give the container: the ConfigMaps' keys, and a
// placeholder for each Secret item (the Secrets are made by the operator).
// It then loads the configuration the container is told to read, with the
// mount paths in it moved under that directory: so each file the
// configuration names must be one a volume provides.
func loadVakt(t *testing.T, objs objects) *vaktPod {
	t.Helper()
	p := &vaktPod{d: get[appsv1.Deployment](t, objs, "vakt"), root: t.TempDir()}
	p.c = container(t, p.d, "vakt")
	if want := []string{"serve", "--config"}; len(p.c.Args) != 3 || !slices.Equal(p.c.Args[:2], want) || len(p.c.Command) > 0 {
		t.Fatalf("vakt's args are %q, want serve --config FILE and the image's entrypoint", p.c.Args)
	}
	p.cfgPath = p.c.Args[2]
	var mountPaths []string
	for _, m := range p.c.VolumeMounts {
		dir := filepath.Join(p.root, m.MountPath)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		mountPaths = append(mountPaths, m.MountPath)
		v := volume(t, p.d, m.Name)
		switch {
		case v.ConfigMap != nil:
			cm := get[corev1.ConfigMap](t, objs, v.ConfigMap.Name)
			for key, val := range cm.Data {
				if err := os.WriteFile(filepath.Join(dir, key), []byte(val), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if m.MountPath == path.Dir(p.cfgPath) {
				p.raw = []byte(cm.Data[path.Base(p.cfgPath)])
			}
		case v.Secret != nil:
			if len(v.Secret.Items) == 0 {
				t.Errorf("Secret volume %s: list the keys under items, so that a Secret without them fails at mount", v.Name)
			}
			if mode := v.Secret.DefaultMode; mode == nil || *mode&0o037 != 0 {
				t.Errorf("Secret volume %s: defaultMode %v, want 0400 or 0440", v.Name, mode)
			}
			for _, it := range v.Secret.Items {
				if err := os.WriteFile(filepath.Join(dir, it.Path), []byte("placeholder\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		default:
			t.Errorf("vakt's volume %s is neither a ConfigMap nor a Secret", v.Name)
		}
	}
	if len(p.raw) == 0 {
		t.Fatalf("--config %s is no key of the ConfigMap mounted at %s", p.cfgPath, path.Dir(p.cfgPath))
	}
	// The longest mount path first, so that /etc/vakt does not take
	// /etc/vakt-keys' place.
	slices.SortFunc(mountPaths, func(a, b string) int { return len(b) - len(a) })
	moved := string(p.raw)
	for _, mp := range mountPaths {
		moved = strings.ReplaceAll(moved, mp+"/", filepath.Join(p.root, mp)+"/")
	}
	if err := os.WriteFile(filepath.Join(p.root, p.cfgPath), []byte(moved), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadFile(filepath.Join(p.root, p.cfgPath))
	if err != nil {
		t.Fatalf("vakt.yaml of the ConfigMap does not load: %v", err)
	}
	p.cfg = cfg
	return p
}

// inPod returns a path the configuration names as the container sees it.
func (p *vaktPod) inPod(t *testing.T, file string) string {
	t.Helper()
	rel, err := filepath.Rel(p.root, file)
	if err != nil || strings.HasPrefix(rel, "..") {
		t.Fatalf("%s is in no volume of vakt's pod", file)
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("%s: no volume provides it", "/"+rel)
	}
	return "/" + filepath.ToSlash(rel)
}

// secretMount returns the volume mount path and the Secret volume holding
// a file the container reads.
func (p *vaktPod) secretMount(t *testing.T, file string) (string, *corev1.SecretVolumeSource) {
	t.Helper()
	for _, m := range p.c.VolumeMounts {
		if m.MountPath == path.Dir(file) {
			v := volume(t, p.d, m.Name)
			if v.Secret == nil {
				t.Fatalf("%s is not from a Secret", file)
			}
			return m.MountPath, v.Secret
		}
	}
	t.Fatalf("no volume is mounted at %s", path.Dir(file))
	return "", nil
}

// checkVakt checks vakt's Deployment, Service and configuration against
// each other.
func checkVakt(t *testing.T, objs objects) *vaktPod {
	t.Helper()
	p := loadVakt(t, objs)
	d, c, pod := p.d, p.c, &p.d.Spec.Template.Spec

	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("vakt runs %v replicas, want 2 or more", d.Spec.Replicas)
	}
	spread := len(pod.TopologySpreadConstraints) > 0
	if a := pod.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, term := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			spread = spread || (term.PodAffinityTerm.TopologyKey == "kubernetes.io/hostname" &&
				selects(term.PodAffinityTerm.LabelSelector.MatchLabels, d.Spec.Template.Labels))
		}
	}
	if !spread {
		t.Error("vakt's replicas are not spread across nodes")
	}
	if !strings.HasPrefix(c.Image, "ghcr.io/vakt-dev/vakt:") && !strings.HasPrefix(c.Image, "ghcr.io/vakt-dev/vakt@") {
		t.Errorf("vakt's image is %s", c.Image)
	}
	if psc := pod.SecurityContext; psc.RunAsUser == nil || *psc.RunAsUser != 65532 || psc.RunAsGroup == nil || *psc.RunAsGroup != 65532 || psc.FSGroup == nil {
		t.Errorf("vakt's pod must run as 65532:65532 with an fsGroup (to read its Secrets): %+v", psc)
	}
	if sc := c.SecurityContext; sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Error("vakt's container must run as 65532, the image's user")
	}
	if p.d.Labels["app.kubernetes.io/name"] != "vakt" || d.Spec.Template.Labels["app.kubernetes.io/name"] != "vakt" {
		t.Error("vakt's Deployment and pods must be labelled app.kubernetes.io/name: vakt")
	}

	// The listeners are the container's named ports.
	cfg := p.cfg
	for name, addr := range map[string]string{"grpc": cfg.Listen.GRPC, "http": cfg.Listen.HTTP, "admin": cfg.Listen.Admin} {
		host, port, err := net.SplitHostPort(addr)
		want, ok := containerPort(c, name)
		if err != nil || !ok || port != strconv.Itoa(int(want)) {
			t.Errorf("listen.%s is %s; the container port named %s is %d", name, addr, name, want)
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			t.Errorf("listen.%s is %s: on the loopback, nothing outside the pod reaches it", name, addr)
		}
	}
	grpcPort, _ := containerPort(c, "grpc")
	if rp := c.ReadinessProbe; rp == nil || rp.GRPC == nil || rp.GRPC.Port != grpcPort || (rp.GRPC.Service != nil && *rp.GRPC.Service != "") {
		t.Errorf("vakt's readiness probe must be gRPC health (service \"\") on port %d: %+v", grpcPort, rp)
	}
	if lp := c.LivenessProbe; lp == nil || lp.HTTPGet == nil || lp.HTTPGet.Path != "/healthz" || lp.HTTPGet.Port != intstr.FromString("admin") {
		t.Errorf("vakt's liveness probe must be GET /healthz on the admin port: %+v", lp)
	}
	// A pod stopped by Kubernetes drains, then finishes what is in flight,
	// before it is killed.
	stop := cfg.Shutdown.DrainDelay.Std() + cfg.Shutdown.Grace.Std()
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second < stop+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds must be at least 5 s more than shutdown.drainDelay + grace = %v", stop)
	}
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" && (e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil || e.ValueFrom.ResourceFieldRef.Resource != "limits.memory") {
			t.Error("GOMEMLIMIT must come from limits.memory")
		}
	}

	// The configuration comes from the ConfigMap vakt-config, key vakt.yaml,
	// mounted as a directory at the --config file's directory.
	cm := get[corev1.ConfigMap](t, objs, "vakt-config")
	if _, ok := cm.Data["vakt.yaml"]; !ok || p.cfgPath != "/etc/vakt/vakt.yaml" {
		t.Errorf("--config %s; ConfigMap vakt-config keys %v", p.cfgPath, slices.Sorted(maps.Keys(cm.Data)))
	}
	// The signing keys come from the Secret vakt-signing-keys, key
	// keys.json, mounted as a directory where signing.keysFile points.
	keys := p.inPod(t, cfg.Signing.KeysFile)
	dir, secret := p.secretMount(t, keys)
	if secret.SecretName != "vakt-signing-keys" || dir != path.Dir(keys) || len(secret.Items) != 1 || secret.Items[0].Key != "keys.json" || secret.Items[0].Path != path.Base(keys) {
		t.Errorf("signing.keysFile %s: Secret %s mounted at %s with %+v", keys, secret.SecretName, dir, secret.Items)
	}

	// The Service: gRPC and HTTP, not the admin port.
	svc := get[corev1.Service](t, objs, "vakt")
	ports := map[string]corev1.ServicePort{}
	for _, sp := range svc.Spec.Ports {
		ports[sp.Name] = sp
	}
	if g := ports["grpc"]; g.AppProtocol == nil || *g.AppProtocol != "grpc" || g.TargetPort != intstr.FromString("grpc") {
		t.Error("Service vakt: port grpc must target the container port grpc, with appProtocol grpc")
	}
	if h := ports["http"]; h.TargetPort != intstr.FromString("http") {
		t.Error("Service vakt: port http must target the container port http")
	}
	for _, sp := range svc.Spec.Ports {
		if sp.TargetPort == intstr.FromString("admin") || sp.TargetPort.IntVal == 9090 {
			t.Error("Service vakt must not expose the admin port")
		}
	}
	if svc.Spec.Type != "" && svc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("Service vakt is %s, want ClusterIP", svc.Spec.Type)
	}

	// Istio's ext_authz provider names this Service and its gRPC port.
	var mesh struct {
		ExtensionProviders []struct {
			Name              string `json:"name"`
			EnvoyExtAuthzGrpc *struct {
				Service string `json:"service"`
				Port    int32  `json:"port"`
			} `json:"envoyExtAuthzGrpc"`
		} `json:"extensionProviders"`
	}
	if err := json.Unmarshal(yamlToJSON(t, "istio/mesh-config.yaml"), &mesh); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ep := range mesh.ExtensionProviders {
		if ep.Name == "vakt" && ep.EnvoyExtAuthzGrpc != nil {
			found = true
			if want := svc.Name + "." + svc.Namespace + ".svc.cluster.local"; ep.EnvoyExtAuthzGrpc.Service != want || ep.EnvoyExtAuthzGrpc.Port != ports["grpc"].Port {
				t.Errorf("istio/mesh-config.yaml: provider vakt is %s:%d, want %s:%d", ep.EnvoyExtAuthzGrpc.Service, ep.EnvoyExtAuthzGrpc.Port, want, ports["grpc"].Port)
			}
		}
	}
	if !found {
		t.Error("istio/mesh-config.yaml has no vakt envoyExtAuthzGrpc provider")
	}

	// Who may reach which port.
	np := get[networkingv1.NetworkPolicy](t, objs, "vakt")
	from := map[string][]networkingv1.NetworkPolicyPeer{}
	for _, r := range np.Spec.Ingress {
		for _, port := range r.Ports {
			from[port.Port.String()] = append(from[port.Port.String()], r.From...)
		}
	}
	if len(from) != 3 || len(from["grpc"]) == 0 || len(from["http"]) == 0 {
		t.Errorf("NetworkPolicy vakt admits %v, want grpc, http and admin", slices.Sorted(maps.Keys(from)))
	}
	if a := from["admin"]; len(a) != 1 || a[0].PodSelector != nil || a[0].NamespaceSelector == nil ||
		!reflect.DeepEqual(a[0].NamespaceSelector.MatchLabels, map[string]string{"kubernetes.io/metadata.name": "monitoring"}) {
		t.Errorf("NetworkPolicy vakt: the admin port must admit the monitoring namespace only: %+v", a)
	}
	return p
}

func TestKubernetesBase(t *testing.T) {
	objs := render(t, baseDir)
	checkObjects(t, objs)
	p := checkVakt(t, objs)
	if p.cfg.Replay.Redis != nil {
		t.Error("the base configures Redis; that is overlays/redis's")
	}
	if cm := get[corev1.ConfigMap](t, objs, "vakt-config"); string(p.raw) != mustRead(t, filepath.Join(baseDir, "vakt.yaml")) || len(cm.Data) != 1 {
		t.Error("ConfigMap vakt-config is not deploy/kubernetes/vakt.yaml alone")
	}
	// config.Load on the file as it is in the repository, with the
	// ConfigMap's directory: what `vakt check-config` does.
	if _, err := config.Load(p.raw, "/etc/vakt"); err != nil {
		t.Errorf("deploy/kubernetes/vakt.yaml: %v", err)
	}
	for _, name := range []string{"Deployment/vakt", "Service/vakt", "ConfigMap/vakt-config", "ServiceAccount/vakt", "PodDisruptionBudget/vakt", "NetworkPolicy/vakt"} {
		if objs[name] == nil {
			t.Errorf("the base has no %s", name)
		}
	}
	if len(objs) != 6 {
		t.Errorf("the base renders %v", slices.Sorted(maps.Keys(objs)))
	}
}

func TestKubernetesRedisOverlay(t *testing.T) {
	objs := render(t, redisDir)
	checkObjects(t, objs)
	p := checkVakt(t, objs)
	// vakt's configuration is the base's plus replay.redis.
	checkRedis(t, objs, p, mustRead(t, filepath.Join(baseDir, "vakt.yaml")))
}

// overlays/native-redis is overlays/native (the same RBAC, the same pod)
// with overlays/redis's Redis, and a vakt.yaml that is the native one's plus
// replay.redis.
func TestKubernetesNativeRedisOverlay(t *testing.T) {
	objs := render(t, nativeRedisDir)
	checkObjects(t, objs)
	p := checkVakt(t, objs)
	checkRedis(t, objs, p, mustRead(t, filepath.Join(nativeDir, "vakt.yaml")))
	checkSecretURLs(t, objs, p)
	native, redis := render(t, nativeDir), render(t, redisDir)
	for name, obj := range native {
		if name == "ConfigMap/vakt-config" || name == "Deployment/vakt" {
			continue
		}
		if !reflect.DeepEqual(objs[name], obj) {
			t.Errorf("%s differs from overlays/native's", name)
		}
	}
	for name, obj := range redis {
		if strings.Contains(name, "vakt-redis") && !reflect.DeepEqual(objs[name], obj) {
			t.Errorf("%s differs from overlays/redis's", name)
		}
	}
	// vakt's pod is overlays/native's with the password's mount.
	pod, nativePod := get[appsv1.Deployment](t, objs, "vakt").Spec.Template.Spec, get[appsv1.Deployment](t, native, "vakt").Spec.Template.Spec
	if pod.ServiceAccountName != nativePod.ServiceAccountName || !reflect.DeepEqual(pod.AutomountServiceAccountToken, nativePod.AutomountServiceAccountToken) ||
		!reflect.DeepEqual(container(t, get[appsv1.Deployment](t, objs, "vakt"), "vakt").Env, container(t, get[appsv1.Deployment](t, native, "vakt"), "vakt").Env) {
		t.Error("vakt's pod is not overlays/native's")
	}
	if want := len(native) + len(redis) - len(render(t, baseDir)); len(objs) != want {
		t.Errorf("overlays/native-redis renders %d objects, want %d: %v", len(objs), want, slices.Sorted(maps.Keys(objs)))
	}
}

// checkRedis checks an overlay's Redis, and that its vakt.yaml is base
// (another vakt.yaml) plus replay.redis.
func checkRedis(t *testing.T, objs objects, p *vaktPod, base string) {
	t.Helper()
	var want, overlay map[string]any
	if err := yaml.Unmarshal([]byte(base), &want); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(p.raw, &overlay); err != nil {
		t.Fatal(err)
	}
	replay, _ := overlay["replay"].(map[string]any)
	delete(overlay, "replay")
	if !reflect.DeepEqual(want, overlay) || len(replay) != 1 || replay["redis"] == nil {
		t.Error("the overlay's vakt.yaml must be the one it extends with replay.redis added, nothing else")
	}

	// replay.redis.address is the Redis Service's name and port, in vakt's
	// namespace.
	r := p.cfg.Replay.Redis
	if r == nil {
		t.Fatal("overlays/redis does not configure replay.redis")
	}
	svc := get[corev1.Service](t, objs, "vakt-redis")
	host, port, err := net.SplitHostPort(r.Address)
	if err != nil || len(svc.Spec.Ports) != 1 || port != strconv.Itoa(int(svc.Spec.Ports[0].Port)) ||
		(host != svc.Name && host != svc.Name+"."+svc.Namespace && host != svc.Name+"."+svc.Namespace+".svc.cluster.local") {
		t.Errorf("replay.redis.address %s is not Service %s's port %v", r.Address, svc.Name, svc.Spec.Ports)
	}

	// vakt reads the password from the Secret Redis's requirepass comes
	// from, as a file of a directory mount.
	pw := p.inPod(t, r.PasswordFile)
	_, secret := p.secretMount(t, pw)
	redis := get[appsv1.Deployment](t, objs, "vakt-redis")
	rc := container(t, redis, "redis")
	var envName string
	for _, e := range rc.Env {
		if ref := e.ValueFrom; ref != nil && ref.SecretKeyRef != nil && ref.SecretKeyRef.Name == secret.SecretName {
			envName = e.Name
			if len(secret.Items) != 1 || secret.Items[0].Key != ref.SecretKeyRef.Key || secret.Items[0].Path != path.Base(pw) {
				t.Errorf("vakt reads %s from %+v; Redis reads key %s", pw, secret.Items, ref.SecretKeyRef.Key)
			}
		}
	}
	if secret.SecretName != "vakt-redis" || envName == "" {
		t.Fatalf("Redis's password does not come from Secret %s", secret.SecretName)
	}
	if i := slices.Index(rc.Args, "--requirepass"); i < 0 || i+1 >= len(rc.Args) || rc.Args[i+1] != "$("+envName+")" {
		t.Errorf("redis-server's args %q do not set --requirepass $(%s)", rc.Args, envName)
	}
	if !strings.HasPrefix(rc.Image, "redis:7") || *redis.Spec.Replicas != 1 {
		t.Errorf("Redis: image %s, %d replicas", rc.Image, *redis.Spec.Replicas)
	}
	// The root filesystem is read-only; redis-server's working directory
	// is an emptyDir.
	data := false
	for _, m := range rc.VolumeMounts {
		data = data || (m.MountPath == "/data" && volume(t, redis, m.Name).EmptyDir != nil)
	}
	if !data {
		t.Error("Redis needs an emptyDir at /data")
	}
	// Only vakt reaches Redis.
	np := get[networkingv1.NetworkPolicy](t, objs, "vakt-redis")
	for _, rule := range np.Spec.Ingress {
		for _, peer := range rule.From {
			if peer.NamespaceSelector != nil || peer.IPBlock != nil || peer.PodSelector == nil || !selects(peer.PodSelector.MatchLabels, p.d.Spec.Template.Labels) {
				t.Errorf("NetworkPolicy vakt-redis admits %+v, not vakt's pods alone", peer)
			}
		}
	}
}

// The Lease the replicas elect the status writer with (cmd/vakt's
// KubeStatusConfig.LeaseName), in the pod's namespace.
const statusLease = "vakt-status"

// What vakt's service account may do in Kubernetes-native mode, as
// permissions lists them: read Applications (and Jwkers) everywhere, write
// Applications' status, and hold the Lease vakt-status in its namespace
// (create cannot be narrowed to a name).
var (
	nativeClusterPermissions = []string{
		"create /secrets", "delete /secrets",
		"get /secrets", "get nais.io/jwkers", "get vakt.dev/applications",
		"list /namespaces", "list nais.io/jwkers", "list vakt.dev/applications",
		"patch nais.io/jwkers/status", "patch vakt.dev/applications/status",
		"update /secrets",
		"watch /namespaces", "watch nais.io/jwkers", "watch vakt.dev/applications",
	}
	// In vakt's namespace: the Lease, and the Jwkers' published keys.
	nativeLeasePermissions = []string{
		"create /configmaps", "create coordination.k8s.io/leases",
		"delete /configmaps",
		"get /configmaps", "get coordination.k8s.io/leases " + statusLease,
		"list /configmaps",
		"update /configmaps", "update coordination.k8s.io/leases " + statusLease,
		"watch /configmaps",
	}
)

func TestKubernetesNativeOverlay(t *testing.T) {
	objs := render(t, nativeDir)
	checkObjects(t, objs)
	p := checkVakt(t, objs)
	pod := &p.d.Spec.Template.Spec

	// The pod has its service account's token; the ServiceAccount still
	// says false (checkDeployment), so only this pod asks for it.
	if a := pod.AutomountServiceAccountToken; a == nil || !*a || pod.ServiceAccountName != "vakt" {
		t.Errorf("vakt's pod must mount service account vakt's token: automountServiceAccountToken %v, serviceAccountName %q", a, pod.ServiceAccountName)
	}
	// POD_NAME and POD_NAMESPACE from the downward API: the writer's
	// identity and the Lease's namespace.
	env := map[string]string{}
	for _, e := range p.c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.Value == "" &&
			(e.ValueFrom.FieldRef.APIVersion == "" || e.ValueFrom.FieldRef.APIVersion == "v1") {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("POD_NAME and POD_NAMESPACE must come from fieldRef metadata.name and metadata.namespace: %v", env)
	}

	// vakt's configuration is the base's plus kubernetes: {enabled: true}.
	var base, overlay map[string]any
	if err := yaml.Unmarshal([]byte(mustRead(t, filepath.Join(baseDir, "vakt.yaml"))), &base); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(p.raw, &overlay); err != nil {
		t.Fatal(err)
	}
	kube := overlay["kubernetes"]
	delete(overlay, "kubernetes")
	if want := map[string]any{"enabled": true, "clientEndpoint": "http://vakt.vakt.svc.cluster.local:8080"}; !reflect.DeepEqual(base, overlay) || !reflect.DeepEqual(kube, want) {
		t.Errorf("overlays/native/vakt.yaml must be deploy/kubernetes/vakt.yaml with kubernetes: %v added, nothing else; kubernetes is %v", want, kube)
	}
	cfg, err := config.Load(p.raw, "/etc/vakt")
	if err != nil {
		t.Fatalf("overlays/native/vakt.yaml: %v", err)
	}
	if k := cfg.Kubernetes; !k.Enabled || !p.cfg.Kubernetes.Enabled || len(k.Namespaces) > 0 || k.Kubeconfig != "" {
		t.Errorf("overlays/native/vakt.yaml: kubernetes is %+v, want enabled, every namespace, the service account", k)
	}
	if ns := cfg.Kubernetes.LeaseNamespace; ns != "" && ns != p.d.Namespace {
		t.Errorf("kubernetes.leaseNamespace %s: the Role lets vakt hold its Lease in %s only", ns, p.d.Namespace)
	}
	checkSecretURLs(t, objs, p)

	// The RBAC, exactly: the ClusterRole for the resources, bound
	// cluster-wide (vakt watches every namespace); the Role for the Lease,
	// in vakt's namespace; both given to vakt's ServiceAccount alone.
	sa := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: pod.ServiceAccountName, Namespace: p.d.Namespace}}
	cr := get[rbacv1.ClusterRole](t, objs, "vakt")
	if got := permissions(cr.Rules); !slices.Equal(got, nativeClusterPermissions) {
		t.Errorf("ClusterRole vakt grants %q, want %q", got, nativeClusterPermissions)
	}
	crb := get[rbacv1.ClusterRoleBinding](t, objs, "vakt")
	if crb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cr.Name}) || !reflect.DeepEqual(crb.Subjects, sa) {
		t.Errorf("ClusterRoleBinding vakt gives %+v to %+v, want ClusterRole vakt to %+v", crb.RoleRef, crb.Subjects, sa)
	}
	roles, bindings := all[rbacv1.Role](objs), all[rbacv1.RoleBinding](objs)
	if len(roles) != 1 || len(bindings) != 1 || len(all[rbacv1.ClusterRole](objs)) != 1 || len(all[rbacv1.ClusterRoleBinding](objs)) != 1 {
		t.Fatalf("overlays/native renders %v, want one ClusterRole, ClusterRoleBinding, Role and RoleBinding", slices.Sorted(maps.Keys(objs)))
	}
	if got := permissions(roles[0].Rules); !slices.Equal(got, nativeLeasePermissions) || roles[0].Namespace != p.d.Namespace {
		t.Errorf("Role %s/%s grants %q, want %q in %s", roles[0].Namespace, roles[0].Name, got, nativeLeasePermissions, p.d.Namespace)
	}
	if rb := bindings[0]; rb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: roles[0].Name}) || !reflect.DeepEqual(rb.Subjects, sa) {
		t.Errorf("RoleBinding %s gives %+v to %+v, want Role %s to %+v", rb.Name, rb.RoleRef, rb.Subjects, roles[0].Name, sa)
	}
	if len(objs) != 14 {
		t.Errorf("overlays/native renders %v: the base's six objects, the four of rbac.yaml and the four of secrets-policy.yaml", slices.Sorted(maps.Keys(objs)))
	}
	for _, name := range []string{"vakt-secrets", "vakt-key-records"} {
		policy := get[admissionregistrationv1.ValidatingAdmissionPolicy](t, objs, name)
		binding := get[admissionregistrationv1.ValidatingAdmissionPolicyBinding](t, objs, name)
		if binding.Spec.PolicyName != policy.Name || !slices.Equal(binding.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) ||
			len(policy.Spec.MatchConditions) != 1 || policy.Spec.MatchConditions[0].Expression != `request.userInfo.username == "system:serviceaccount:`+p.d.Namespace+`:`+pod.ServiceAccountName+`"` {
			t.Errorf("the policy %s does not deny vakt's service account: %+v %+v", name, policy.Spec, binding.Spec)
		}
	}
}

// The files beside the base that it does not render: the Namespace, and
// the Prometheus Operator's ServiceMonitor with its headless Service.
func TestKubernetesExtras(t *testing.T) {
	objs := render(t, baseDir)
	vakt := get[appsv1.Deployment](t, objs, "vakt")

	ns, other := decodeFile(t, filepath.Join(baseDir, "namespace.yaml"))
	if n := get[corev1.Namespace](t, ns, vakt.Namespace); len(ns) != 1 || len(other) != 0 ||
		(n.Labels["istio-injection"] != "enabled" && n.Labels["istio.io/rev"] == "") {
		t.Errorf("namespace.yaml must be namespace %s alone, in the mesh", vakt.Namespace)
	}

	mon, other := decodeFile(t, filepath.Join(baseDir, "base", "monitoring.yaml"))
	admin := get[corev1.Service](t, mon, "vakt-admin")
	c := container(t, vakt, "vakt")
	if admin.Spec.ClusterIP != corev1.ClusterIPNone || len(admin.Spec.Ports) != 1 || !portExists(c, admin.Spec.Ports[0].TargetPort) ||
		admin.Spec.Ports[0].TargetPort != intstr.FromString("admin") || !selects(admin.Spec.Selector, vakt.Spec.Template.Labels) {
		t.Errorf("Service vakt-admin must be headless, on vakt's admin port: %+v", admin.Spec)
	}
	// The ServiceMonitor, decoded strictly into the fields it uses.
	var sm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			Endpoints []struct {
				Port     string `json:"port"`
				Path     string `json:"path"`
				Interval string `json:"interval"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	dec := json.NewDecoder(bytes.NewReader(other["ServiceMonitor/vakt"]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sm); err != nil || sm.APIVersion != "monitoring.coreos.com/v1" || len(mon)+len(other) != 2 {
		t.Fatalf("monitoring.yaml: the ServiceMonitor: %v", err)
	}
	if !selects(sm.Spec.Selector.MatchLabels, admin.Labels) || selects(sm.Spec.Selector.MatchLabels, get[corev1.Service](t, objs, "vakt").Labels) ||
		len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != admin.Spec.Ports[0].Name || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("the ServiceMonitor must scrape /metrics on Service vakt-admin's port alone: %+v", sm.Spec)
	}
}

func mustRead(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// checkSecretURLs checks that the URLs vakt writes into the Secrets of the
// client keys it makes are ones the rendered manifests serve: each names
// vakt's Service (by its cluster DNS name) on a port that targets the
// container port vakt's HTTP listener is on, in the scheme that listener
// speaks, at the path vakt routes there; and a client assertion naming the
// token endpoint is accepted.
func checkSecretURLs(t *testing.T, objs objects, p *vaktPod) {
	t.Helper()
	cfg := p.cfg
	env := kube.ClientEnv(cfg, cfg.Cluster+":team-a:app-1")
	if env["TOKEN_X_ISSUER"] != cfg.Issuer {
		t.Errorf("TOKEN_X_ISSUER is %q, the issuer %q", env["TOKEN_X_ISSUER"], cfg.Issuer)
	}
	_, httpPort, _ := net.SplitHostPort(cfg.Listen.HTTP)
	scheme := "http"
	if cfg.Listen.TLS != nil {
		scheme = "https"
	}
	issuerPath := config.IssuerPath(cfg.Issuer)
	for name, wantPath := range map[string]string{
		"TOKEN_X_TOKEN_ENDPOINT": issuerPath + config.TokenPath,
		"TOKEN_X_JWKS_URI":       issuerPath + config.JWKSPath,
		"TOKEN_X_WELL_KNOWN_URL": config.MetadataPath + issuerPath,
	} {
		u, err := url.Parse(env[name])
		if err != nil || u.Scheme != scheme || u.Path != wantPath || u.RawQuery != "" {
			t.Errorf("%s = %q: want %s://… with path %s", name, env[name], scheme, wantPath)
			continue
		}
		port := u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		served := false
		for _, svc := range all[corev1.Service](objs) {
			names := []string{svc.Name + "." + svc.Namespace + ".svc.cluster.local", svc.Name + "." + svc.Namespace + ".svc", svc.Name + "." + svc.Namespace}
			if !slices.Contains(names, u.Hostname()) || !selects(svc.Spec.Selector, p.d.Spec.Template.Labels) {
				continue
			}
			for _, sp := range svc.Spec.Ports {
				if strconv.Itoa(int(sp.Port)) != port {
					continue
				}
				target := sp.TargetPort.IntVal
				if sp.TargetPort.Type == intstr.String {
					target, _ = containerPort(p.c, sp.TargetPort.StrVal)
				}
				served = served || strconv.Itoa(int(target)) == httpPort
			}
		}
		if !served {
			t.Errorf("%s = %q: no Service of vakt's pods serves port %s there from the container's HTTP listener (%s)", name, env[name], port, cfg.Listen.HTTP)
		}
	}
	if te := env["TOKEN_X_TOKEN_ENDPOINT"]; te != cfg.Issuer+config.TokenPath && !slices.Contains(cfg.TokenEndpointAudiences(), te) {
		t.Errorf("TOKEN_X_TOKEN_ENDPOINT %q is no audience vakt accepts in client assertions", te)
	}
}
