package server

import (
	"encoding/json"
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
	h := NewHTTPHandler(e.cur, nil, quiet)
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

// FuzzTokenEndpoint: any form body gets an OAuth JSON error (or, with a
// genuine request, a token); never a panic or a 5xx.
func FuzzTokenEndpoint(f *testing.F) {
	for _, s := range []string{
		"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&subject_token=x&audience=dev-gcp%3Ateam-b%3Aapp-b",
		"grant_type=a&grant_type=b", "grant_type=%zz", "", "a=1;b=2", "client_assertion=" + strings.Repeat("A", 100),
	} {
		f.Add("application/x-www-form-urlencoded", s)
	}
	f.Add("application/json", `{"grant_type":"x"}`)
	e := newEnv(f)
	h := NewHTTPHandler(e.cur, nil, quiet)
	f.Fuzz(func(t *testing.T, ct, body string) {
		req := httptest.NewRequest(http.MethodPost, "/token", strings.NewReader(body))
		req.Header.Set("Content-Type", ct)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 400, 401:
		default:
			t.Fatalf("status %d for %q %q: %s", rec.Code, ct, body, rec.Body)
		}
		var m map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil || m["error"] == nil {
			t.Fatalf("body %s", rec.Body)
		}
	})
}
