package main

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vakt-dev/vakt/cmd/vakt/internal/devidp"
	"github.com/vakt-dev/vakt/deploy/examples"
)

// The development identity provider is added to the embedded default only:
// a configuration file never gets it.
func TestDevIDPOnlyOnTheDefault(t *testing.T) {
	idp, err := devidp.New("http://127.0.0.1:8080", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := developmentConfig(idp, "")()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(cfg.IdentityProviders); n != 1 || cfg.IdentityProviders[0].Issuer != idp.Issuer() {
		t.Fatalf("default: %+v", cfg.IdentityProviders)
	}
	file := filepath.Join(t.TempDir(), "vakt.yaml")
	if err := os.WriteFile(file, examples.Development, 0o600); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	cfg, err = fileConfig(file, slog.New(slog.NewTextHandler(&logs, nil)))()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.IdentityProviders) != 0 {
		t.Fatalf("a configuration file got the development identity provider: %+v", cfg.IdentityProviders)
	}
	// The copied file trusts the public demo keys: vakt says so.
	for _, app := range []string{"dev-gcp:team-a:app-1", "dev-gcp:team-c:app-3"} {
		if !strings.Contains(logs.String(), "public demo key") || !strings.Contains(logs.String(), app) {
			t.Fatalf("no warning for %s: %s", app, logs.String())
		}
	}
}

func TestDevIDPRefusesBadTTL(t *testing.T) {
	idp, _ := devidp.New("http://127.0.0.1:8080", nil)
	for _, q := range []string{"ttl=x", "ttl=999999999"} {
		rec := httptest.NewRecorder()
		idp.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, devidp.PathPrefix+"/token?"+q, nil))
		if rec.Code != http.StatusBadRequest {
			t.Fatalf("%s: %d", q, rec.Code)
		}
	}
}
