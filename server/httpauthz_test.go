package server

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
)

// One table of requests through both faces, gRPC Check and HTTP (as Envoy's
// http_service asks, and as nginx does): the same decision, the same
// status, the same challenge, the same identity headers.
func TestHTTPAuthzDecidesAsCheck(t *testing.T) {
	e := newCheckEnv(t)
	face := httptest.NewServer(AuthorityServices(e.cur, nil, quiet).AuthzHandler())
	t.Cleanup(face.Close)
	good := "Bearer " + e.own(app1, appB, "read:users")
	for _, tc := range []struct {
		name                    string
		app, method, path, host string
		auth                    string
		wantStatus              int
	}{
		{"allowed", appB, "GET", "/read", "", good, 200},
		{"allowed, with a query", appB, "GET", "/read?x=1&y=%20", "", good, 200},
		{"no token", appB, "GET", "/read", "", "", 401},
		{"a scope missing", appB, "POST", "/create", "", good, 403},
		{"a caller no rule names", appB, "GET", "/read", "", "Bearer " + e.own(app3, appB, "read:users"), 403},
		{"a public route without a token", appB, "GET", "/public/logo.png", "", "", 200},
		{"no route", appB, "GET", "/nowhere", "", good, 403},
		{"a dot-segment past a public prefix", appB, "GET", "/public/..;/read", "", "", 400},
		{"an encoded slash", appB, "GET", "/public%2F..%2Fread", "", "", 400},
		{"double encoding", appB, "GET", "/public/%252e%252e/read", "", "", 400},
		{"found by host", "", "GET", "/read", "app-b.example.com", good, 200},
		{"no application", "", "GET", "/read", "nowhere.example.com", good, 403},
		{"a malformed token", appB, "GET", "/read", "", "Bearer a.b.c", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			headers := map[string]string{}
			if tc.auth != "" {
				headers["authorization"] = tc.auth
			}
			cr := e.check(creq{app: tc.app, method: tc.method, path: tc.path, host: tc.host, headers: headers})
			checkStatus := 200
			var checkHeaders map[string]string
			if d := cr.GetDeniedResponse(); d != nil {
				checkStatus = int(d.GetStatus().GetCode())
				checkHeaders = headerMap(d.GetHeaders())
			} else {
				checkHeaders = headerMap(cr.GetOkResponse().GetHeaders())
			}
			if checkStatus != tc.wantStatus {
				t.Fatalf("Check answered %d, want %d", checkStatus, tc.wantStatus)
			}
			prefix := AuthzPathPrefix
			if tc.app != "" {
				prefix += "/" + tc.app
			}
			for _, style := range []string{"envoy", "nginx", "forwarded"} {
				if (style == "envoy" || style == "nginx") && tc.app == "" {
					continue // they name the application in the path
				}
				target := face.URL + prefix + tc.path
				req, _ := http.NewRequest(tc.method, target, nil)
				if style != "envoy" {
					req, _ = http.NewRequest(http.MethodGet, face.URL+prefix, nil)
					if style == "nginx" {
						req.Header.Set("X-Original-Method", tc.method)
						req.Header.Set("X-Original-URI", tc.path)
					} else {
						req.Header.Set("X-Forwarded-Method", tc.method)
						req.Header.Set("X-Forwarded-Uri", tc.path)
					}
				}
				if tc.host != "" {
					req.Host = tc.host
					if style == "forwarded" {
						req.Host = "vakt.internal"
						req.Header.Set("X-Forwarded-Host", tc.host)
					}
				}
				if tc.auth != "" {
					req.Header.Set("Authorization", tc.auth)
				}
				resp, err := testHTTP.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				want := checkStatus
				if style == "nginx" && want == 400 {
					// nginx takes anything but 2xx, 401, 403 for its own
					// error: 403, and the status vakt meant.
					want = 403
					if got := resp.Header.Get("X-Vakt-Status"); got != strconv.Itoa(checkStatus) {
						t.Errorf("%s: X-Vakt-Status %q", style, got)
					}
				}
				if resp.StatusCode != want {
					t.Errorf("%s: %d, Check %d (body %s)", style, resp.StatusCode, checkStatus, body)
				}
				for k, v := range checkHeaders {
					if k == "content-type" {
						continue
					}
					if got := resp.Header.Get(k); got != v {
						t.Errorf("%s: %s = %q, Check says %q", style, k, got, v)
					}
				}
				if checkStatus != 200 {
					if d := cr.GetDeniedResponse(); strings.TrimSpace(string(body)) != strings.TrimSpace(d.GetBody()) {
						t.Errorf("%s: body %s, Check's %s", style, body, d.GetBody())
					}
				}
			}
		})
	}
}

// Outside /authz nothing is answered but a 404; an outage is a 503, never
// a refusal.
func TestHTTPAuthzEdges(t *testing.T) {
	e := newCheckEnv(t)
	face := httptest.NewServer(AuthorityServices(e.cur, nil, quiet).AuthzHandler())
	t.Cleanup(face.Close)
	// A segment after /authz that is no application id is refused, never
	// read as the original path: the client would choose the policy.
	for _, path := range []string{"/", "/authzz", "/other/authz", "/authz/read", "/authz//" + appB + "/read"} {
		resp, err := testHTTP.Get(face.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
	// A request with more headers than Check works on (maxCheckHeaders)
	// did not come through a proxy: refused unread, as Check refuses one,
	// whatever token it carries.
	many, _ := http.NewRequest(http.MethodGet, face.URL+AuthzPathPrefix+"/"+appB+"/read", nil)
	many.Header.Set("Authorization", "Bearer "+e.own(app1, appB, "read:users"))
	for i := range maxCheckHeaders {
		many.Header.Set(fmt.Sprint("x-", i), "v")
	}
	resp, err := testHTTP.Do(many)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("%d headers: %d, want 400", len(many.Header), resp.StatusCode)
	}
	// auth0's keys cannot be had: its provider is down, and a reload
	// fetches them anew.
	e.auth0.SetDown(true)
	e.load(e.yaml)
	req, _ := http.NewRequest(http.MethodGet, face.URL+AuthzPathPrefix+"/dev-gcp:team-b:api/", nil)
	req.Header.Set("Authorization", "Bearer "+e.auth0.Token(map[string]any{"iss": e.auth0.URL, "sub": "u", "aud": "https://api.example.com", "exp": 4102444800}))
	resp, err = testHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("an outage: %d", resp.StatusCode)
	}
}

// A client's own X-Original-* or X-Forwarded-* beside the proxy's (a proxy
// that passes client headers on) never chooses the request vakt decides on:
// two accounts, or one header given twice, are refused. (With
// X-Original-URI, nginx's convention, the refusal is a 403.)
func TestHTTPAuthzConflictingAccounts(t *testing.T) {
	e := newCheckEnv(t)
	face := httptest.NewServer(AuthorityServices(e.cur, nil, quiet).AuthzHandler())
	t.Cleanup(face.Close)
	good := "Bearer " + e.own(app1, appB, "read:users")
	for _, tc := range []struct {
		name    string
		headers [][2]string
		want    int
	}{
		// Two accounts are refused even when they agree: a proxy gives one.
		{"agreeing", [][2]string{{"X-Forwarded-Method", "GET"}, {"X-Forwarded-Uri", "/read"}, {"X-Original-Method", "GET"}, {"X-Original-URI", "/read"}}, 400},
		{"the client's X-Original-URI beside the proxy's X-Forwarded-Uri", [][2]string{{"X-Forwarded-Uri", "/read"}, {"X-Original-URI", "/public/x"}}, 400},
		{"X-Forwarded-Uri twice", [][2]string{{"X-Forwarded-Uri", "/public/x"}, {"X-Forwarded-Uri", "/read"}}, 400},
		{"methods disagreeing", [][2]string{{"X-Forwarded-Method", "POST"}, {"X-Original-Method", "GET"}, {"X-Forwarded-Uri", "/read"}}, 400},
	} {
		req, _ := http.NewRequest(http.MethodGet, face.URL+AuthzPathPrefix+"/"+appB, nil)
		req.Header.Set("Authorization", good)
		for _, h := range tc.headers {
			req.Header.Add(h[0], h[1])
		}
		resp, err := testHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		// nginx's convention (X-Original-URI) turns 400 into 403.
		want := tc.want
		if want == 400 && (req.Header.Get("X-Original-URI") != "" || req.Header.Get("X-Original-Method") != "") {
			want = 403
		}
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, want)
		}
	}
}

// The review's bypasses: a client's account of the request, alone or beside
// the proxy's, incomplete accounts, a fragment. Each is refused, where
// believing it would have let the request through.
func TestHTTPAuthzRefusesAClientsAccount(t *testing.T) {
	e := newCheckEnv(t)
	face := httptest.NewServer(AuthorityServices(e.cur, nil, quiet).AuthzHandler())
	t.Cleanup(face.Close)
	good := "Bearer " + e.own(app1, appB, "read:users")
	for _, tc := range []struct {
		name, method, path string
		headers            [][2]string
		want               int
	}{
		{"Envoy's path with a client's X-Forwarded-Uri", "DELETE", "/" + appB + "/delete/1", [][2]string{{"X-Forwarded-Uri", "/public/x"}}, 400},
		{"Envoy's path with a client's X-Original-URL", "POST", "/" + appB + "/create", [][2]string{{"X-Original-URL", "http://h/public/x"}}, 403},
		{"no account at all", "GET", "/" + appB, nil, 400},
		{"a method without a URI", "GET", "/" + appB, [][2]string{{"X-Forwarded-Method", "GET"}}, 400},
		{"a URI without a method", "GET", "/" + appB, [][2]string{{"X-Original-URI", "/read"}}, 403},
		{"nginx naming no application", "GET", "", [][2]string{{"X-Original-Method", "GET"}, {"X-Original-URI", "/public/x"}, {"X-Forwarded-Host", "app-b.example.com"}}, 403},
		{"forwarded by host, no host", "GET", "", [][2]string{{"X-Forwarded-Method", "GET"}, {"X-Forwarded-Uri", "/public/x"}}, 400},
		{"ingress-nginx's X-Original-URL with a client's X-Original-URI", "GET", "/" + appB, [][2]string{{"X-Original-Method", "POST"}, {"X-Original-URL", "https://app-b.example.com/create"}, {"X-Original-URI", "/public/x"}}, 403},
		{"a fragment", "GET", "/" + appB, [][2]string{{"X-Forwarded-Method", "GET"}, {"X-Forwarded-Uri", "/public/x#/../../read"}}, 400},
		// ingress-nginx writes $scheme://$http_host$request_uri: a request
		// to "/" with a query has no '/' after the host.
		{"an X-Original-URL with no path, a query like a path", "POST", "/" + appB, [][2]string{{"X-Original-Method", "POST"}, {"X-Original-URL", "http://app-b.example.com?/public/x&admin=1"}}, 403},
		{"an X-Original-URL with no path", "GET", "/" + appB, [][2]string{{"X-Original-Method", "GET"}, {"X-Original-URL", "http://app-b.example.com"}}, 403},
	} {
		req, _ := http.NewRequest(tc.method, face.URL+AuthzPathPrefix+tc.path, nil)
		for _, h := range tc.headers {
			req.Header.Add(h[0], h[1])
		}
		resp, err := testHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
	// ingress-nginx's account (X-Original-Method and X-Original-URL) alone
	// is read: the path is the URL's.
	for _, tc := range []struct {
		url, auth string
		want      int
	}{{"https://app-b.example.com/read?x=1", good, 200}, {"https://app-b.example.com/create", good, 403}, {"https://app-b.example.com/read", "", 401}} {
		req, _ := http.NewRequest(http.MethodGet, face.URL+AuthzPathPrefix+"/"+appB, nil)
		req.Header.Set("X-Original-Method", "GET")
		req.Header.Set("X-Original-URL", tc.url)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := testHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("X-Original-URL %s: %d, want %d", tc.url, resp.StatusCode, tc.want)
		}
	}
}

// What Check would remove from the request, Envoy's http_service is told
// to remove (x-envoy-auth-headers-to-remove): a client's x-vakt-* headers,
// and Authorization for an application with stripAuthorization.
func TestHTTPAuthzHeadersToRemove(t *testing.T) {
	e := newCheckEnv(t)
	face := httptest.NewServer(AuthorityServices(e.cur, nil, quiet).AuthzHandler())
	t.Cleanup(face.Close)
	req, _ := http.NewRequest(http.MethodGet, face.URL+AuthzPathPrefix+"/"+appB+"/public/x", nil)
	req.Header.Set("X-Vakt-Subject", "admin")
	resp, err := testHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"), "x-vakt-subject") {
		t.Fatalf("a public route with a client's x-vakt-subject: %d, to remove %q", resp.StatusCode, resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"))
	}
	tok := e.auth0.Token(map[string]any{"iss": e.auth0.URL, "sub": "u", "aud": "https://api.example.com", "exp": 4102444800})
	req, _ = http.NewRequest(http.MethodGet, face.URL+AuthzPathPrefix+"/dev-gcp:team-b:api/x", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err = testHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Envoy-Auth-Headers-To-Remove") != "authorization" {
		t.Fatalf("stripAuthorization: %d, to remove %q", resp.StatusCode, resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"))
	}
}

// The HTTP face takes from Check's budget: past it, 503, never a decision.
func TestHTTPAuthzOverload(t *testing.T) {
	e := newCheckEnv(t)
	s := AuthorityServices(e.cur, nil, quiet).WithLimits(1, 0)
	face := httptest.NewServer(s.limitedCheck(s.AuthzHandler()))
	t.Cleanup(face.Close)
	s.budgets.check <- struct{}{} // the one slot, taken by a Check in flight
	resp, err := testHTTP.Get(face.URL + AuthzPathPrefix + "/" + appB + "/public/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("over the budget: %d", resp.StatusCode)
	}
	<-s.budgets.check
	if resp, err = testHTTP.Get(face.URL + AuthzPathPrefix + "/" + appB + "/public/x"); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("within the budget: %d", resp.StatusCode)
	}
}

// The names the HTTP face reads without a copy are net/http's own.
func TestCanonicalNames(t *testing.T) {
	for _, lower := range []string{"authorization", "content-type", "x-request-id", "traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "accept"} {
		if got, want := canonicalName(lower), textproto.CanonicalMIMEHeaderKey(lower); got != want {
			t.Errorf("%s: %s, net/http says %s", lower, got, want)
		}
	}
}
