package server

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/agent"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/tlstest"
)

// The agent verifies a token endpoint over TLS against the CAs of
// --upstream-ca: served with them, refused (as an outage) without.
func TestAgentUpstreamCA(t *testing.T) {
	x := newExchangeEnv(t, nil)
	ca := tlstest.NewCA(t, "upstream CA")
	dir := t.TempDir()
	caFile := tlstest.Write(t, dir, "ca.crt", ca.PEM)
	endpoint := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"issued-over-tls","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":900}`))
	}))
	endpoint.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Server(t, 2).TLS(t)}}
	endpoint.StartTLS()
	t.Cleanup(endpoint.Close)

	k := x.keys[app1]
	envWith := func(caFile string) *agent.Env {
		return &agent.Env{
			ClientID: app1, Key: &exchange.SigningKey{ID: k.ID, Alg: k.Alg, Private: k.Private},
			TokenEndpoint: endpoint.URL + "/token", Issuer: x.issuer, WellKnownURL: x.issuer + "/.well-known/oauth-authorization-server",
			UpstreamCAFile: caFile,
		}
	}
	user := x.idp.Token(x.idp.Claims(time.Now(), ""))
	with := serveAgent(t, x, envWith(caFile), quiet)
	res, err := with.exchange.Exchange(context.Background(), &vaktv1.ExchangeRequest{SubjectToken: user, Audience: appB})
	if err != nil || res.GetAccessToken() != "issued-over-tls" {
		t.Fatalf("with the CA: %v %v", res, err)
	}
	without := serveAgent(t, x, envWith(""), quiet)
	_, err = without.exchange.Exchange(context.Background(), &vaktv1.ExchangeRequest{SubjectToken: user, Audience: appB})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("an endpoint whose certificate no CA verifies: %v", err)
	}
	if _, err := NewAgentRuntime(context.Background(), envWith(dir+"/nope.crt"), quiet, nil); err == nil {
		t.Fatal("a missing --upstream-ca file was accepted")
	}
}
