package authz

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		err      bool
	}{
		{in: "/read", want: "/read"},
		{in: "/read?x=1&y=/delete", want: "/read"},
		{in: "/read#frag", want: "/read"},
		{in: "/", want: "/"},
		{in: "/pkg.Service/Method", want: "/pkg.Service/Method"},
		{in: "/a/./b", want: "/a/b"},
		{in: "/a/../b", want: "/b"},
		{in: "/read/../delete", want: "/delete"},
		{in: "/read/%2E%2E/delete", want: "/delete"},
		{in: "/read/%2e%2e/delete", want: "/delete"},
		{in: "/../../etc/passwd", want: "/etc/passwd"},
		{in: "/a/..", want: "/"},
		{in: "/a/.", want: "/a/"},
		{in: "/%41bc", want: "/Abc"},
		{in: "/a/.hidden", want: "/a/.hidden"},
		{in: "/a/..b", want: "/a/..b"},
		{in: "/public//x", err: true},
		{in: "//admin", err: true},
		{in: "/read/..%2Fdelete", err: true},
		{in: "/read/..%2fdelete", err: true},
		{in: "/read%5C..%5Cdelete", err: true},
		{in: "/read\\..\\delete", err: true},
		{in: "/read/%zz", err: true},
		{in: "/read/%4", err: true},
		{in: "/read/%", err: true},
		{in: "/a b", err: true},
		{in: "/a\tb", err: true},
		{in: "read", err: true},
		{in: "", err: true},
		{in: "*", err: true},
		{in: "?x", err: true},
		// Paths as the upstream will read them (the identity-integrity issue).
		{in: "/public/..;/read", err: true},
		{in: "/public/%2e%2e%3b/read", err: true},
		{in: "/public/..%00/read", err: true},
		{in: "/public/%252e%252e/read", err: true},
		{in: "/public/%252f", err: true},
		{in: "/read%0a", err: true},
		{in: "/read%7F", err: true},
		{in: "/read;jsessionid=1", err: true},
		{in: "/100%25", want: "/100%"},
		{in: "/a%25zz", want: "/a%zz"},
		{in: "/public/%252%65%252%65/admin", err: true},
		{in: "/public/%25%32%65", err: true},
	} {
		got, err := NormalizePath(tt.in, RejectPathParameters)
		if tt.err {
			if !errors.Is(err, ErrBadPath) {
				t.Errorf("%q: %q, %v; want ErrBadPath", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// With StripPathParameters, a path is read as Tomcat, Jetty and Spring read
// it: ";…" dropped from each segment before decoding and dot resolution.
func TestNormalizePathStripsParameters(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		err      bool
	}{
		{in: "/public/..;/read", want: "/read"},
		{in: "/public/..;x=1/read", want: "/read"},
		{in: "/read;jsessionid=ABC", want: "/read"},
		{in: "/a;p=1/b;q=2", want: "/a/b"},
		{in: "/public/%2e%2e;/read", want: "/read"},
		{in: "/public/;/x", err: true},
		{in: "/;/admin/users", err: true},
		{in: "/;jsessionid=1/admin", err: true},
		{in: "/public/%2e%2e%3b/read", err: true},
		{in: "/public/..%00/read", err: true},
		{in: "/public/%252e%252e/read", err: true},
		{in: "/read", want: "/read"},
	} {
		got, err := NormalizePath(tt.in, StripPathParameters)
		if tt.err {
			if !errors.Is(err, ErrBadPath) {
				t.Errorf("%q: %q, %v; want ErrBadPath", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestBearerToken(t *testing.T) {
	for _, tt := range []struct {
		in, want string
	}{
		{"Bearer abc.def.ghi", "abc.def.ghi"},
		{"bearer abc", "abc"},
		{"BEARER abc", "abc"},
		{"Bearer  abc", "abc"},
		{"Bearer abc==", "abc=="},
		{"Bearer a-b_c~d+e/f", "a-b_c~d+e/f"},
		{"Bearer", ""},
		{"Bearer ", ""},
		{"Bearer a b", ""},
		{"Bearer a,Bearer b", ""},
		{"Bearer a, Bearer b", ""},
		{"Bearer a=b", ""},
		{"Bearer =", ""},
		{"Basic dXNlcjpwYXNz", ""},
		{"Bearerabc", ""},
		{"abc", ""},
		{"", ""},
		{"Bearer a\"b", ""},
	} {
		got, err := BearerToken(tt.in)
		if (tt.want == "") != (err != nil) || got != tt.want {
			t.Errorf("%q: %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/read", "/read/..%2Fdelete", "/a/./b/../c?x", "/%2e%2e/%2E", "/\\", "/%", "/public/..;/read", "/p/%252e%252e", "/a;x=1/b", "/x%00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		for _, params := range []PathParameters{RejectPathParameters, StripPathParameters} {
			checkNormalized(t, in, params)
		}
	})
}

func checkNormalized(t *testing.T, in string, params PathParameters) {
	{
		p, err := NormalizePath(in, params)
		if err != nil {
			return
		}
		// What passes is a clean absolute path: normalizing it again changes
		// nothing, and no dot segment or encoded byte is left to reinterpret.
		if p == "" || p[0] != '/' {
			t.Fatalf("%q → %q", in, p)
		}
		for _, seg := range []string{"/./", "/../"} {
			if containsSegment(p, seg) {
				t.Fatalf("%q → %q keeps %s", in, p, seg)
			}
		}
		// Nothing an upstream reads differently is left: no ';' (stripped
		// or refused), no control byte.
		for i := 0; i < len(p); i++ {
			if c := p[i]; c == ';' || c < 0x20 || c == 0x7f {
				t.Fatalf("%q → %q keeps %q", in, p, c)
			}
		}
		if strings.Contains(p, "//") {
			t.Fatalf("%q → %q keeps an empty segment", in, p)
		}
	}
}

func containsSegment(p, seg string) bool {
	for i := 0; i+len(seg) <= len(p)+1; i++ {
		end := i + len(seg)
		if end > len(p) {
			// a trailing "/.." or "/." counts too
			if p[i:] == seg[:len(seg)-1] {
				return true
			}
			continue
		}
		if p[i:end] == seg {
			return true
		}
	}
	return false
}

func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer a,Bearer b", "Basic x", "Bearer a=="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		tok, err := BearerToken(in)
		if err != nil {
			return
		}
		if tok == "" {
			t.Fatalf("%q: empty token accepted", in)
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; c == ' ' || c == ',' || c == '"' || c < 0x21 || c > 0x7e {
				t.Fatalf("%q: token %q has %q", in, tok, c)
			}
		}
	})
}
