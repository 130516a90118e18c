package server

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/vakt-dev/vakt/deploy/examples"
	"github.com/vakt-dev/vakt/internal/devidp"
)

// The development identity provider is added to the embedded default only:
// a configuration file never gets it, even when a loader is given one.
func TestDevIDPOnlyOnTheDefault(t *testing.T) {
	idp, err := devidp.New("http://127.0.0.1:8080", nil)
	if err != nil {
		t.Fatal(err)
	}
	def := &Loader{Default: examples.Development, DevIDP: idp, Logger: quiet}
	cfg, err := def.Config()
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
	fromFile := &Loader{ConfigPath: file, DevIDP: idp, Logger: quiet}
	cfg, err = fromFile.Config()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.IdentityProviders) != 0 {
		t.Fatalf("a configuration file got the development identity provider: %+v", cfg.IdentityProviders)
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
