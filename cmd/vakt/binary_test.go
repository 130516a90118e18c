package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/kubetest"
	"github.com/vakt-dev/vakt/internal/tlstest"
	"github.com/vakt-dev/vakt/internal/waittest"
)

// syncBuffer is a process's output, read while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// built is the vakt binary the tests run, built once.
var built struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

func buildVakt(t *testing.T) string {
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "vakt-binary-test")
		if err != nil {
			built.err = err
			return
		}
		built.path = filepath.Join(dir, "vakt")
		built.out, built.err = exec.Command("go", "build", "-o", built.path, ".").CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("go build: %v\n%s", built.err, built.out)
	}
	return built.path
}

// startBinary runs vakt with args and env until the test ends; its log is
// returned, and shown when the test fails.
func startBinary(t *testing.T, env []string, args ...string) (*exec.Cmd, *syncBuffer, chan error) {
	t.Helper()
	var logs syncBuffer
	cmd := exec.Command(buildVakt(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		err := <-exited
		exited <- err
		if t.Failed() {
			t.Logf("%s's log:\n%s", args[0], logs.String())
		}
	})
	return cmd, &logs, exited
}

// freePort is a loopback port free now, below Linux's ephemeral range
// (32768–60999): a port the kernel hands out for :0 listeners and outgoing
// connections, of this and other tests, could be taken again before vakt
// binds it.
func freePort(t *testing.T) int {
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port between 20000 and 32000")
	return 0
}

// awaitExit waits for a vakt signalled to stop to exit, with status 0.
func awaitExit(t *testing.T, exited chan error) {
	t.Helper()
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("vakt exited with %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("vakt did not exit after SIGTERM")
	}
}

// The vakt binary, run as an operator runs it: TLS with client
// certificates on its listeners, a renewed certificate and a rotated
// client key file picked up without a restart, a listen change refused,
// and on SIGTERM a drain (NOT_SERVING, still answering) before it exits.
func TestServeBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "vakt binary test CA")
	leaf := ca.Server(t, 2)
	tlstest.Write(t, dir, "tls.crt", leaf.CertPEM)
	tlstest.Write(t, dir, "tls.key", leaf.KeyPEM)
	tlstest.Write(t, dir, "ca.crt", ca.PEM)
	signing, _ := exchange.GenerateSigningKey("ES256")
	if err := exchange.WriteKeysFile(filepath.Join(dir, "keys.json"), []*exchange.SigningKey{signing}); err != nil {
		t.Fatal(err)
	}
	clientKey := idptest.NewKey(t, "client-1", "ES256")
	tlstest.Write(t, dir, "app-1.jwks", []byte(idptest.JSON(t, map[string]any{"keys": []any{clientKey.JWK(t)}})))
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	yaml := func(grpc string) string {
		return `issuer: https://` + httpAddr + `
cluster: dev-gcp
listen:
  grpc: ` + grpc + `
  http: ` + httpAddr + `
  admin: ` + adminAddr + `
  tls: {certFile: tls.crt, keyFile: tls.key, clientCAFile: ca.crt, requireClientCert: true}
shutdown: {drainDelay: 1500ms, grace: 2s}
signing: {keysFile: keys.json}
applications:
  - {name: app-1, namespace: team-a, jwksFile: app-1.jwks}
`
	}
	cfgPath := tlstest.Write(t, dir, "vakt.yaml", []byte(yaml(grpcAddr)))
	if err := os.Chmod(filepath.Join(dir, "keys.json"), 0o600); err != nil {
		t.Fatal(err)
	}

	cmd, logs, exited := startBinary(t, nil, "serve", "--config", cfgPath, "--log-format", "text")
	admin := &http.Client{Timeout: 2 * time.Second}
	readyz := func() int {
		resp, err := admin.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waittest.Until(t, 20*time.Second, "vakt never ready", func() bool { return readyz() == http.StatusOK })

	clientCert := ca.Client(t, 10, "envoy").TLS(t)
	clientTLS := func(withCert bool) *tls.Config {
		c := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
		if withCert {
			c.Certificates = []tls.Certificate{clientCert}
		}
		return c
	}
	httpsSerial := func(withCert bool) (int64, error) {
		c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS(withCert), DisableKeepAlives: true}}
		resp, err := c.Get("https://" + httpAddr + "/jwks")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("status %d", resp.StatusCode)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64(), nil
	}
	if serial, err := httpsSerial(true); err != nil || serial != 2 {
		t.Fatalf("HTTPS with a client certificate: %d %v", serial, err)
	}
	if _, err := httpsSerial(false); err == nil {
		t.Fatal("HTTPS without a client certificate was served")
	}

	// A renewed certificate, as cert-manager writes it.
	renewed := ca.Server(t, 3)
	tlstest.Write(t, dir, "tls.key", renewed.KeyPEM)
	tlstest.Write(t, dir, "tls.crt", renewed.CertPEM)
	waittest.Until(t, 10*time.Second, "the renewed certificate was never served", func() bool {
		serial, err := httpsSerial(true)
		return err == nil && serial == 3
	})
	// A rotated client key file is a reload.
	reloads := strings.Count(logs.String(), "msg=reloaded")
	rotated := idptest.NewKey(t, "client-2", "ES256")
	tlstest.Write(t, dir, "app-1.jwks", []byte(idptest.JSON(t, map[string]any{"keys": []any{rotated.JWK(t)}})))
	waittest.Until(t, 10*time.Second, "no reload after the client key file changed", func() bool {
		return strings.Count(logs.String(), "msg=reloaded") > reloads
	})
	// A listen change is refused, saying why.
	tlstest.Write(t, dir, "vakt.yaml", []byte(yaml(fmt.Sprintf("127.0.0.1:%d", freePort(t)))))
	waittest.Until(t, 10*time.Second, "a listen change was not refused", func() bool {
		return strings.Contains(logs.String(), "these changes need a restart")
	})

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(true))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := func() healthpb.HealthCheckResponse_ServingStatus {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return healthpb.HealthCheckResponse_UNKNOWN
		}
		return res.GetStatus()
	}
	if st := health(); st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health over mutual TLS: %v", st)
	}

	signalled := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waittest.Until(t, time.Second, "gRPC health never turned NOT_SERVING", func() bool { return health() == healthpb.HealthCheckResponse_NOT_SERVING })
	if code := readyz(); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz while draining: %d", code)
	}
	if _, err := httpsSerial(true); err != nil {
		t.Fatalf("HTTPS while draining: %v", err)
	}
	awaitExit(t, exited)
	if took := time.Since(signalled); took < 1500*time.Millisecond {
		t.Fatalf("exited %v after SIGTERM, before its drain delay", took)
	}
	if !strings.Contains(logs.String(), "draining") {
		t.Fatal("the log does not say vakt drained")
	}
}

// vakt agent, the binary, starts from exactly the variables NAIS injects
// (both TOKEN_X_WELL_KNOWN_URL and TOKEN_X_JWKS_URI among them) beside a
// vakt authority, and is ready once the authority's keys are in.
func TestAgentBinaryNAISEnvironment(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	private, err := os.ReadFile("../../deploy/examples/keys/app-1.jwk")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := exchange.ParsePrivateKeys(private)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := exchange.NewSigner(keys...)
	if err != nil {
		t.Fatal(err)
	}
	public := signer.JWKS() // the public half, as a JWK Set
	cfgPath := tlstest.Write(t, dir, "vakt.yaml", []byte(`issuer: http://`+httpAddr+`
cluster: dev-gcp
listen: {grpc: 127.0.0.1:`+fmt.Sprint(freePort(t))+`, http: `+httpAddr+`, admin: "off"}
shutdown: {drainDelay: 0s}
applications:
  - {name: app-1, namespace: team-a, jwks: `+string(public)+`}
  - name: app-b
    namespace: team-b
    accessPolicy: {inbound: {rules: [{application: app-1, namespace: team-a}]}}
`))
	startBinary(t, nil, "serve", "--config", cfgPath)
	issuer := "http://" + httpAddr
	agentAdmin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	agentCmd, _, agentExited := startBinary(t, []string{
		"TOKEN_X_CLIENT_ID=dev-gcp:team-a:app-1",
		"TOKEN_X_PRIVATE_JWK=" + string(private),
		"TOKEN_X_TOKEN_ENDPOINT=" + issuer + "/token",
		"TOKEN_X_ISSUER=" + issuer,
		"TOKEN_X_JWKS_URI=" + issuer + "/jwks",
		"TOKEN_X_WELL_KNOWN_URL=" + issuer + "/.well-known/oauth-authorization-server",
		"NAIS_TOKEN_EXCHANGE_ENDPOINT=http://127.0.0.1:1/api/v1/token/exchange",
		"NAIS_TOKEN_INTROSPECTION_ENDPOINT=http://127.0.0.1:1/api/v1/introspect",
	}, "agent", "--grpc", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--http", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--admin", agentAdmin)
	client := &http.Client{Timeout: 2 * time.Second}
	waittest.Until(t, 20*time.Second, "the agent never became ready", func() bool {
		resp, err := client.Get("http://" + agentAdmin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	// SIGTERM stops it, every part joined, with status 0.
	if err := agentCmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	awaitExit(t, agentExited)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.path != "" {
		os.RemoveAll(filepath.Dir(built.path))
	}
	os.Exit(code)
}

// vakt serve in Kubernetes-native mode, the binary, against a real API
// server: not ready until the Application resources are read, then an
// Application applied is enforced by its Check.
// kubeForBinary is a real API server with the Application CRD and the
// namespaces vakt and team-b, a client, and a server-side apply.
func kubeForBinary(t *testing.T) (*kubetest.Cluster, dynamic.Interface, func(gvr schema.GroupVersionResource, ns string, object []byte)) {
	t.Helper()
	cluster := kubetest.Start(t)
	client, err := dynamic.NewForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	apply := func(gvr schema.GroupVersionResource, ns string, object []byte) {
		t.Helper()
		var u unstructured.Unstructured
		if err := u.UnmarshalJSON(object); err != nil {
			t.Fatal(err)
		}
		var ri dynamic.ResourceInterface = client.Resource(gvr)
		if ns != "" {
			ri = client.Resource(gvr).Namespace(ns)
		}
		if _, err := ri.Apply(context.Background(), u.GetName(), &u, metav1.ApplyOptions{FieldManager: "vakt-test", Force: true}); err != nil {
			t.Fatalf("apply %s: %v", u.GetName(), err)
		}
	}
	crd, err := os.ReadFile("../../deploy/kubernetes/crds/applications.vakt.dev.yaml")
	if err != nil {
		t.Fatal(err)
	}
	crdJSON, err := sigsyaml.YAMLToJSON(crd)
	if err != nil {
		t.Fatal(err)
	}
	apply(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}, "", crdJSON)
	apply(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "", []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team-b"}}`))
	apply(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "", []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"vakt"}}`))
	return cluster, client, apply
}

func TestServeBinaryKubernetes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	cluster, client, apply := kubeForBinary(t)
	dir := t.TempDir()
	signing, _ := exchange.GenerateSigningKey("ES256")
	if err := exchange.WriteKeysFile(filepath.Join(dir, "keys.json"), []*exchange.SigningKey{signing}); err != nil {
		t.Fatal(err)
	}
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfgPath := tlstest.Write(t, dir, "vakt.yaml", []byte(`issuer: http://127.0.0.1:8080
cluster: dev-gcp
listen: {grpc: `+grpcAddr+`, http: 127.0.0.1:`+fmt.Sprint(freePort(t))+`, admin: `+adminAddr+`}
shutdown: {drainDelay: 0s}
signing: {keysFile: keys.json}
kubernetes: {enabled: true, kubeconfig: `+cluster.Kubeconfig+`}
applications:
  - {name: app-1, namespace: team-a}
`))
	cmd, _, exited := startBinary(t, []string{"POD_NAMESPACE=vakt", "POD_NAME=vakt-0"}, "serve", "--config", cfgPath)
	admin := &http.Client{Timeout: 2 * time.Second}
	waittest.Until(t, 30*time.Second, "vakt never ready in Kubernetes-native mode", func() bool {
		resp, err := admin.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	apply(schema.GroupVersionResource{Group: "vakt.dev", Version: "v1alpha1", Resource: "applications"}, "team-b",
		[]byte(`{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-b","namespace":"team-b"},"spec":{"accessPolicy":{"inbound":{"rules":[{"application":"app-1","namespace":"team-a"}]}}}}`))

	tok := idptest.Sign(t, &idptest.Key{ID: signing.ID, Alg: signing.Alg, Private: signing.Private}, signing.Alg,
		map[string]any{"alg": signing.Alg, "kid": signing.ID, "typ": "at+jwt"},
		map[string]any{"iss": "http://127.0.0.1:8080", "sub": "user-1", "aud": "dev-gcp:team-b:app-b", "client_id": "dev-gcp:team-a:app-1", "exp": time.Now().Add(time.Minute).Unix()})
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	check := authv3.NewAuthorizationClient(conn)
	waittest.Until(t, 10*time.Second, "the Application was never enforced", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		res, err := check.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			ContextExtensions: map[string]string{"vakt_app": "dev-gcp:team-b:app-b"},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/", Headers: map[string]string{"authorization": "Bearer " + tok},
			}},
		}})
		return err == nil && res.GetOkResponse() != nil
	})
	// Its status says so, written by the replica holding the lease.
	waittest.Until(t, 15*time.Second, "no Ready status written", func() bool {
		u, err := client.Resource(schema.GroupVersionResource{Group: "vakt.dev", Version: "v1alpha1", Resource: "applications"}).Namespace("team-b").Get(context.Background(), "app-b", metav1.GetOptions{})
		if err != nil {
			return false
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		return len(conds) == 1 && conds[0].(map[string]any)["status"] == "True"
	})
	lease, err := client.Resource(schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}).Namespace("vakt").Get(context.Background(), "vakt-status", metav1.GetOptions{})
	if h, _, _ := unstructured.NestedString(lease.Object, "spec", "holderIdentity"); err != nil || h != "vakt-0" {
		t.Fatalf("the lease: %q %v", h, err)
	}

	// An Application with secretName gets its client key in that Secret;
	// vakt keys rotate has the replica make a new one, the old still valid.
	apply(schema.GroupVersionResource{Group: "vakt.dev", Version: "v1alpha1", Resource: "applications"}, "team-b",
		[]byte(`{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-k","namespace":"team-b"},"spec":{"secretName":"app-k-tokenx"}}`))
	kidIn := func() string { return secretKid(client, "team-b", "app-k-tokenx") }
	published := func() []any {
		u, err := client.Resource(schema.GroupVersionResource{Group: "vakt.dev", Version: "v1alpha1", Resource: "applications"}).Namespace("team-b").Get(context.Background(), "app-k", metav1.GetOptions{})
		if err != nil {
			return nil
		}
		keys, _, _ := unstructured.NestedSlice(u.Object, "status", "keys", "keys")
		return keys
	}
	var first string
	waittest.Until(t, 30*time.Second, "no client key made", func() bool { first = kidIn(); return first != "" && len(published()) == 1 })
	out, err := exec.Command(buildVakt(t), "keys", "rotate", "--kubeconfig", cluster.Kubeconfig, "team-b/app-k").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "asked for a new key for Application team-b/app-k") {
		t.Fatalf("vakt keys rotate: %v\n%s", err, out)
	}
	waittest.Until(t, 30*time.Second, "no new client key after vakt keys rotate", func() bool {
		k := kidIn()
		return k != "" && k != first && len(published()) == 2
	})
	out, err = exec.Command(buildVakt(t), "keys", "rotate", "--kubeconfig", cluster.Kubeconfig, "team-b/app-b").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "has no spec.secretName") {
		t.Errorf("vakt keys rotate of an application without secretName: %v\n%s", err, out)
	}

	// SIGTERM stops it once every part has: the controller among them,
	// its Lease released on the way, for another replica to take at once.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	awaitExit(t, exited)
	lease, err = client.Resource(schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}).Namespace("vakt").Get(context.Background(), "vakt-status", metav1.GetOptions{})
	if h, _, _ := unstructured.NestedString(lease.Object, "spec", "holderIdentity"); err != nil || h != "" {
		t.Fatalf("the lease after vakt stopped: held by %q, %v", h, err)
	}
}

// Two vakt binaries in Kubernetes-native mode: the one holding the Lease
// makes the client keys. Killed (SIGKILL: no lease released), the other
// takes the Lease once it expires and makes the next key.
func TestServeBinaryKubernetesFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	cluster, client, apply := kubeForBinary(t)
	apps := schema.GroupVersionResource{Group: "vakt.dev", Version: "v1alpha1", Resource: "applications"}
	leases := client.Resource(schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}).Namespace("vakt")
	dir := t.TempDir()
	signing, _ := exchange.GenerateSigningKey("ES256")
	if err := exchange.WriteKeysFile(filepath.Join(dir, "keys.json"), []*exchange.SigningKey{signing}); err != nil {
		t.Fatal(err)
	}
	replicas := map[string]*exec.Cmd{}
	for _, name := range []string{"vakt-0", "vakt-1"} {
		cfgPath := tlstest.Write(t, dir, name+".yaml", []byte(`issuer: https://vakt.example
cluster: dev-gcp
listen: {grpc: 127.0.0.1:`+fmt.Sprint(freePort(t))+`, http: 127.0.0.1:`+fmt.Sprint(freePort(t))+`, admin: 127.0.0.1:`+fmt.Sprint(freePort(t))+`}
shutdown: {drainDelay: 0s}
signing: {keysFile: keys.json}
kubernetes: {enabled: true, kubeconfig: `+cluster.Kubeconfig+`}
`))
		replicas[name], _, _ = startBinary(t, []string{"POD_NAMESPACE=vakt", "POD_NAME=" + name}, "serve", "--config", cfgPath)
	}
	holder := func() string {
		l, err := leases.Get(context.Background(), "vakt-status", metav1.GetOptions{})
		if err != nil {
			return ""
		}
		h, _, _ := unstructured.NestedString(l.Object, "spec", "holderIdentity")
		return h
	}
	kid := func() string { return secretKid(client, "team-b", "app-k-tokenx") }
	apply(apps, "team-b", []byte(`{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-k","namespace":"team-b"},"spec":{"secretName":"app-k-tokenx"}}`))
	var first, leader string
	waittest.Until(t, 30*time.Second, "no key made", func() bool { first, leader = kid(), holder(); return first != "" && leader != "" })
	survivor := map[string]string{"vakt-0": "vakt-1", "vakt-1": "vakt-0"}[leader]
	if survivor == "" {
		t.Fatalf("the lease is held by %q", leader)
	}
	if err := replicas[leader].Process.Kill(); err != nil {
		t.Fatal(err)
	}
	apply(apps, "team-b", []byte(`{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-k","namespace":"team-b","annotations":{"vakt.dev/rotate-key":"after-the-kill"}},"spec":{"secretName":"app-k-tokenx"}}`))
	// The lease lasts 15 s after its last renewal; then the survivor takes
	// it (retrying every 2 s) and makes the key.
	waittest.Until(t, 40*time.Second, "the survivor never made the next key", func() bool {
		k := kid()
		return k != "" && k != first && holder() == survivor
	})
}

// secretKid is the kid of the key in a Secret vakt made; "" when there is
// none.
func secretKid(client dynamic.Interface, ns, name string) string {
	s, err := client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "secrets"}).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	v, _, _ := unstructured.NestedString(s.Object, "data", "TOKEN_X_PRIVATE_JWK")
	b, _ := base64.StdEncoding.DecodeString(v)
	k, err := exchange.ParsePrivateJWK(b)
	if err != nil {
		return ""
	}
	return k.ID
}
