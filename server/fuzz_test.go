package server

import (
	"context"

	"encoding/json"
	"github.com/vakt-dev/vakt/authz"
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
	h := AuthorityServices(e.cur, nil, quiet).Handler()
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
	h := AuthorityServices(e.cur, nil, quiet).Handler()
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

// FuzzCheck: any method, path and Authorization header is allowed or denied
// with 400, 401 or 403, never a panic or an RPC error; and nothing without a
// valid token reaches a route that needs one. Its tokens never verify:
// FuzzCheckAllow (check_fuzz_test.go) fuzzes the allow path with tokens it
// signs.
func FuzzCheck(f *testing.F) {
	for _, s := range [][3]string{
		{"GET", "/read", "Bearer a.b.c"}, {"GET", "/public/x", ""}, {"POST", "/read/..%2Fdelete", "bearer x"},
		{"GET", "/public/../read", ""}, {"DELETE", "/delete/%2e%2e/read", "Bearer a,Bearer b"}, {"GET", "*", "Basic x"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	svc, _ := benchCheck(f, 0)
	f.Fuzz(func(t *testing.T, method, path, auth string) {
		res, err := svc.Check(context.Background(), checkRequestMethod(method, path, auth))
		if err != nil {
			t.Fatalf("error: %v", err)
		}
		if ok := res.GetOkResponse(); ok != nil {
			// Only public routes are open without a verified token, and no
			// fuzzed token can be verified.
			if p, err := authz.NormalizePath(path, authz.RejectPathParameters); err != nil || !strings.HasPrefix(p, "/public/") {
				t.Fatalf("allowed %q %q", path, auth)
			}
			return
		}
		switch res.GetDeniedResponse().GetStatus().GetCode() {
		case 400, 401, 403:
		default:
			t.Fatalf("%q %q: %v", path, auth, res)
		}
	})
}
