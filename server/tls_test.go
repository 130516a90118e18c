package server

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/tlstest"
	"github.com/vakt-dev/vakt/internal/waittest"
)

// tlsEnv is vakt serving gRPC and HTTP over TLS with client certificates
// required, reloading its files as vakt serve does.
type tlsEnv struct {
	dir    string
	ca     *tlstest.CA
	client tls.Certificate
	sv     *served
}

func newTLSEnv(t *testing.T, require bool) *tlsEnv {
	e := &tlsEnv{dir: t.TempDir(), ca: tlstest.NewCA(t, "vakt test CA")}
	leaf := e.ca.Server(t, 2)
	tlstest.Write(t, e.dir, "tls.crt", leaf.CertPEM)
	tlstest.Write(t, e.dir, "tls.key", leaf.KeyPEM)
	tlstest.Write(t, e.dir, "ca.crt", e.ca.PEM)
	e.client = e.ca.Client(t, 10, "dev-gcp:istio-system:envoy").TLS(t)
	yaml := "issuer: https://127.0.0.1:8080\ncluster: dev-gcp\nlisten:\n  tls: {certFile: tls.crt, keyFile: tls.key, clientCAFile: ca.crt, requireClientCert: " + map[bool]string{true: "true", false: "false"}[require] + "}\n"
	cfgPath := filepath.Join(e.dir, "vakt.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	key, _ := exchange.GenerateSigningKey("ES256")
	signer, _ := exchange.NewSigner(key)
	cur := &Current{}
	loader := &Loader{Config: func() (*config.Config, error) { return config.LoadFile(cfgPath) }, Ephemeral: signer,
		Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{}), Logger: quiet}
	started, err := loader.Config()
	if err != nil {
		t.Fatal(err)
	}
	loader.Started = started
	rl := &Reloader{Current: cur, Build: loader.Build, Files: WatchedFiles(cfgPath, cur), Logger: quiet}
	ctx, cancel := context.WithCancel(context.Background())
	if err := rl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	done, err := rl.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-done })
	e.sv = serveOnLoopback(t, AuthorityServices(cur, nil, quiet).WithTLS(func() *config.TLS { return cur.Load().Config.Listen.TLS }))
	return e
}

// clientTLS is a client's TLS: vakt's CA, and the client certificate when
// withCert.
func (e *tlsEnv) clientTLS(withCert bool) *tls.Config {
	c := &tls.Config{RootCAs: e.ca.Pool(), ServerName: "localhost"}
	if withCert {
		c.Certificates = []tls.Certificate{e.client}
	}
	return c
}

// grpcHealth asks for health over TLS, and returns the server
// certificate's serial.
func (e *tlsEnv) grpcHealth(t *testing.T, withCert bool) (int64, error) {
	conn, err := grpc.NewClient(e.sv.grpc, grpc.WithTransportCredentials(credentials.NewTLS(e.clientTLS(withCert))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return 0, err
	}
	return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].SerialNumber.Int64(), nil
}

// httpsGet asks for /healthz over a new TLS connection, and returns the
// server certificate's serial.
func (e *tlsEnv) httpsGet(t *testing.T, c *tls.Config) (int64, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: c, DisableKeepAlives: true, ForceAttemptHTTP2: true}}
	resp, err := client.Get("https://" + e.sv.http[len("http://"):] + "/healthz")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz over TLS: %d", resp.StatusCode)
	}
	return resp.TLS.PeerCertificates[0].SerialNumber.Int64(), nil
}

// Under mutual TLS, a client with a certificate of the CA is served over
// gRPC and HTTP; one without is refused at the handshake, as are TLS 1.1
// and plaintext; a renewed certificate is served without a restart.
func TestTLSListeners(t *testing.T) {
	e := newTLSEnv(t, true)
	if serial, err := e.grpcHealth(t, true); err != nil || serial != 2 {
		t.Fatalf("gRPC with a client certificate: serial %d, %v", serial, err)
	}
	if serial, err := e.httpsGet(t, e.clientTLS(true)); err != nil || serial != 2 {
		t.Fatalf("HTTPS with a client certificate: serial %d, %v", serial, err)
	}
	if _, err := e.grpcHealth(t, false); err == nil {
		t.Fatal("gRPC without a client certificate was served")
	}
	if _, err := e.httpsGet(t, e.clientTLS(false)); err == nil {
		t.Fatal("HTTPS without a client certificate was served")
	}
	old := e.clientTLS(true)
	old.MaxVersion = tls.VersionTLS11
	if _, err := e.httpsGet(t, old); err == nil {
		t.Fatal("TLS 1.1 was served")
	}
	if _, err := e.sv.status(); err == nil {
		t.Fatal("plaintext gRPC was served")
	}
	if resp, err := testHTTP.Get(e.sv.http + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plaintext HTTP was served")
		}
	}

	// Renewed as cert-manager and kubelet do: the files replaced.
	renewed := e.ca.Server(t, 3)
	tlstest.Write(t, e.dir, "tls.key", renewed.KeyPEM)
	tlstest.Write(t, e.dir, "tls.crt", renewed.CertPEM)
	waittest.Until(t, 10*time.Second, "the renewed certificate was never served", func() bool {
		serial, err := e.httpsGet(t, e.clientTLS(true))
		return err == nil && serial == 3
	})
	if serial, err := e.grpcHealth(t, true); err != nil || serial != 3 {
		t.Fatalf("gRPC after the renewal: serial %d, %v", serial, err)
	}
}

// With client CAs but no requirement, a client without a certificate is
// served, and one with a certificate of another CA is refused.
func TestTLSClientCertOptional(t *testing.T) {
	e := newTLSEnv(t, false)
	if _, err := e.grpcHealth(t, false); err != nil {
		t.Fatalf("gRPC without a client certificate: %v", err)
	}
	stranger := tlstest.NewCA(t, "another CA").Client(t, 11, "stranger").TLS(t)
	c := e.clientTLS(false)
	// Sent whatever the server asks for (Go's client would otherwise keep
	// a certificate no acceptable CA issued to itself).
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &stranger, nil }
	if _, err := e.httpsGet(t, c); err == nil {
		t.Fatal("a certificate of another CA was accepted")
	}
}
