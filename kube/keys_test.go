package kube

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/vakt-dev/vakt/agent"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/kubetest"
	"github.com/vakt-dev/vakt/server"
)

// keysEnv is a cluster and vakt replicas serving it, each with its own
// listeners, informers and status writer (which makes client keys while
// its replica holds the lease). The issuer is the first replica's HTTP
// address; the others take client assertions for it too.
type keysEnv struct {
	*kenv
	idp      *idptest.Issuer
	issuer   string
	cfgPath  string
	replicas map[string]*keysReplica
	signer   *exchange.Signer
	// skew moves the replicas' clock (and the test's assertions) ahead.
	skew atomic.Int64
}

// now is the replicas' clock.
func (e *keysEnv) now() time.Time { return time.Now().Add(time.Duration(e.skew.Load())) }

type keysReplica struct {
	cur      *server.Current
	src      *Source
	listen   *server.Listeners
	exchange vaktv1.TokenExchangeServiceClient
	logs     *lockedBuffer
	stop     func()
}

// newKeysEnv starts a replica for each identity; "" is one with no status
// writer.
func newKeysEnv(t *testing.T, identities ...string) *keysEnv {
	return newKeysEnvWith(t, nil, identities...)
}

// newKeysEnvWith is newKeysEnv on a cluster started with opts.
func newKeysEnvWith(t *testing.T, opts []kubetest.Option, identities ...string) *keysEnv {
	c := kubetest.Start(t, opts...)
	client, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	e := &keysEnv{kenv: &kenv{t: t, cluster: c, client: client, apps: client.Resource(applicationsGVR)},
		idp: idptest.NewIssuer(t, "RS256"), replicas: map[string]*keysReplica{}}
	e.installCRD("../deploy/kubernetes/crds/applications.vakt.dev.yaml")
	e.installCRD("../deploy/kubernetes/crds/jwkers.nais.io.yaml")
	for _, ns := range []string{"vakt", "team-a", "team-b", "myteam"} {
		e.namespace(ns)
	}
	listeners := make([]*server.Listeners, len(identities))
	var aliases []string
	for i := range identities {
		if listeners[i], err = server.Listen("127.0.0.1:0", "127.0.0.1:0", ""); err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			aliases = append(aliases, fmt.Sprintf("%q", "http://"+listeners[i].HTTP.Addr().String()+"/token"))
		}
	}
	e.issuer = "http://" + listeners[0].HTTP.Addr().String()
	e.cfgPath = filepath.Join(t.TempDir(), "vakt.yaml")
	if err := os.WriteFile(e.cfgPath, []byte(`issuer: `+e.issuer+`
cluster: dev-gcp
tokenEndpointAliases: [`+strings.Join(aliases, ", ")+`]
identityProviders:
  - name: idporten
    issuer: `+e.idp.URL+`
    jwksUri: `+e.idp.JWKSURI()+`
kubernetes:
  enabled: true
  grants:
    - {namespaceSelector: {}, hosts: ["*.example"]}
  jwkers: true
  keyOverlap: 1h
`), 0o600); err != nil {
		t.Fatal(err)
	}
	key, _ := exchange.GenerateSigningKey("ES256")
	e.signer, _ = exchange.NewSigner(key)
	for i, id := range identities {
		e.replicas[id] = e.startReplica(id, listeners[i])
	}
	return e
}

func (e *keysEnv) startReplica(identity string, ls *server.Listeners) *keysReplica {
	t := e.t
	r := &keysReplica{listen: ls, logs: &lockedBuffer{}}
	run := startKubeRunAt(t, e.cfgPath, e.signer, SourceConfig{Client: e.client, Jwkers: true, KeysNamespace: "vakt"}, false, e.now)
	r.cur, r.src = run.cur, run.src
	if identity != "" {
		run.writeStatus(e.cluster.Config, e.client, identity, slog.New(slog.NewJSONHandler(r.logs, nil)), nil)
	}
	served := make(chan error, 1)
	go func() {
		served <- server.Serve(run.ctx, server.AuthorityServices(r.cur, server.NewMetrics(), quiet), ls)
	}()
	conn, err := grpc.NewClient(ls.GRPC.Addr().String(), testDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	r.exchange = vaktv1.NewTokenExchangeServiceClient(conn)
	var once sync.Once
	r.stop = func() { once.Do(func() { run.stop(); <-served; conn.Close() }) }
	t.Cleanup(r.stop)
	return r
}

// secret is a Secret's data, decoded; nil when there is none.
func (e *keysEnv) secret(ns, name string) (map[string]string, *unstructured.Unstructured) {
	u, err := e.client.Resource(secretsGVR).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, nil
	}
	data, _, _ := unstructured.NestedStringMap(u.Object, "data")
	out := map[string]string{}
	for k, v := range data {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			e.t.Fatalf("%s: %v", k, err)
		}
		out[k] = string(b)
	}
	return out, u
}

// secretKey is the private key a Secret holds.
func (e *keysEnv) secretKey(ns, name string) *exchange.SigningKey {
	data, _ := e.secret(ns, name)
	if data == nil {
		return nil
	}
	k, err := exchange.ParsePrivateJWK([]byte(data["TOKEN_X_PRIVATE_JWK"]))
	if err != nil {
		e.t.Fatalf("TOKEN_X_PRIVATE_JWK: %v", err)
	}
	return k
}

// published is what vakt published of an object's keys: the kids in
// order, and the whole record (an Application's status, a Jwker's
// ConfigMap in vakt's namespace).
func (e *keysEnv) published(gvr schema.GroupVersionResource, ns, name string) ([]string, publishedKeys) {
	u, err := e.client.Resource(gvr).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, publishedKeys{}
	}
	b := applicationPublished(u)
	if gvr == jwkersGVR {
		cm, err := e.client.Resource(configMapsGVR).Namespace("vakt").Get(context.Background(), recordName(string(u.GetUID())), metav1.GetOptions{})
		if err != nil {
			return nil, publishedKeys{}
		}
		v, _, _ := unstructured.NestedString(cm.Object, "data", recordKey)
		b = []byte(v)
	}
	var p publishedKeys
	if b != nil {
		if err := json.Unmarshal(b, &p); err != nil {
			e.t.Fatal(err)
		}
	}
	kids := kidsOf(jwks(p.Keys))
	return kids, p
}

// served is the kids a replica's runtime holds for an application.
func (r *keysReplica) served(kind, ns, name string) []string {
	rt := r.src.Served()
	if rt == nil {
		return nil
	}
	for _, st := range rt.States {
		if st.Resource.Kind == kind && st.Resource.Namespace == ns && st.Resource.Name == name {
			return st.KeyIDs
		}
	}
	return nil
}

// leader is the holder of the lease.
func (e *keysEnv) leader() string {
	l, err := e.client.Resource(schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}).Namespace("vakt").
		Get(context.Background(), "vakt-status", metav1.GetOptions{})
	if err != nil {
		return ""
	}
	h, _, _ := unstructured.NestedString(l.Object, "spec", "holderIdentity")
	return h
}

// exchangeAs exchanges a user's token for target at replica r, as client
// with key: the error's text, "" when a token came back.
func (e *keysEnv) exchangeAs(r *keysReplica, client string, key *exchange.SigningKey, target string) string {
	e.t.Helper()
	now := e.now()
	assertion := idptest.Sign(e.t, &idptest.Key{ID: key.ID, Alg: key.Alg, Private: key.Private}, key.Alg,
		map[string]any{"alg": key.Alg, "kid": key.ID, "typ": "JWT"},
		map[string]any{"iss": client, "sub": client, "aud": e.issuer + "/token", "jti": fmt.Sprintf("jti-%d", now.UnixNano()),
			"iat": now.Unix(), "exp": now.Add(30 * time.Second).Unix()})
	res, err := r.exchange.Exchange(context.Background(), &vaktv1.ExchangeRequest{
		GrantType: exchange.GrantTypeTokenExchange, ClientAssertionType: exchange.ClientAssertionTypeJWT, ClientAssertion: assertion,
		SubjectTokenType: exchange.TokenTypeJWT, SubjectToken: e.idp.Token(e.idp.Claims(now, "")), Audience: target,
	})
	if err != nil {
		return err.Error()
	}
	if res.AccessToken == "" {
		return "no token"
	}
	return ""
}

func (l *lockedBuffer) has(msg string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.b.String(), `"msg":"`+msg+`"`)
}

// An Application with secretName gets its client key from the elected
// replica: a Secret with the variables NAIS injects, owned by the
// resource, and the public key in its status, which every replica serves.
// vakt agent started from that Secret exchanges. The leader stopped, the
// other replica takes over: a rotation asked by annotation makes a new key,
// and the old one stays valid for the overlap. A secretName naming a
// Secret vakt did not make is refused, and the Secret left alone.
func TestKubeClientKeys(t *testing.T) {
	e := newKeysEnv(t, "r1", "r2")
	r1, r2 := e.replicas["r1"], e.replicas["r2"]
	e.apply(applicationsGVR, "team-b", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-b","namespace":"team-b"},
		"spec":{"accessPolicy":{"inbound":{"rules":[{"application":"app-1","namespace":"team-a"}]}}}}`)
	e.apply(applicationsGVR, "team-a", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-1","namespace":"team-a"},
		"spec":{"secretName":"app-1-tokenx"}}`)

	var kid string
	e.until(30*time.Second, "no key made, published and served by both replicas", func() bool {
		k := e.secretKey("team-a", "app-1-tokenx")
		if k == nil {
			return false
		}
		kid = k.ID
		kids, _ := e.published(applicationsGVR, "team-a", "app-1")
		return slices.Equal(kids, []string{kid}) && slices.Equal(r1.served(config.KindApplication, "team-a", "app-1"), kids) &&
			slices.Equal(r2.served(config.KindApplication, "team-a", "app-1"), kids)
	})
	data, sec := e.secret("team-a", "app-1-tokenx")
	app1, err := e.apps.Namespace("team-a").Get(context.Background(), "app-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"TOKEN_X_CLIENT_ID":      "dev-gcp:team-a:app-1",
		"TOKEN_X_ISSUER":         e.issuer,
		"TOKEN_X_JWKS_URI":       e.issuer + "/jwks",
		"TOKEN_X_TOKEN_ENDPOINT": e.issuer + "/token",
		"TOKEN_X_WELL_KNOWN_URL": e.issuer + "/.well-known/oauth-authorization-server",
	}
	for k, v := range want {
		if data[k] != v {
			t.Errorf("%s = %q, want %q", k, data[k], v)
		}
	}
	if len(data) != len(want)+1 {
		t.Errorf("the Secret holds %d variables, want %d", len(data), len(want)+1)
	}
	if owners := sec.GetOwnerReferences(); len(owners) != 1 || owners[0].UID != app1.GetUID() || owners[0].Kind != "Application" {
		t.Errorf("owners %+v, want the Application %s", owners, app1.GetUID())
	}
	if l := sec.GetLabels(); l["app"] != "app-1" || l["type"] != "jwker.nais.io" || l["app.kubernetes.io/managed-by"] != "vakt" {
		t.Errorf("labels %v", l)
	}
	e.until(10*time.Second, "no ClientKey condition True", func() bool {
		c := e.condition("team-a", "app-1", "ClientKey")
		return c != nil && c["status"] == "True" && strings.Contains(fmt.Sprint(c["message"]), kid)
	})

	// vakt agent, from the Secret's variables and nothing else about vakt.
	env, err := agent.EnvFrom(func(k string) string { return data[k] })
	if err != nil {
		t.Fatal(err)
	}
	a := serveAgent(t, env)
	res, err := a.exchange.Exchange(context.Background(), &vaktv1.ExchangeRequest{SubjectToken: e.idp.Token(e.idp.Claims(time.Now(), "")), Audience: "dev-gcp:team-b:app-b"})
	if err != nil || res.AccessToken == "" {
		t.Fatalf("the agent's exchange: %v %v", res, err)
	}

	// The target's rules, changed, are enforced by Exchange as they are by
	// Check: about as fast (the latency is logged; the bound is generous).
	old0 := e.secretKey("team-a", "app-1-tokenx")
	changed := time.Now()
	e.apply(applicationsGVR, "team-b", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-b","namespace":"team-b"},"spec":{"hosts":["app-b.example"]}}`)
	e.until(5*time.Second, "the removed rule was never enforced by Exchange", func() bool {
		return strings.Contains(e.exchangeAs(r1, "dev-gcp:team-a:app-1", old0, "dev-gcp:team-b:app-b"), "token exchange audience is invalid")
	})
	t.Logf("rule removed → exchange refused in %v", time.Since(changed).Round(time.Millisecond))
	e.apply(applicationsGVR, "team-b", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-b","namespace":"team-b"},
		"spec":{"accessPolicy":{"inbound":{"rules":[{"application":"app-1","namespace":"team-a"}]}}}}`)
	e.until(5*time.Second, "the rule put back was never enforced by Exchange", func() bool {
		return e.exchangeAs(r1, "dev-gcp:team-a:app-1", old0, "dev-gcp:team-b:app-b") == ""
	})

	// One replica made the key; both enforce with it.
	leader := e.leader()
	other := map[string]string{"r1": "r2", "r2": "r1"}[leader]
	if leader == "" || other == "" {
		t.Fatalf("the lease is held by %q", leader)
	}
	if !e.replicas[leader].logs.has("kubernetes: made a client key") || e.replicas[other].logs.has("kubernetes: made a client key") {
		t.Errorf("the key was not made by the leader (%s) alone", leader)
	}
	old := e.secretKey("team-a", "app-1-tokenx")
	for id, r := range e.replicas {
		if msg := e.exchangeAs(r, "dev-gcp:team-a:app-1", old, "dev-gcp:team-b:app-b"); msg != "" {
			t.Errorf("%s: %s", id, msg)
		}
	}

	// The leader stopped, the other makes the next key: a rotation.
	e.replicas[leader].stop()
	survivor := e.replicas[other]
	e.until(15*time.Second, "the other replica never took the lease", func() bool { return e.leader() == other })
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"2026-11-23T18:00:00Z"}}}`, AnnotationRotateKey)
	if _, err := e.apps.Namespace("team-a").Patch(context.Background(), "app-1", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	var rec publishedKeys
	e.until(30*time.Second, "no new key after the rotation", func() bool {
		k := e.secretKey("team-a", "app-1-tokenx")
		var kids []string
		kids, rec = e.published(applicationsGVR, "team-a", "app-1")
		return k != nil && k.ID != old.ID && slices.Equal(kids, []string{k.ID, old.ID}) &&
			slices.Equal(survivor.served(config.KindApplication, "team-a", "app-1"), kids)
	})
	if len(rec.RetiredKeys) != 1 || rec.RetiredKeys[0].Kid != old.ID || rec.Rotation != "2026-11-23T18:00:00Z" ||
		rec.RetiredKeys[0].Until.Before(time.Now().Add(55*time.Minute)) || rec.RetiredKeys[0].Until.After(time.Now().Add(time.Hour)) {
		t.Errorf("published %+v, want %s retired for the 1h overlap, the rotation honoured", rec, old.ID)
	}
	if !survivor.logs.has("kubernetes: made a client key") {
		t.Error("the new leader did not log the key it made")
	}
	for name, k := range map[string]*exchange.SigningKey{"new": e.secretKey("team-a", "app-1-tokenx"), "replaced, within the overlap": old} {
		if msg := e.exchangeAs(survivor, "dev-gcp:team-a:app-1", k, "dev-gcp:team-b:app-b"); msg != "" {
			t.Errorf("the %s key: %s", name, msg)
		}
	}

	// A Secret vakt did not make for the resource is never overwritten:
	// one without vakt's label, one with it but no owner (a label is
	// anyone's to set), and another application's.
	e.apply(secretsGVR, "team-a", `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"taken","namespace":"team-a"},"stringData":{"password":"hunter2"}}`)
	e.apply(secretsGVR, "team-a", `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"labelled","namespace":"team-a",
		"labels":{"app.kubernetes.io/managed-by":"vakt"}},"stringData":{"password":"hunter2"}}`)
	for app, secret := range map[string]string{"app-c": "taken", "app-d": "labelled", "app-e": "app-1-tokenx"} {
		e.apply(applicationsGVR, "team-a", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"`+app+`","namespace":"team-a"},
		"spec":{"secretName":"`+secret+`"}}`)
	}
	for app, why := range map[string]string{"app-c": "was not made by vakt", "app-d": "for another resource", "app-e": "for another resource"} {
		e.until(20*time.Second, "no ClientKey False for "+app, func() bool {
			c := e.condition("team-a", app, "ClientKey")
			return c != nil && c["status"] == "False" && c["reason"] == "Failed" && strings.Contains(fmt.Sprint(c["message"]), why)
		})
	}
	for _, name := range []string{"taken", "labelled"} {
		if d, _ := e.secret("team-a", name); len(d) != 1 || d["password"] != "hunter2" {
			t.Errorf("Secret %s was changed: %v", name, d)
		}
	}
	if d, _ := e.secret("team-a", "app-1-tokenx"); d["TOKEN_X_CLIENT_ID"] != "dev-gcp:team-a:app-1" {
		t.Errorf("app-1's Secret was taken: %v", d["TOKEN_X_CLIENT_ID"])
	}
	if msg := e.exchangeAs(survivor, "dev-gcp:team-a:app-1", e.secretKey("team-a", "app-1-tokenx"), "dev-gcp:team-b:app-b"); msg != "" {
		t.Errorf("app-1, after app-e named its Secret: %s", msg)
	}
}

// condition is a condition of an Application's status.
func (e *kenv) condition(ns, name, typ string) map[string]any {
	u, err := e.apps.Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == typ {
			return m
		}
	}
	return nil
}

// NAIS's own example, unchanged: the Jwker naiserator makes of the
// documented application's accessPolicy, and a Jwker for one of the
// applications it lets in. vakt makes each a key and writes their status
// in NAIS's fields; the caller's agent, from its Secret, exchanges for
// the documented application, and an application its rules do not name is
// refused.
func TestKubeNAISJwkers(t *testing.T) {
	e := newKeysEnv(t, "r1")
	r1 := e.replicas["r1"]
	jwkers := e.client.Resource(jwkersGVR)
	spec, err := os.ReadFile("../config/testdata/nais-docs-jwker.json")
	if err != nil {
		t.Fatal(err)
	}
	e.apply(jwkersGVR, "myteam", `{"apiVersion":"nais.io/v1","kind":"Jwker","metadata":{"name":"myapplication","namespace":"myteam"},"spec":`+string(spec)+`}`)
	for _, name := range []string{"app1", "app7"} {
		e.apply(jwkersGVR, "myteam", fmt.Sprintf(`{"apiVersion":"nais.io/v1","kind":"Jwker","metadata":{"name":%q,"namespace":"myteam"},
			"spec":{"accessPolicy":{},"secretName":"tokenx-%s-1"}}`, name, name))
	}
	status := func(name string) map[string]any {
		u, err := jwkers.Namespace("myteam").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		st, _, _ := unstructured.NestedMap(u.Object, "status")
		return st
	}
	e.until(30*time.Second, "no NAIS status for app1", func() bool {
		st := status("app1")
		k := e.secretKey("myteam", "tokenx-app1-1")
		return st != nil && k != nil && st["synchronizationState"] == "RolloutComplete" && fmt.Sprint(st["keyIDs"]) == "["+k.ID+"]"
	})
	st := status("app1")
	if st["clientID"] != "dev-gcp:myteam:app1" || st["synchronizationSecretName"] != "tokenx-app1-1" || st["observedGeneration"] != int64(1) ||
		st["synchronizationTimestamp"] == nil {
		t.Errorf("status %v", st)
	}
	e.until(30*time.Second, "no key served for app7", func() bool { return len(r1.served(config.KindJwker, "myteam", "app7")) == 1 })

	data, _ := e.secret("myteam", "tokenx-app1-1")
	env, err := agent.EnvFrom(func(k string) string { return data[k] })
	if err != nil {
		t.Fatal(err)
	}
	a := serveAgent(t, env)
	res, err := a.exchange.Exchange(context.Background(), &vaktv1.ExchangeRequest{SubjectToken: e.idp.Token(e.idp.Claims(time.Now(), "")), Audience: "dev-gcp:myteam:myapplication"})
	if err != nil || res.AccessToken == "" {
		t.Fatalf("app1's agent, for myapplication: %v %v", res, err)
	}
	if msg := e.exchangeAs(r1, "dev-gcp:myteam:app7", e.secretKey("myteam", "tokenx-app7-1"), "dev-gcp:myteam:myapplication"); !strings.Contains(msg, "PermissionDenied desc = token exchange audience is invalid") {
		t.Errorf("app7, which the rules do not name: %q", msg)
	}

	// Keys a team writes on its Jwker are nothing to vakt: only vakt's
	// record, in vakt's namespace, is read.
	forged, _ := exchange.GenerateSigningKey("RS256")
	pub, _ := exchange.PublicJWK(forged)
	rec, _ := json.Marshal(publishedKeys{Keys: json.RawMessage(`{"keys":[` + string(pub) + `]}`), RetiredKeys: []retiredKey{{Kid: forged.ID, Until: time.Now().Add(1000 * time.Hour)}}})
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{"vakt.dev/keys": string(rec)}}})
	patched, err := jwkers.Namespace("myteam").Patch(context.Background(), "app1", types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Once r1 has seen the patch (its informer at the patch's version, or
	// later: the API server's versions grow) and reloaded since, the
	// forged keys would be in force if vakt read them.
	patchedAt, _ := strconv.ParseUint(patched.GetResourceVersion(), 10, 64)
	e.until(10*time.Second, "r1 never saw the patched Jwker", func() bool {
		u, ok := r1.src.object(config.KindJwker, "myteam", "app1")
		if !ok {
			return false
		}
		seen, err := strconv.ParseUint(u.GetResourceVersion(), 10, 64)
		return err == nil && seen >= patchedAt
	})
	before := r1.cur.Load()
	r1.src.onChange()
	e.until(10*time.Second, "r1 never reloaded", func() bool { return r1.cur.Load() != before })
	if msg := e.exchangeAs(r1, "dev-gcp:myteam:app1", forged, "dev-gcp:myteam:myapplication"); !strings.Contains(msg, "Unauthenticated") {
		t.Errorf("a key a team wrote on its Jwker: %q", msg)
	}
}

// The keys a Jwker's earlier secretName held stay valid for the overlap
// (NAIS rotates by naming a new Secret at each deployment), then are
// dropped with their Secret; rotations asked in a burst keep at most
// maxRetiredKeys replaced keys. The elected replica's provisioner, on a
// clock of the test's.
func TestKubeKeyOverlap(t *testing.T) {
	e := newKeysEnv(t, "")
	r := e.replicas[""]
	clock := time.Now()
	p := newKeyProvisioner(e.client, r.src, "vakt", quiet)
	p.now = func() time.Time { return clock }
	ctx := context.Background()
	key := config.KindJwker + "/team-a/app-x"
	jwker := func(secret string) {
		e.apply(jwkersGVR, "team-a", `{"apiVersion":"nais.io/v1","kind":"Jwker","metadata":{"name":"app-x","namespace":"team-a"},"spec":{"accessPolicy":{},"secretName":"`+secret+`"}}`)
		e.until(10*time.Second, "the Jwker never served with "+secret, func() bool {
			for _, st := range r.src.Served().States {
				if st.Resource.Name == "app-x" && st.SecretName == secret {
					return true
				}
			}
			return false
		})
	}
	// provision reconciles the Jwker's key (syncKey, what the elected
	// replica's queue runs for it) until the runtime serves keys as
	// published: n of them.
	provision := func(n int) []string {
		t.Helper()
		var kids []string
		e.until(10*time.Second, fmt.Sprintf("never %d keys served", n), func() bool {
			if _, _ = p.syncKey(ctx, key); len(p.problems) > 0 {
				t.Fatalf("problems: %v", p.problems)
			}
			kids, _ = e.published(jwkersGVR, "team-a", "app-x")
			served := r.served(config.KindJwker, "team-a", "app-x")
			return len(kids) == n && slices.Equal(served, kids)
		})
		return kids
	}

	jwker("tokenx-app-x-1")
	k1 := provision(1)
	if k := e.secretKey("team-a", "tokenx-app-x-1"); k == nil || k.ID != k1[0] {
		t.Fatalf("the Secret holds %v, the Jwker publishes %v", k, k1)
	}
	// naiserator writes the Jwker whole (an update, not an apply): its
	// annotations go, and the secretName is new.
	u, err := e.client.Resource(jwkersGVR).Namespace("team-a").Get(ctx, "app-x", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.SetAnnotations(nil)
	u.SetManagedFields(nil)
	if err := unstructured.SetNestedField(u.Object, "tokenx-app-x-2", "spec", "secretName"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Resource(jwkersGVR).Namespace("team-a").Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	jwker("tokenx-app-x-2")
	k2 := provision(2)
	if k := e.secretKey("team-a", "tokenx-app-x-2"); k == nil || k.ID != k2[0] || k2[1] != k1[0] {
		t.Fatalf("after the new secretName: %v, the new Secret holds %v", k2, k)
	}
	_, rec := e.published(jwkersGVR, "team-a", "app-x")
	if len(rec.RetiredKeys) != 1 || rec.RetiredKeys[0].SecretName != "tokenx-app-x-1" || !rec.RetiredKeys[0].Until.Equal(clock.Add(time.Hour).UTC().Truncate(time.Second)) {
		t.Fatalf("retired %+v", rec.RetiredKeys)
	}
	// Within the overlap both Secrets stay; after it, the old key and its
	// Secret go.
	clock = clock.Add(59 * time.Minute)
	_, _ = p.syncKey(ctx, key)
	if d, _ := e.secret("team-a", "tokenx-app-x-1"); d == nil {
		t.Fatal("the earlier Secret was deleted within the overlap")
	}
	clock = clock.Add(2 * time.Minute)
	if kids := provision(1); kids[0] != k2[0] {
		t.Fatalf("after the overlap: %v, want %v", kids, k2[:1])
	}
	if d, _ := e.secret("team-a", "tokenx-app-x-1"); d != nil {
		t.Fatal("the earlier Secret outlived its key")
	}

	// A burst of rotations: one a minute (keyEvery), at most
	// maxRetiredKeys replaced keys kept.
	for i := range 6 {
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"burst-%d"}}}`, AnnotationRotateKey, i)
		if _, err := e.client.Resource(jwkersGVR).Namespace("team-a").Patch(ctx, "app-x", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		e.until(10*time.Second, "the informer never saw the annotation", func() bool {
			got, ok := r.src.lookup(config.KindJwker, "team-a", "app-x")
			return ok && got.RotateKey == fmt.Sprintf("burst-%d", i)
		})
		if i > 0 {
			before, _ := e.published(jwkersGVR, "team-a", "app-x")
			_, _ = p.syncKey(ctx, key)
			if after, _ := e.published(jwkersGVR, "team-a", "app-x"); !slices.Equal(before, after) {
				t.Fatalf("rotation %d within %v of the one before: %v, was %v", i, keyEvery, after, before)
			}
			clock = clock.Add(keyEvery)
		}
		provision(min(i+2, 1+maxRetiredKeys))
	}
	if _, rec := e.published(jwkersGVR, "team-a", "app-x"); rec.Rotation != "burst-5" || len(rec.RetiredKeys) != maxRetiredKeys {
		t.Errorf("after the burst: %+v", rec)
	}
}

// A new key is published before it is written to the Secret: while it
// cannot be published, the Secret keeps the key in force, and the key made
// for the rotation is kept for the next try, not made again.
func TestKubeKeyPublishedFirst(t *testing.T) {
	e := newKeysEnvWith(t, []kubetest.Option{kubetest.WithUser("prov")}, "")
	r := e.replicas[""]
	ctx := context.Background()
	e.apply(applicationsGVR, "team-a", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-r","namespace":"team-a"},"spec":{"secretName":"app-r-tokenx"}}`)
	e.until(10*time.Second, "app-r never served", func() bool {
		for _, st := range r.src.Served().States {
			if st.Resource.Name == "app-r" && st.SecretName != "" {
				return true
			}
		}
		return false
	})
	admin := newKeyProvisioner(e.client, r.src, "vakt", quiet)
	key := config.KindApplication + "/team-a/app-r"
	e.until(10*time.Second, "no first key", func() bool {
		_, _ = admin.syncKey(ctx, key)
		return len(r.served(config.KindApplication, "team-a", "app-r")) == 1
	})
	first := e.secretKey("team-a", "app-r-tokenx")
	// A replica newly elected, whose account may not read anything yet,
	// takes the complete record as done: no read at once, so no problem.
	none, err := dynamic.NewForConfig(e.cluster.TokenFor(t, "prov"))
	if err != nil {
		t.Fatal(err)
	}
	e.until(10*time.Second, "the informer never saw the record", func() bool {
		got, ok := r.src.lookup(config.KindApplication, "team-a", "app-r")
		return ok && len(got.Published) > 0
	})
	fresh := newKeyProvisioner(none, r.src, "vakt", quiet)
	_, _ = fresh.syncKey(ctx, key)
	if d, ok := fresh.done[key]; !ok || fresh.problem(key) != "" || d.due.After(time.Now().Add(keyResync)) {
		t.Fatalf("a new leader's first pass over a settled key: done %v %v, problem %q", d, ok, fresh.problem(key))
	}

	rbac := func(resource, object string) {
		e.apply(schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: resource}, "", object)
	}
	rules := `{"apiGroups":["vakt.dev"],"resources":["applications"],"verbs":["get"]},{"apiGroups":[""],"resources":["secrets"],"verbs":["get","create","update"]}`
	rbac("clusterroles", `{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"prov"},"rules":[`+rules+`]}`)
	rbac("clusterrolebindings", `{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"prov"},
		"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"prov"},"subjects":[{"kind":"User","name":"prov"}]}`)
	p := newKeyProvisioner(none, r.src, "vakt", quiet)
	clock := time.Now()
	p.now = func() time.Time { return clock }
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"r1"}}}`, AnnotationRotateKey)
	if _, err := e.apps.Namespace("team-a").Patch(ctx, "app-r", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	e.until(10*time.Second, "the informer never saw the annotation", func() bool {
		got, ok := r.src.lookup(config.KindApplication, "team-a", "app-r")
		return ok && got.RotateKey == "r1"
	})
	e.until(10*time.Second, "publishing was never refused", func() bool {
		_, _ = p.syncKey(ctx, key)
		return strings.Contains(p.problem(key), "publishing the keys: Forbidden (HTTP 403)")
	})
	var pending string
	for range 3 {
		clock = clock.Add(10 * time.Minute) // the backoff is the queue's: each syncKey tries
		_, _ = p.syncKey(ctx, key)
		if k := e.secretKey("team-a", "app-r-tokenx"); k.ID != first.ID {
			t.Fatalf("the Secret holds %s, not yet published", k.ID)
		}
		for _, k := range p.pending {
			if pending != "" && k.key.ID != pending {
				t.Fatalf("a second key (%s) made for one rotation (%s)", k.key.ID, pending)
			}
			pending = k.key.ID
		}
	}
	rbac("clusterroles", `{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"prov"},"rules":[`+rules+
		`,{"apiGroups":["vakt.dev"],"resources":["applications/status"],"verbs":["patch"]}]}`)
	e.until(20*time.Second, "granted, the rotation never completed", func() bool {
		clock = clock.Add(10 * time.Minute)
		_, _ = p.syncKey(ctx, key)
		kids, rec := e.published(applicationsGVR, "team-a", "app-r")
		return slices.Equal(kids, []string{pending, first.ID}) && rec.Rotation == "r1"
	})
	if k := e.secretKey("team-a", "app-r-tokenx"); k.ID != pending {
		t.Errorf("the Secret holds %s, want the key published, %s", k.ID, pending)
	}
	if p.problem(key) != "" {
		t.Errorf("a problem left: %s", p.problem(key))
	}

	// secretName removed: the keys vakt published and its Secret go.
	e.apply(applicationsGVR, "team-a", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-r","namespace":"team-a"},"spec":{"hosts":["app-r.example"]}}`)
	e.until(20*time.Second, "the keys outlived secretName", func() bool {
		_, _ = admin.syncKey(ctx, key)
		kids, _ := e.published(applicationsGVR, "team-a", "app-r")
		d, _ := e.secret("team-a", "app-r-tokenx")
		return len(kids) == 0 && d == nil
	})
}

// A replaced key stops being accepted at its until by every replica's own
// clock, leader or not, with no one to write anything: the API server
// stopped, the clock moved past the overlap, the old key is refused by
// both replicas and the new one still accepted.
func TestKubeKeyExpiresOnEveryReplica(t *testing.T) {
	e := newKeysEnv(t, "r1", "r2")
	e.apply(applicationsGVR, "team-b", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-b","namespace":"team-b"},
		"spec":{"accessPolicy":{"inbound":{"rules":[{"application":"app-1","namespace":"team-a"}]}}}}`)
	e.apply(applicationsGVR, "team-a", `{"apiVersion":"vakt.dev/v1alpha1","kind":"Application","metadata":{"name":"app-1","namespace":"team-a"},
		"spec":{"secretName":"app-1-tokenx"}}`)
	served := func(kids []string) bool {
		for _, r := range e.replicas {
			if !slices.Equal(r.served(config.KindApplication, "team-a", "app-1"), kids) {
				return false
			}
		}
		return true
	}
	var old *exchange.SigningKey
	e.until(30*time.Second, "no key served by both replicas", func() bool {
		old = e.secretKey("team-a", "app-1-tokenx")
		return old != nil && served([]string{old.ID})
	})
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"expiry"}}}`, AnnotationRotateKey)
	if _, err := e.apps.Namespace("team-a").Patch(context.Background(), "app-1", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	var cur *exchange.SigningKey
	e.until(30*time.Second, "the rotated keys never served by both replicas", func() bool {
		cur = e.secretKey("team-a", "app-1-tokenx")
		return cur != nil && cur.ID != old.ID && served([]string{cur.ID, old.ID})
	})
	_, rec := e.published(applicationsGVR, "team-a", "app-1")
	if len(rec.RetiredKeys) != 1 || rec.RetiredKeys[0].Kid != old.ID {
		t.Fatalf("retired %+v", rec.RetiredKeys)
	}
	until := rec.RetiredKeys[0].Until

	e.cluster.StopAPIServer(t)
	defer e.cluster.StartAPIServer(t)
	for id, r := range e.replicas {
		for name, k := range map[string]*exchange.SigningKey{"replaced, within the overlap": old, "new": cur} {
			if msg := e.exchangeAs(r, "dev-gcp:team-a:app-1", k, "dev-gcp:team-b:app-b"); msg != "" {
				t.Errorf("%s, the %s key: %s", id, name, msg)
			}
		}
	}
	e.skew.Store(int64(time.Until(until) + time.Second))
	for id, r := range e.replicas {
		if msg := e.exchangeAs(r, "dev-gcp:team-a:app-1", old, "dev-gcp:team-b:app-b"); !strings.Contains(msg, "Unauthenticated") {
			t.Errorf("%s, the replaced key past its until: %q, want it refused", id, msg)
		}
		if msg := e.exchangeAs(r, "dev-gcp:team-a:app-1", cur, "dev-gcp:team-b:app-b"); msg != "" {
			t.Errorf("%s, the new key past the old one's until: %s", id, msg)
		}
	}
}

// A Jwker's version that serves is recorded in vakt's namespace, as an
// Application's is in its status (TestKubeServedVersionRecorded): a replica
// started while the Jwker's newest version is refused serves the recorded
// one, as the replicas that saw it serve do. The record goes with the
// Jwker.
func TestKubeJwkerServedVersionRecorded(t *testing.T) {
	e := newKeysEnv(t, "r1")
	leader := e.replicas["r1"]
	ctx := context.Background()
	state := func(src *Source) State {
		if s := src.Served(); s != nil {
			for _, st := range s.States {
				if st.Resource.Kind == config.KindJwker && st.Resource.Name == "app-j" {
					return st
				}
			}
		}
		return State{}
	}
	jwker := func(rules string) {
		e.apply(jwkersGVR, "team-b", `{"apiVersion":"nais.io/v1","kind":"Jwker","metadata":{"name":"app-j","namespace":"team-b"},"spec":{"accessPolicy":{"inbound":{"rules":[`+rules+`]}},"secretName":"tokenx-app-j"}}`)
	}
	recorded := func() (Recorded, *unstructured.Unstructured) {
		j, err := e.client.Resource(jwkersGVR).Namespace("team-b").Get(ctx, "app-j", metav1.GetOptions{})
		if err != nil {
			return Recorded{}, nil
		}
		cm, err := e.client.Resource(configMapsGVR).Namespace("vakt").Get(ctx, servedRecordName(string(j.GetUID())), metav1.GetOptions{})
		if err != nil {
			return Recorded{}, nil
		}
		g, _, _ := unstructured.NestedString(cm.Object, "data", servedGeneration)
		spec, _, _ := unstructured.NestedString(cm.Object, "data", servedSpec)
		gen, _ := strconv.ParseInt(g, 10, 64)
		return Recorded{Generation: gen, Spec: []byte(spec)}, cm
	}
	jwker(`{"application":"app-1","namespace":"team-a"}`)
	e.until(30*time.Second, "generation 1 never recorded as serving", func() bool { rec, _ := recorded(); return rec.Generation == 1 })
	want := state(leader.src).ServedSpec
	if rec, cm := recorded(); !bytes.Equal(rec.Spec, want) || cm.GetLabels()[labelRecord] != recordServed || cm.GetAnnotations()[annotationOwner] != "team-b/app-j" {
		t.Fatalf("the record: %s, labels %v, annotations %v; want spec %s", rec.Spec, cm.GetLabels(), cm.GetAnnotations(), want)
	}
	jwker(`{"application":"app-1","namespace":"team-a","cluster":"not a cluster!"}`)
	e.until(30*time.Second, "generation 2 never refused with generation 1 serving", func() bool {
		st := state(leader.src)
		return st.Resource.Generation == 2 && st.Served == 1 && st.Reason == ReasonRefused
	})
	if rec, _ := recorded(); rec.Generation != 1 {
		t.Fatalf("recorded generation %d, want 1", rec.Generation)
	}
	fresh := startKubeRun(t, e.cfgPath, e.signer, SourceConfig{Client: e.client, Jwkers: true, KeysNamespace: "vakt"}, false)
	e.until(30*time.Second, "the new replica never served generation 1", func() bool {
		st := state(fresh.src)
		return st.Resource.Generation == 2 && st.Served == 1 && st.Reason == ReasonRefused
	})
	// The Jwker's client key is published meanwhile (its secretName): the
	// replicas come to the same configuration once both have read it.
	e.until(30*time.Second, "the replicas never served the same configuration", func() bool {
		return leader.cur.Load().Config.Hash == fresh.cur.Load().Config.Hash
	})
	if st := state(fresh.src); st.Served != 1 {
		t.Fatalf("the new replica serves generation %d, want 1", st.Served)
	}

	// Gone with the Jwker: collected as its keys' record is.
	_, cm := recorded()
	if err := e.client.Resource(jwkersGVR).Namespace("team-b").Delete(ctx, "app-j", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p := newKeyProvisioner(e.client, fresh.src, "vakt", quiet)
	e.until(30*time.Second, "the record outlived its Jwker", func() bool {
		p.collectRecords(ctx)
		_, err := e.client.Resource(configMapsGVR).Namespace("vakt").Get(ctx, cm.GetName(), metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}
