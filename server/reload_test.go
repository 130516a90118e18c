package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/internal/idptest"
	"github.com/vakt-dev/vakt/internal/tlstest"
)

// rotationEnv is vakt serving from files on disk, reloading on change.
type rotationEnv struct {
	*xenv
	dir, cfgFile, keysFile string
	baseYAML               string
	failures               atomic.Int64
	// results has each reload's outcome, as it comes, with the number of
	// its build (builds counts them; building is the one under way).
	results          chan reloadResult
	builds, building atomic.Int64
	loader           *Loader
}

type reloadResult struct {
	build int64
	err   error
}

func newRotationEnv(t *testing.T) *rotationEnv {
	t.Helper()
	// Reuse the exchange environment's applications and identity provider,
	// but serve from files and reload them.
	x := newExchangeEnv(t, nil)
	r := &rotationEnv{xenv: x, dir: t.TempDir(), results: make(chan reloadResult, 100)}
	r.cfgFile = filepath.Join(r.dir, "vakt.yaml")
	r.keysFile = filepath.Join(r.dir, "keys.json")
	k, _ := exchange.GenerateSigningKey("ES256")
	if err := exchange.WriteKeysFile(r.keysFile, []*exchange.SigningKey{k}); err != nil {
		t.Fatal(err)
	}
	r.baseYAML = exchangeYAML(t, x) + "signing:\n  keysFile: keys.json\n"
	if err := os.WriteFile(r.cfgFile, []byte(r.baseYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	log := quiet
	if os.Getenv("VAKT_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	loader := &Loader{Config: func() (*config.Config, error) { return config.LoadFile(r.cfgFile) }, Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{}), Logger: log}
	started, err := loader.Config()
	if err != nil {
		t.Fatal(err)
	}
	loader.Started = started
	r.loader = loader
	build := func(ctx context.Context) (*Runtime, error) {
		r.building.Store(r.builds.Add(1))
		return loader.Build(ctx)
	}
	rl := &Reloader{Current: x.cur, Build: build, Logger: log, OnResult: func(err error) {
		if err != nil {
			r.failures.Add(1)
		}
		select {
		case r.results <- reloadResult{r.building.Load(), err}:
		default: // nobody waits for a hundred reloads
		}
	}}
	rl.Files = WatchedFiles(r.cfgFile, x.cur)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := rl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	done, err := rl.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// exchangeYAML is the configuration newExchangeEnv serves, with the
// client keys in x.keys.
func exchangeYAML(t testing.TB, x *xenv) string {
	t.Helper()
	jwks := func(id string) string {
		return idptest.JSON(t, map[string]any{"keys": []any{x.keys[id].JWK(t)}})
	}
	return `issuer: ` + x.issuer + `
cluster: dev-gcp
identityProviders:
  - name: idporten
    issuer: ` + x.idp.URL + `
    jwksUri: ` + x.idp.JWKSURI() + `
applications:
  - name: app-1
    namespace: team-a
    jwks: ` + jwks(app1) + `
  - name: app-2
    namespace: team-a
  - name: app-3
    namespace: team-c
    jwks: ` + jwks(app3) + `
  - name: app-b
    namespace: team-b
    accessPolicy:
      inbound:
        rules:
          - application: app-1
            namespace: team-a
`
}

// change runs edit and waits until the reload it causes has happened: the
// first whose build started after edit did (one under way then may have
// read the files before the change).
func (r *rotationEnv) change(t *testing.T, edit func()) {
	t.Helper()
	before := r.builds.Load()
	edit()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case res := <-r.results:
			if res.build > before {
				return
			}
		case <-timeout:
			t.Fatal("no reload after the change")
		}
	}
}

func (r *rotationEnv) editKeys(t *testing.T, edit func([]*exchange.SigningKey) ([]*exchange.SigningKey, error)) {
	t.Helper()
	r.change(t, func() {
		ks, err := exchange.LoadKeysFile(r.keysFile)
		if err == nil {
			ks, err = edit(ks)
		}
		if err == nil {
			err = exchange.WriteKeysFile(r.keysFile, ks)
		}
		if err != nil {
			t.Fatal(err)
		}
	})
}

func (r *rotationEnv) publishedKids(t *testing.T) []string {
	resp, err := testHTTP.Get(r.issuer + "/jwks")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.Kid)
	}
	return kids
}

func (r *rotationEnv) mint(t *testing.T) (token, kid string) {
	t.Helper()
	got := r.viaHTTP(t, r.request(t, nil))
	if got.code != "" {
		t.Fatalf("exchange refused: %s %s", got.code, got.description)
	}
	h, err := idptestHeader(got.token)
	if err != nil {
		t.Fatal(err)
	}
	return got.token, h["kid"].(string)
}

func (r *rotationEnv) active(t *testing.T, token string) string {
	res, err := r.introspec.Introspect(context.Background(), &vaktv1.IntrospectRequest{IdentityProvider: "tokenx", Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return res.Error
}

// TestKeyRotation mints under the old key, rotates in the documented steps,
// and shows that no verifier ever meets an unknown kid: the signing kid is
// always published, and tokens of the old key verify until it is retired.
func TestKeyRotation(t *testing.T) {
	r := newRotationEnv(t)
	oldTok, oldKid := r.mint(t)

	// 1. Add: published, not signing.
	newKey, _ := exchange.GenerateSigningKey("EdDSA")
	r.editKeys(t, func(ks []*exchange.SigningKey) ([]*exchange.SigningKey, error) { return exchange.AddKey(ks, newKey) })
	if kids := r.publishedKids(t); strings.Join(kids, ",") != oldKid+","+newKey.ID {
		t.Fatalf("after add, /jwks has %v", kids)
	}
	if _, kid := r.mint(t); kid != oldKid {
		t.Fatalf("after add, signed with %s", kid)
	}

	// 2. Promote: the new key signs; the old one stays published.
	r.editKeys(t, func(ks []*exchange.SigningKey) ([]*exchange.SigningKey, error) {
		return exchange.PromoteKey(ks, newKey.ID)
	})
	newTok, kid := r.mint(t)
	if kid != newKey.ID {
		t.Fatalf("after promote, signed with %s", kid)
	}
	for name, tok := range map[string]string{"old": oldTok, "new": newTok} {
		if e := r.active(t, tok); e != "" {
			t.Fatalf("%s token after promote: %s", name, e)
		}
	}

	// 3. Retire, once the old key's tokens have expired.
	r.editKeys(t, func(ks []*exchange.SigningKey) ([]*exchange.SigningKey, error) { return exchange.RetireKey(ks, oldKid) })
	if kids := r.publishedKids(t); strings.Join(kids, ",") != newKey.ID {
		t.Fatalf("after retire, /jwks has %v", kids)
	}
	if e := r.active(t, newTok); e != "" {
		t.Fatalf("new token after retire: %s", e)
	}
	// Retired with its key: rejected (here by its algorithm, as no key of
	// that type is left).
	if e := r.active(t, oldTok); e == "" {
		t.Fatal("old token still verifies after its key was retired")
	}
	if r.failures.Load() != 0 {
		t.Fatalf("%d reloads failed", r.failures.Load())
	}
}

func TestReloadRefusesABrokenFile(t *testing.T) {
	r := newRotationEnv(t)
	before := r.cur.Load()
	r.change(t, func() {
		if err := os.WriteFile(r.keysFile, []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	if r.failures.Load() == 0 || r.cur.Load() != before {
		t.Fatal("a broken keys file was put in force")
	}
	r.change(t, func() {
		if err := os.WriteFile(r.cfgFile, []byte(r.baseYAML+"unknownField: 1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	if r.cur.Load() != before {
		t.Fatal("a broken configuration was put in force")
	}
	// The old runtime still answers.
	if _, kid := r.mint(t); kid == "" {
		t.Fatal("no token")
	}
}

// A rule removed from the configuration stops the exchange at once, and a
// SIGHUP reloads too.
func TestReloadPolicy(t *testing.T) {
	r := newRotationEnv(t)
	r.mint(t)
	without := strings.Replace(r.baseYAML, "          - application: app-1\n            namespace: team-a\n", "", 1)
	if without == r.baseYAML {
		t.Fatal("rule not found in the configuration")
	}
	r.change(t, func() {
		if err := os.WriteFile(r.cfgFile, []byte(without), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	if got := r.viaGRPC(t, r.request(t, nil)); got.code != "invalid_target" {
		t.Fatalf("after the rule was removed: %+v", got)
	}
	// Put the rule back without a file event the watcher sees as ours... then
	// SIGHUP: the watcher reloads on the signal alone.
	if err := os.WriteFile(r.cfgFile, []byte(r.baseYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	r.change(t, func() {
		if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	})
	if got := r.viaGRPC(t, r.request(t, nil)); got.code != "" {
		t.Fatalf("after the rule came back: %+v", got)
	}
}

// writeConfig replaces the configuration file as an editor or kubelet
// does, and waits for the reload it causes.
func (r *rotationEnv) writeConfig(t *testing.T, yaml string) {
	t.Helper()
	r.change(t, func() { tlstest.Write(t, r.dir, "vakt.yaml", []byte(yaml)) })
}

// An application's jwksFile is followed: a client key rotated in it (as a
// key-rotation controller writes a Secret) is accepted without SIGHUP, and
// so is a file a reloaded configuration names for the first time.
func TestReloadFollowsClientKeyFiles(t *testing.T) {
	r := newRotationEnv(t)
	jwks := func(k *idptest.Key) []byte { return []byte(idptest.JSON(t, map[string]any{"keys": []any{k.JWK(t)}})) }
	tlstest.Write(t, r.dir, "app-1.jwks", jwks(r.keys[app1]))
	withFile := regexp.MustCompile(`(?m)^(  - name: app-1\n    namespace: team-a\n)    jwks: .*$`).ReplaceAllString(r.baseYAML, "${1}    jwksFile: app-1.jwks")
	if withFile == r.baseYAML {
		t.Fatal("app-1's inline keys not found")
	}
	r.writeConfig(t, withFile)
	if got := r.viaGRPC(t, r.request(t, nil)); got.code != "" {
		t.Fatalf("with the key file: %+v", got)
	}
	rotated := idptest.NewKey(t, "client-key-2", "ES256")
	r.change(t, func() { tlstest.Write(t, r.dir, "app-1.jwks", jwks(rotated)) })
	old := r.keys[app1]
	r.keys[app1] = rotated
	if got := r.viaGRPC(t, r.request(t, nil)); got.code != "" {
		t.Fatalf("with the rotated key: %+v", got)
	}
	r.keys[app1] = old
	if got := r.viaGRPC(t, r.request(t, nil)); got.code != "invalid_client" {
		t.Fatalf("with the key rotated out: %+v", got)
	}
}

// A reload that changes what only a restart applies (the listeners, the
// replay store) is refused, saying so, and the running configuration stays.
func TestReloadRefusesWhatNeedsARestart(t *testing.T) {
	r := newRotationEnv(t)
	before := r.cur.Load()
	for _, tt := range []struct{ extra, want string }{
		{"listen:\n  grpc: 127.0.0.1:9999\n", "listen.grpc (127.0.0.1:9000 → 127.0.0.1:9999) changed: these changes need a restart"},
		{"listen:\n  admin: \"off\"\n", "listen.admin (127.0.0.1:9090 → off)"},
		{"replay:\n  maxPerClient: 7\n", "replay changed"},
		{"replay:\n  redis: {address: 127.0.0.1:6379}\n", "replay changed"},
	} {
		failures := r.failures.Load()
		r.writeConfig(t, r.baseYAML+tt.extra)
		if r.failures.Load() == failures || r.cur.Load() != before {
			t.Fatalf("%q: put in force", tt.extra)
		}
		if _, err := r.loader.Build(context.Background()); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Fatalf("%q: %v, want %q", tt.extra, err, tt.want)
		}
	}
	// Anything else still reloads.
	r.writeConfig(t, r.baseYAML+"log:\n  decisions: all\n")
	if r.cur.Load() == before || r.cur.Load().Config.Log.Decisions != "all" {
		t.Fatal("a reload of the policy was refused")
	}
}
