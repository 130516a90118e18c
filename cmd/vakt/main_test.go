package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		{"help", []string{"help"}, 0, "", nil},
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
