package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vakt-dev/vakt/exchange"
)

func TestRun(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("issuer: nope\ncluster: dev-gcp\nfoo: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr []string
	}{
		{"check-config ok", []string{"check-config", "../../deploy/examples/full.yaml"}, 0, "ok\n", nil},
		{"check-config development default", []string{"check-config", "../../deploy/examples/vakt.yaml"}, 0, "ok\n", nil},
		{"check-config bad", []string{"check-config", bad}, 1, "", []string{"line 3", "foo"}},
		{"check-config missing file", []string{"check-config", filepath.Join(dir, "nope.yaml")}, 1, "", []string{"no such file"}},
		{"check-config no argument", []string{"check-config"}, 2, "", []string{"usage"}},
		{"no command", nil, 2, "", []string{"Usage"}},
		{"unknown command", []string{"frobnicate"}, 2, "", []string{`unknown command "frobnicate"`}},
		{"serve bad config", []string{"serve", "--config", bad}, 1, "", []string{"configuration is invalid", "line 3"}},
		{"serve bad flag", []string{"serve", "--log-level", "loud"}, 2, "", []string{"--log-level"}},
		// An empty --config (an unset variable) never starts the development
		// defaults, whose identity provider issues tokens to anyone.
		{"serve empty config", []string{"serve", "--config", ""}, 2, "", []string{"--config is empty"}},
		{"serve empty config, = form", []string{"serve", "--config="}, 2, "", []string{"--config is empty"}},
		{"keys generate --out and --add", []string{"keys", "generate", "--out", "a", "--add", "b"}, 2, "", []string{"usage"}},
		{"help", []string{"help"}, 0, "", nil},
		// A test binary records no VCS revision.
		{"version", []string{"version"}, 0, "vakt (devel) (revision unknown, " + runtime.Version() + ")\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(tt.args, &out, &errb); code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %s", code, tt.code, errb.String())
			}
			if tt.stdout != "" && out.String() != tt.stdout {
				t.Fatalf("stdout %q", out.String())
			}
			for _, s := range tt.stderr {
				if !strings.Contains(errb.String(), s) {
					t.Fatalf("stderr %q lacks %q", errb.String(), s)
				}
			}
		})
	}
}

// keys generate --out writes a new keys file readable by its owner only,
// and never overwrites one.
func TestKeysGenerateOut(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys.json")
	var out, errb bytes.Buffer
	if code := run([]string{"keys", "generate", "--alg", "EdDSA", "--out", file}, &out, &errb); code != 0 {
		t.Fatalf("generate --out: %s", errb.String())
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	keys, err := exchange.LoadKeysFile(file)
	if err != nil || len(keys) != 1 || keys[0].Alg != "EdDSA" || !strings.Contains(out.String(), keys[0].ID) {
		t.Fatalf("keys %v, %v; stdout %s", keys, err, out.String())
	}
	errb.Reset()
	if code := run([]string{"keys", "generate", "--out", file}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "exists") {
		t.Fatalf("overwrote: %d %s", code, errb.String())
	}
	again, _ := exchange.LoadKeysFile(file)
	if len(again) != 1 || again[0].ID != keys[0].ID {
		t.Fatal("the file changed")
	}
}

func TestKeysCommands(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "keys.json")
	var out, errb bytes.Buffer
	if code := run([]string{"keys", "generate", "--alg", "ES256"}, &out, &errb); code != 0 {
		t.Fatalf("generate: %s", errb.String())
	}
	if err := os.WriteFile(file, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	kids := func() []string {
		ks, err := exchange.LoadKeysFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, k := range ks {
			ids = append(ids, k.ID)
		}
		return ids
	}
	first := kids()[0]
	if code := run([]string{"keys", "generate", "--alg", "EdDSA", "--add", file}, &out, &errb); code != 0 {
		t.Fatalf("add: %s", errb.String())
	}
	second := kids()[1]
	if got := kids(); len(got) != 2 || got[0] != first {
		t.Fatalf("after add: %v", got)
	}
	if code := run([]string{"keys", "retire", file, first}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "promote another key first") {
		t.Fatalf("retiring the signing key: %d %s", code, errb.String())
	}
	if code := run([]string{"keys", "promote", file, second}, &out, &errb); code != 0 {
		t.Fatalf("promote: %s", errb.String())
	}
	if got := kids(); got[0] != second || got[1] != first {
		t.Fatalf("after promote: %v", got)
	}
	if code := run([]string{"keys", "retire", file, first}, &out, &errb); code != 0 {
		t.Fatalf("retire: %s", errb.String())
	}
	if got := kids(); len(got) != 1 || got[0] != second {
		t.Fatalf("after retire: %v", got)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keys file mode %v %v", st.Mode(), err)
	}
	if code := run([]string{"keys", "promote", file, "nope"}, &out, &errb); code != 1 {
		t.Fatal("promoting an unknown kid succeeded")
	}
	if code := run([]string{"keys", "generate", "--alg", "HS256"}, &out, &errb); code != 1 {
		t.Fatal("HS256 key generated")
	}
}

func TestAgentNeedsItsEnvironment(t *testing.T) {
	var errb bytes.Buffer
	code := runAgent(nil, func(name string) string {
		if name == "TOKEN_X_PRIVATE_JWK" {
			return `{"kty":"oct","k":"TOP-SECRET"}`
		}
		return ""
	}, &errb)
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"TOKEN_X_CLIENT_ID is not set", "TOKEN_X_TOKEN_ENDPOINT is not set", "TOKEN_X_PRIVATE_JWK is not one private JWK"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("log lacks %q: %s", want, errb.String())
		}
	}
	if strings.Contains(errb.String(), "TOP-SECRET") {
		t.Fatal("the private key reached the log")
	}
}

// The demo is a smoke test of the whole flow: it must pass every step.
func TestDemo(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"demo"}, &out, &errb); code != 0 {
		t.Fatalf("vakt demo exited %d:\n%s\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"== 6.", "every step gave the expected answer", "invalid_target", "insufficient_scope", `"token is expired"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "✗") {
		t.Fatalf("a step failed:\n%s", out.String())
	}
}

// explain runs the engine on a request that has not happened and says
// why; its exit status is the decision.
func TestExplain(t *testing.T) {
	const cfg = "../../deploy/examples/vakt.yaml"
	base := []string{"explain", "--config", cfg, "--app", "dev-gcp:team-b:app-b"}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr string
	}{
		{"allowed", []string{"--path", "/read", "--caller", "dev-gcp:team-a:app-1", "--scope", "read:users"}, 0,
			[]string{"route        routes[0] GET /read needs read:users", "caller       dev-gcp:team-a:app-1: allowed by accessPolicy.inbound.rules",
				`scopes       needs read:users; the token holds "read:users"`, "decision     allow"}, ""},
		{"scope missing", []string{"--method", "POST", "--path", "/create", "--caller", "dev-gcp:team-a:app-1", "--scope", "read:users"}, 1,
			[]string{"routes[1] POST /create needs create:users", "decision     deny (scope_insufficient: token lacks a scope the request needs): HTTP 403"}, ""},
		{"caller not in the rules", []string{"--path", "/read", "--caller", "dev-gcp:team-c:app-3"}, 1,
			[]string{"dev-gcp:team-c:app-3: accessPolicy.inbound.rules has no rule naming it", "deny (caller_denied"}, ""},
		{"no token", []string{"--path", "/read"}, 1, []string{"token        none", "deny (token_missing"}, ""},
		{"public route", []string{"--path", "/public/x"}, 0, []string{"routes[3] any method /public/* public", "decision     allow"}, ""},
		{"no route", []string{"--path", "/nowhere"}, 1, []string{"none of the application's 4 routes matches", "deny (route_not_found"}, ""},
		{"bad token", []string{"--path", "/read", "--token", "abc.def.ghi"}, 1, []string{"token        refused: token is malformed", "HTTP 401"}, ""},
		{"no path", nil, 2, nil, "usage"},
		{"token and caller", []string{"--path", "/read", "--token", "x", "--caller", "dev-gcp:team-a:app-1"}, 2, nil, "exclude each other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(append(base[:len(base):len(base)], tt.args...), &out, &errb); code != tt.code {
				t.Fatalf("exit %d, want %d; stdout %s stderr %s", code, tt.code, out.String(), errb.String())
			}
			for _, s := range tt.stdout {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, out.String())
				}
			}
			if !strings.Contains(errb.String(), tt.stderr) {
				t.Errorf("stderr %q lacks %q", errb.String(), tt.stderr)
			}
		})
	}
	var out, errb bytes.Buffer
	if code := run([]string{"explain", "--config", cfg, "--app", "dev-gcp:team-x:nope", "--path", "/"}, &out, &errb); code != 1 || !strings.Contains(out.String(), "dev-gcp:team-x:nope is not configured") {
		t.Errorf("unknown application: exit %d, %s", code, out.String())
	}
}

// A tracing setting vakt cannot honour stops serve and agent at start,
// naming the variable, rather than running untraced.
func TestTracingSettingRefused(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "zipkin")
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "--config", "../../deploy/examples/full.yaml"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "OTEL_TRACES_EXPORTER") {
		t.Fatalf("serve: exit %d, stderr %s", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"agent", "--log-decisions", "some"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--log-decisions") {
		t.Fatalf("agent --log-decisions some: exit %d, stderr %s", code, errb.String())
	}
}
