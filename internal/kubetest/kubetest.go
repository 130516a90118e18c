// Package kubetest runs a real Kubernetes API server for tests, as
// controller-runtime's envtest does: an etcd and a kube-apiserver, both on
// loopback, with their data, certificates and logs in the test's temporary
// directory. No controller manager, scheduler or kubelet runs: objects are
// stored, validated, watched and authorized as in a cluster, but a
// Deployment makes no pods.
//
// The binaries are built by deploy/kubernetes/testbin/build.sh (they cannot
// be downloaded here) into a cache directory; Start finds them through
// VAKT_KUBE_BIN or that script's default directory. Without them a test
// skips, saying how to build them, unless CI or VAKT_KUBE_TEST is set: then
// it fails.
//
// The API server authenticates static bearer tokens (--token-auth-file) and
// authorizes with RBAC alone: Cluster.Config is an administrator (group
// system:masters), TokenFor any other user given to Start with WithUser
// (by default "vakt", in no group, with no permission until a test grants
// one). Every client verifies the API server's certificate. As in any
// cluster, a new RoleBinding takes effect a moment after it is stored (when
// the authorizer's cache has it): poll, do not expect it at once.
//
// StopAPIServer (SIGTERM), KillAPIServer (SIGKILL), StartAPIServer and
// RestartAPIServer take the API server down and up again on the same port,
// with the same etcd, certificate and tokens: clients made before see it
// go and come back, and must catch up.
//
// With VAKT_KUBE_CPUS set (a CPU list as taskset(1) takes it, e.g. "0"),
// etcd and the API server run on those CPUs alone (Command runs other
// helpers there too), so that a benchmark can keep them off the CPUs of the
// process it measures, as when the API server runs on other machines.
package kubetest

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The versions deploy/kubernetes/testbin/build.sh builds; they name its
// default cache directory.
const (
	KubeVersion = "v1.36.3"
	EtcdVersion = "v3.6.5"
)

// BuildScript is the script that builds the binaries, relative to the
// repository's root.
const BuildScript = "deploy/kubernetes/testbin/build.sh"

// AdminUser is the user Cluster.Config authenticates as, in group
// system:masters (every permission, whatever RBAC says).
const AdminUser = "admin"

// How long the processes get to become ready, and to stop when asked.
const (
	readyTimeout = 2 * time.Minute
	stopTimeout  = 20 * time.Second
)

// BinDir is the directory holding the etcd and kube-apiserver binaries: the
// value of VAKT_KUBE_BIN, or build.sh's default cache directory.
func BinDir() string {
	if d := os.Getenv("VAKT_KUBE_BIN"); d != "" {
		return d
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "vakt-ci", "kube-"+KubeVersion+"-etcd-"+EtcdVersion)
}

// Option changes what Start starts.
type Option func(*options)

type options struct {
	users []user
}

type user struct {
	name, token string
	groups      []string
}

// WithUser adds a user to the API server's token file, in the given groups
// (besides system:authenticated, which every authenticated user is in), or
// puts a default user ("vakt") in other groups; TokenFor returns a client
// configuration for it. The user has no
// permission but what RBAC objects give it (or its groups).
func WithUser(name string, groups ...string) Option {
	return func(o *options) {
		o.users = append(o.users, user{name: name, groups: groups})
	}
}

// Cluster is a running etcd and kube-apiserver. Start stops both when the
// test ends.
type Cluster struct {
	// Config is a client configuration for the administrator (AdminUser),
	// verifying the API server's certificate. A test may change its copy:
	// Start and TokenFor do not read it.
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file for the administrator,
	// as Config.
	Kubeconfig string
	// Dir is the cluster's directory: etcd's data, the API server's
	// certificates (certs/), the logs (etcd.log, kube-apiserver.log).
	Dir string

	bin     string
	users   map[string]user
	base    *rest.Config // the API server and its CA, no credentials
	apiArgs []string
	apiLog  string

	mu   sync.Mutex // guards etcd and api
	etcd *process
	api  *process
}

// Start starts an etcd and a kube-apiserver for the test, waits until the
// API server is ready (/readyz), and stops both when the test ends. It skips
// the test when the binaries are absent (see the package comment).
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	began := time.Now()
	bin := BinDir()
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if fi, err := os.Stat(filepath.Join(bin, name)); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			msg := fmt.Sprintf("no %s binary in %s (VAKT_KUBE_BIN or the default cache directory): build etcd %s and kube-apiserver %s with %s (several minutes, once; it prints the directory), and set VAKT_KUBE_BIN to that directory if it is not the default",
				name, bin, EtcdVersion, KubeVersion, BuildScript)
			if os.Getenv("CI") != "" || os.Getenv("VAKT_KUBE_TEST") != "" {
				t.Fatal(msg + " (CI or VAKT_KUBE_TEST is set: failing, not skipping)")
			}
			t.Skip(msg)
		}
	}

	var o options
	for _, opt := range opts {
		opt(&o)
	}
	// The default users, unless an option gives one of them other groups.
	for _, d := range []user{{name: AdminUser, groups: []string{"system:masters"}}, {name: "vakt"}} {
		if !slices.ContainsFunc(o.users, func(u user) bool { return u.name == d.name }) {
			o.users = append(o.users, d)
		}
	}
	c := &Cluster{Dir: t.TempDir(), bin: bin, users: map[string]user{}}
	// Registered after TempDir, so run before its removal.
	t.Cleanup(func() { c.stopAll(t) })

	// The RSA key signing service account tokens, made while etcd starts.
	keyFile := filepath.Join(c.Dir, "service-account.key")
	keyErr := make(chan error, 1)
	go func() { keyErr <- writeRSAKey(keyFile) }()

	var tokens strings.Builder
	for _, u := range o.users {
		if _, dup := c.users[u.name]; dup {
			t.Fatalf("kubetest: user %q given twice", u.name)
		}
		if u.name == AdminUser && !sameSet(u.groups, []string{"system:masters"}) {
			t.Fatalf("kubetest: user %q is the administrator, in group system:masters: give another user other groups", u.name)
		}
		if strings.ContainsAny(u.name+strings.Join(u.groups, ""), ",\"\n") {
			t.Fatalf("kubetest: user %q or its groups %q: no commas, quotes or newlines", u.name, u.groups)
		}
		u.token = randomToken(t)
		c.users[u.name] = u
		// token,user,uid[,"group1,group2"]
		fmt.Fprintf(&tokens, "%s,%s,%s", u.token, u.name, u.name)
		if len(u.groups) > 0 {
			fmt.Fprintf(&tokens, ",%q", strings.Join(u.groups, ","))
		}
		tokens.WriteString("\n")
	}
	tokenFile := filepath.Join(c.Dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(tokens.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	ports := freePorts(t, 3)
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	etcd, err := startProcess(filepath.Join(bin, "etcd"), filepath.Join(c.Dir, "etcd.log"),
		"--name", "default",
		"--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", etcdURL,
		"--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL,
		"--initial-cluster-state", "new",
		// A test's data need not survive a power cut.
		"--unsafe-no-fsync",
		"--log-level", "warn",
	)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.etcd = etcd
	c.mu.Unlock()
	if err := <-keyErr; err != nil {
		t.Fatal(err)
	}
	if err := waitFor(etcd, readyTimeout, func() error { return etcdHealthy(etcdURL) }); err != nil {
		t.Fatalf("etcd is not ready: %v%s", err, logTail(etcd.log))
	}

	certDir := filepath.Join(c.Dir, "certs")
	c.base = &rest.Config{
		Host: "https://127.0.0.1:" + strconv.Itoa(ports[2]),
		// Tests make requests in bursts; the API server has no other client.
		QPS:   200,
		Burst: 400,
	}
	c.apiLog = filepath.Join(c.Dir, "kube-apiserver.log")
	c.apiArgs = []string{
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(ports[2]),
		// A self-signed serving certificate (apiserver.crt, with its CA) is
		// made here at the first start and reused by later ones.
		"--cert-dir", certDir,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", keyFile,
		"--service-account-signing-key-file", keyFile,
		"--token-auth-file", tokenFile,
		"--authorization-mode", "RBAC",
		"--service-cluster-ip-range", "10.0.0.0/24",
		// The default/kubernetes Service's endpoints would be 127.0.0.1,
		// which Endpoints may not hold: keep the reconciler from retrying it.
		"--endpoint-reconciler-type", "none",
		// The ServiceAccount admission plugin refuses a pod until its
		// namespace has the service account, which the controller manager
		// (not running) makes; envtest leaves it off too.
		"--disable-admission-plugins", "ServiceAccount",
		// At SIGTERM, end the watches (their clients see them close, as in
		// a rolling update) rather than hold the shutdown until they end,
		// which would be never.
		"--shutdown-watch-termination-grace-period", "2s",
	}
	if err := c.startAPIServer(); err != nil {
		t.Fatal(err)
	}
	c.Config = c.TokenFor(t, AdminUser, "system:masters")

	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: c.Config.Host, CertificateAuthorityData: c.Config.CAData}
	kc.AuthInfos[AdminUser] = &clientcmdapi.AuthInfo{Token: c.users[AdminUser].token}
	kc.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: AdminUser, Namespace: "default"}
	kc.CurrentContext = "kubetest"
	if err := clientcmd.WriteToFile(*kc, c.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	t.Logf("kubetest: etcd %s and kube-apiserver %s at %s ready in %v", EtcdVersion, KubeVersion, c.base.Host, time.Since(began).Round(time.Millisecond))
	return c
}

// TokenFor returns a client configuration for a user of the token file: one
// given to Start with WithUser with the same groups (in any order), the
// administrator (AdminUser, "system:masters"), or "vakt" (in no group). It
// verifies the API server's certificate, as Config does.
func (c *Cluster) TokenFor(t testing.TB, name string, groups ...string) *rest.Config {
	t.Helper()
	u, ok := c.users[name]
	if !ok {
		t.Fatalf("kubetest: no user %q in the token file: start the cluster with kubetest.WithUser(%q, ...)", name, name)
	}
	if !sameSet(u.groups, groups) {
		t.Fatalf("kubetest: user %q is in groups %q, not %q: start the cluster with kubetest.WithUser(%q, ...) and those groups", name, u.groups, groups, name)
	}
	c.mu.Lock()
	cfg := rest.CopyConfig(c.base)
	c.mu.Unlock()
	cfg.BearerToken = u.token
	return cfg
}

// StopAPIServer stops the API server as a rolling update would: SIGTERM,
// after which it ends its watches and requests and exits (within about a
// second; SIGKILL if it has not in 20 s). etcd and its data stay.
func (c *Cluster) StopAPIServer(t testing.TB) {
	t.Helper()
	if err := c.takeAPIServer(t).stop(stopTimeout); err != nil {
		t.Logf("kubetest: stopping the API server: %v", err)
	}
}

// KillAPIServer kills the API server (SIGKILL), as a crash or a lost node
// would: clients' connections break, with no clean end to their watches.
// etcd and its data stay.
func (c *Cluster) KillAPIServer(t testing.TB) {
	t.Helper()
	if err := c.takeAPIServer(t).stop(0); err != nil {
		t.Logf("kubetest: killing the API server: %v", err)
	}
}

// takeAPIServer returns the running API server, which is no longer the
// cluster's.
func (c *Cluster) takeAPIServer(t testing.TB) *process {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	api := c.api
	if api == nil {
		t.Fatal("kubetest: the API server is not running")
	}
	c.api = nil
	return api
}

// StartAPIServer starts the API server again after StopAPIServer or
// KillAPIServer: on the same port, with the same etcd, certificates and
// tokens, so every client made before works again. It returns when the API
// server is ready (/readyz); RBAC may refuse for a moment more, until its
// cache of roles is filled (a real API server's way: clients retry).
func (c *Cluster) StartAPIServer(t testing.TB) {
	t.Helper()
	if err := c.startAPIServer(); err != nil {
		t.Fatal(err)
	}
}

// RestartAPIServer stops the API server and starts it again (StopAPIServer,
// StartAPIServer).
func (c *Cluster) RestartAPIServer(t testing.TB) {
	t.Helper()
	began := time.Now()
	c.StopAPIServer(t)
	c.StartAPIServer(t)
	t.Logf("kubetest: kube-apiserver restarted in %v", time.Since(began).Round(time.Millisecond))
}

// startAPIServer starts the API server and waits until it is ready.
func (c *Cluster) startAPIServer() error {
	c.mu.Lock()
	running := c.api != nil
	c.mu.Unlock()
	if running {
		return errors.New("kubetest: the API server is running already")
	}
	api, err := startProcess(filepath.Join(c.bin, "kube-apiserver"), c.apiLog, c.apiArgs...)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.api = api
	c.mu.Unlock()
	caFile := filepath.Join(argValue(c.apiArgs, "--cert-dir"), "apiserver.crt")
	var client *http.Client
	err = waitFor(api, readyTimeout, func() error {
		if client == nil {
			ca, err := os.ReadFile(caFile)
			if err != nil {
				return err
			}
			cfg := rest.CopyConfig(c.base)
			cfg.CAData = ca
			// Admin's token: /readyz needs no permission, but anonymous
			// requests are refused until RBAC's bootstrap roles exist.
			cfg.BearerToken = c.users[AdminUser].token
			if client, err = rest.HTTPClientFor(cfg); err != nil {
				client = nil
				return err
			}
		}
		resp, err := client.Get(c.base.Host + "/readyz")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kube-apiserver is not ready: %v%s", err, logTail(api.log))
	}
	// Read again now that it is serving: the file is whole.
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.base.CAData = ca
	c.mu.Unlock()
	return nil
}

// stopAll stops the API server, then etcd; with the end of their logs when
// the test failed.
func (c *Cluster) stopAll(t testing.TB) {
	c.mu.Lock()
	api, etcd := c.api, c.etcd
	c.api, c.etcd = nil, nil
	c.mu.Unlock()
	for _, p := range []*process{api, etcd} {
		if p == nil {
			continue
		}
		// No grace at the end: nothing is left to drain.
		if err := p.stop(0); err != nil {
			t.Logf("kubetest: %v", err)
		}
	}
	if t.Failed() {
		t.Logf("kubetest: the end of etcd's and kube-apiserver's logs:%s%s",
			logTail(filepath.Join(c.Dir, "etcd.log")), logTail(c.apiLog))
	}
}

// Command is exec.Command, run on the CPUs VAKT_KUBE_CPUS names (through
// taskset, which execs bin in its place) when it is set.
func Command(bin string, args ...string) *exec.Cmd {
	if cpus := os.Getenv("VAKT_KUBE_CPUS"); cpus != "" {
		return exec.Command("taskset", append([]string{"--cpu-list", cpus, bin}, args...)...)
	}
	return exec.Command(bin, args...)
}

// process is a running etcd or kube-apiserver.
type process struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited; then err is set
	err  error
}

// startProcess starts bin with args, its output appended to logFile.
func startProcess(bin, logFile string, args ...string) (*process, error) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== %s %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("kubetest: starting %s: %w", bin, err)
	}
	p := &process{name: filepath.Base(bin), log: logFile, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM and waits grace for the process to exit, then kills
// it. A zero grace kills at once.
func (p *process) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return fmt.Errorf("%s had exited already: %v", p.name, p.err)
	default:
	}
	if grace > 0 {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			return nil
		case <-time.After(grace):
		}
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	if grace > 0 {
		return fmt.Errorf("%s did not exit within %v of SIGTERM: killed", p.name, grace)
	}
	return nil
}

// waitFor calls ready until it returns nil, p exits, or timeout passes.
func waitFor(p *process, timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// etcdHealthy asks etcd's /health.
func etcdHealthy(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
		return fmt.Errorf("/health: %s: %s", resp.Status, body)
	}
	return nil
}

// freePorts returns n distinct loopback ports free a moment ago, drawn at
// random below the kernel's ephemeral range (32768 and up on Linux): a
// port the kernel hands out for ":0" (every test's listeners, every
// client's outbound connections) would be free again the moment it is
// returned, and could be taken by another test process's cluster before
// this one's etcd or API server binds it, or between an API server's stop
// and its restart. A random port below the range is taken by nothing but
// another such draw.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			t.Fatal("kubetest: no free loopback port between 20000 and 32000")
		}
		p := 20000 + mrand.IntN(12000)
		if slices.Contains(ports, p) {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue // taken
		}
		l.Close()
		ports = append(ports, p)
	}
	return ports
}

// writeRSAKey writes a new 2048-bit RSA private key (PKCS #1 PEM), which
// kube-apiserver reads both as the service account signing key and, for
// its public half, as the verification key.
func writeRSAKey(file string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	return os.WriteFile(file, data, 0o600)
}

func randomToken(t testing.TB) string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// argValue returns the value following flag in args.
func argValue(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// logTail returns the last lines of a log file, indented, for an error.
func logTail(file string) string {
	const lines = 40
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	var tail []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		tail = append(tail, s.Text())
		if len(tail) > lines {
			tail = tail[1:]
		}
	}
	return fmt.Sprintf("\n--- the end of %s:\n    %s", file, strings.Join(tail, "\n    "))
}
