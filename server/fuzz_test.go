package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzIntrospectBody: any body under either media type gets 200, 400 or 413
// with a JSON body; nothing panics and nothing is a 5xx.
func FuzzIntrospectBody(f *testing.F) {
	for _, s := range []string{
		`{"identity_provider":"idporten","token":"a.b.c"}`, `{"token":5}`, `[]`, `{"a":`,
		"identity_provider=idporten&token=a.b.c", "token=%zz", "token=a&token=b", "",
	} {
		f.Add("application/json", s)
		f.Add("application/x-www-form-urlencoded", s)
	}
	e := newEnv(f)
	h := NewHTTPHandler(e.cur, quiet)
	f.Fuzz(func(t *testing.T, ct, body string) {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/introspect", strings.NewReader(body))
		req.Header.Set("Content-Type", ct)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 400, 413, 415:
		default:
			t.Fatalf("status %d for %q %q", rec.Code, ct, body)
		}
		if !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
			t.Fatalf("content type %q", rec.Header().Get("Content-Type"))
		}
	})
}
