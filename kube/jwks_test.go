package kube

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/server"
)

// countingServer is an https server that counts the connections made to
// it: a fetch, or an attempt at one, is a connection.
type countingServer struct {
	*httptest.Server
	conns atomic.Int64
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func newCountingServer(t *testing.T) *countingServer {
	s := &countingServer{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"keys":[]}`)
	}))
	s.Listener = countingListener{Listener: s.Listener, n: &s.conns}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

// vakt fetches no URL a team chose unless the configuration grants its
// namespace that URL (kubernetes.grants jwksUris): a resource naming one
// outside its grants is refused, and nothing is fetched from it, while a
// granted one is fetched.
func TestKubeJWKSURIGrants(t *testing.T) {
	never, otherNS, granted := newCountingServer(t), newCountingServer(t), newCountingServer(t)
	e := newBareKubeEnv(t, "vakt", "team-a", "team-b")
	c, client := e.cluster, e.client
	cfgPath := filepath.Join(t.TempDir(), "vakt.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`issuer: http://127.0.0.1:8080
cluster: dev-gcp
kubernetes:
  enabled: true
  grants:
    - {namespaces: [team-b], jwksUris: [%q, %q]}
`, otherNS.URL+"/keys/", granted.URL+"/keys/")), 0o600); err != nil {
		t.Fatal(err)
	}
	key, _ := exchange.GenerateSigningKey("ES256")
	e.signer, _ = exchange.NewSigner(key)
	run := startKubeRun(t, cfgPath, e.signer, SourceConfig{Client: client}, false)
	e.cur, e.src = run.cur, run.src
	run.writeStatus(c.Config, client, "r1", quiet, nil)
	metrics := server.NewMetrics()
	server.AuthorityServices(run.cur, metrics, quiet)

	e.resource("team-b", "outside", fmt.Sprintf(`{"jwksUri":%q}`, never.URL+"/keys/jwks.json"))
	e.resource("team-a", "stranger", fmt.Sprintf(`{"jwksUri":%q}`, otherNS.URL+"/keys/jwks.json"))
	e.resource("team-b", "inside", fmt.Sprintf(`{"jwksUri":%q}`, granted.URL+"/keys/jwks.json"))
	e.until(10*time.Second, "the granted key set was never fetched", func() bool { return granted.conns.Load() > 0 })
	for _, want := range []struct{ ns, name, err string }{
		{"team-b", "outside", `is not allowed for namespace team-b`},
		{"team-a", "stranger", `is not allowed for namespace team-a`},
	} {
		st, ok := e.state(want.ns, want.name)
		if !ok || st.Reason != ReasonRefused || st.Served != 0 || !strings.Contains(st.Refused.Error(), want.err) {
			t.Errorf("%s/%s: %+v, want refused: %s", want.ns, want.name, st, want.err)
		}
	}
	if st, _ := e.state("team-b", "inside"); st.Served != 1 {
		t.Errorf("team-b/inside: %+v, want served", st)
	}
	if n, m := never.conns.Load(), otherNS.conns.Load(); n != 0 || m != 0 {
		t.Errorf("vakt reached URLs no grant allows: %d and %d connections", n, m)
	}
	// The granted fetch fails (the test server's certificate is nobody's):
	// the metrics say so, per application.
	e.until(10*time.Second, "the failing fetch never showed in the metrics", func() bool {
		rec := httptest.NewRecorder()
		metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body := rec.Body.String()
		return strings.Contains(body, `vakt_client_jwks_last_success_timestamp_seconds{application="dev-gcp:team-b:inside"} 0`) &&
			strings.Contains(body, `vakt_client_jwks_fetches_total{application="dev-gcp:team-b:inside",result="error"}`) &&
			!strings.Contains(body, `vakt_client_jwks_fetches_total{application="dev-gcp:team-b:inside",result="error"} 0`)
	})
	// And the application's status.
	e.until(30*time.Second, "the failing fetch never showed in the status", func() bool {
		c := e.condition("team-b", "inside", "Keys")
		return c != nil && c["status"] == "False" && c["reason"] == "FetchFailed" &&
			strings.Contains(fmt.Sprint(c["message"]), "the last fetch of "+granted.URL+"/keys/jwks.json failed")
	})
}
