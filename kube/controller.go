package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
)

// LeaseName is the Lease the replicas elect the status writer with.
const LeaseName = "vakt-status"

// Controller is Kubernetes-native mode in one replica: its Source, which
// the reload path merges (Loader.Resources), and its part in the election
// of the replica that writes status and makes client keys.
type Controller struct {
	source *Source
	status StatusConfig
	log    *slog.Logger
}

// Options configure a Controller.
type Options struct {
	Config config.Kubernetes
	Logger *slog.Logger
	// OnChange is told of every change of the resources: the caller
	// reloads, which merges them (Source.Merge).
	OnChange func()
	// Getenv reads POD_NAME and POD_NAMESPACE; os.Getenv when nil.
	Getenv func(string) string
	// KeyStats says how the fetches of an application's key set from its
	// jwksUri go, for its status (StatusConfig.KeyStats).
	KeyStats func(appID string) (authz.KeyStats, bool)
}

// New connects to the cluster (kubernetes.kubeconfig, else the pod's
// service account) and returns the controller; Run runs it.
func New(o Options) (*Controller, error) {
	log := cmp.Or(o.Logger, slog.Default())
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	rc, clients, err := clientsFor(o.Config.Kubeconfig, 2)
	if err != nil {
		return nil, err
	}
	leaseNS, identity, err := leaseIdentity(o.Config.LeaseNamespace, getenv)
	if err != nil {
		return nil, err
	}
	informers, api, err := InformerClient(rc)
	if err != nil {
		return nil, err
	}
	src := NewSource(SourceConfig{Client: informers, API: api, Namespaces: o.Config.Namespaces, Jwkers: o.Config.Jwkers,
		KeysNamespace: leaseNS, Logger: log, OnChange: o.OnChange})
	log.Info("kubernetes-native mode: watching Application resources", "namespaces", o.Config.Namespaces, "jwkers", o.Config.Jwkers,
		"lease", leaseNS+"/"+LeaseName, "identity", identity)
	return &Controller{source: src, log: log, status: StatusConfig{Rest: rc, Client: clients[0], KeysClient: clients[1], Source: src,
		MakeKeys: true, KeyStats: o.KeyStats, LeaseNamespace: leaseNS, LeaseName: LeaseName, Identity: identity, Logger: log}}, nil
}

// Source is what the reload path merges.
func (c *Controller) Source() *Source { return c.source }

// Run runs the informers and stands for election until ctx ends, and
// returns when both have stopped (the Lease released, when this replica
// held it, so that another takes it at once).
func (c *Controller) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.source.Run(ctx)
	}()
	if err := RunStatusWriter(ctx, c.status); err != nil {
		c.log.Error("kubernetes: no status will be written and no client key made", "error", err)
	}
	<-done
	return nil
}

// clientsFor are n dynamic clients for the cluster, from kubeconfig when
// set, else the pod's service account. Each has its own rate limit, so
// that the elected replica writing thousands of statuses or keys never
// delays a watch re-established after an outage, nor one the other.
func clientsFor(kubeconfig string, n int) (*rest.Config, []dynamic.Interface, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes.kubeconfig, or the pod's service account: %w", err)
	}
	rc.UserAgent = "vakt"
	// client-go's default (5 per second, bursts of 10) would take minutes
	// over the statuses of a cluster's applications.
	rc.QPS, rc.Burst = 20, 40
	clients := make([]dynamic.Interface, n)
	for i := range clients {
		if clients[i], err = dynamic.NewForConfig(rc); err != nil {
			return nil, nil, err
		}
	}
	return rc, clients, nil
}

// serviceAccountNamespace is where Kubernetes tells a pod its namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// leaseIdentity is the status writer's lease namespace (configured, else
// POD_NAMESPACE, else the service account's) and this replica's identity
// (POD_NAME, else the host name and process id).
func leaseIdentity(configured string, getenv func(string) string) (namespace, identity string, err error) {
	namespace = configured
	if namespace == "" {
		namespace = getenv("POD_NAMESPACE")
	}
	if namespace == "" {
		if b, err := os.ReadFile(serviceAccountNamespace); err == nil {
			namespace = strings.TrimSpace(string(b))
		}
	}
	if namespace == "" {
		return "", "", errors.New("the status writer's lease needs a namespace: kubernetes.leaseNamespace, or POD_NAMESPACE")
	}
	identity = getenv("POD_NAME")
	if identity == "" {
		host, err := os.Hostname()
		if err != nil {
			return "", "", fmt.Errorf("this replica's identity: POD_NAME, or the host name: %w", err)
		}
		// Two processes on one host must not both think they lead.
		identity = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	return namespace, identity, nil
}

// RotateKey asks vakt for a new client key for the Application (or, with
// jwker, the Jwker) namespace/name, by setting AnnotationRotateKey to the
// time, a value never honoured before; it returns the value set. The
// resource must have a secretName. The cluster is kubeconfig's, or as
// kubectl finds it ($KUBECONFIG, then ~/.kube/config) when "".
func RotateKey(ctx context.Context, kubeconfig string, jwker bool, namespace, name string) (string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return "", fmt.Errorf("the cluster: %w", err)
	}
	client, err := dynamic.NewForConfig(rc)
	if err != nil {
		return "", err
	}
	gvr, kind := applicationsGVR, config.KindApplication
	if jwker {
		gvr, kind = jwkersGVR, config.KindJwker
	}
	ri := client.Resource(gvr).Namespace(namespace)
	u, err := ri.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("%s %s/%s: %w", kind, namespace, name, err)
	}
	if sn, _, _ := unstructured.NestedString(u.Object, "spec", "secretName"); sn == "" {
		return "", fmt.Errorf("%s %s/%s has no spec.secretName: vakt makes no key for it", kind, namespace, name)
	}
	value := time.Now().UTC().Format(time.RFC3339Nano)
	// The uid makes the patch conditional: never a namesake made since.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"uid": string(u.GetUID()), "annotations": map[string]string{AnnotationRotateKey: value}}})
	if _, err := ri.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return "", fmt.Errorf("%s %s/%s: %w", kind, namespace, name, err)
	}
	return value, nil
}
