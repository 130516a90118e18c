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

// TestInteropNode runs test/interop: Node's openid-client performs a token
// exchange against vakt on loopback with private_key_jwt, and jose verifies
// the issued token against /jwks (exchange.test.mjs); oauth4webapi
// exchanges a subject token with claims of protocol meaning and validates
// the issued token as an RFC 9068 resource server (rfc9068.test.mjs). CI installs the
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
	// A subject token with claims of protocol meaning, which the issued
	// token must not carry over (RFC 9068, RFC 8693 §4).
	rich := with(e.idp.Claims(time.Now(), ""), "scope", []string{"read:users", "write:users"})
	rich["cnf"] = map[string]any{"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}
	rich["act"] = map[string]any{"sub": "someone-else"}
	rich["azp"] = app3
	cmd := exec.CommandContext(ctx, node, "--test", "--test-timeout=60000", "exchange.test.mjs", "rfc9068.test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"VAKT_ISSUER="+e.issuer,
		"VAKT_CLIENT_ID="+app1,
		"VAKT_CLIENT_JWK="+string(privJSON),
		"VAKT_SUBJECT_TOKEN="+e.idp.Token(e.idp.Claims(time.Now(), "")),
		"VAKT_TARGET="+appB,
		"VAKT_FORBIDDEN_TARGET="+app3,
		"VAKT_RICH_SUBJECT_TOKEN="+e.idp.Token(rich),
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test failed: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
