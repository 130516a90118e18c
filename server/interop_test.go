package server

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// TestInteropNode runs test/interop/exchange.test.mjs: Node's openid-client
// performs a token exchange against vakt on loopback with private_key_jwt,
// and jose verifies the issued token against /jwks. CI installs the
// packages (npm ci); elsewhere the test skips when they are missing.
func TestInteropNode(t *testing.T) {
	dir, err := filepath.Abs("../test/interop")
	if err != nil {
		t.Fatal(err)
	}
	node, err := exec.LookPath("node")
	_, modErr := os.Stat(filepath.Join(dir, "node_modules", "openid-client"))
	if err != nil || modErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node or test/interop/node_modules is missing; .ci/run installs them")
		}
		t.Skip("node or test/interop/node_modules is missing (npm ci --prefix test/interop); skipping the Node interop test")
	}
	e := newExchangeEnv(t, nil)

	k := e.keys[app1]
	priv, err := jwk.Import(k.Private)
	if err != nil {
		t.Fatal(err)
	}
	_ = priv.Set(jwk.KeyIDKey, k.ID)
	_ = priv.Set(jwk.AlgorithmKey, k.Alg)
	privJSON, _ := json.Marshal(priv)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-timeout=60000", "exchange.test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"VAKT_ISSUER="+e.issuer,
		"VAKT_CLIENT_ID="+app1,
		"VAKT_CLIENT_JWK="+string(privJSON),
		"VAKT_SUBJECT_TOKEN="+e.idp.Token(e.idp.Claims(time.Now(), "")),
		"VAKT_TARGET="+appB,
		"VAKT_FORBIDDEN_TARGET="+app3,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test failed: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
