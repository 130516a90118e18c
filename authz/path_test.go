package authz

import (
	"errors"
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
		{in: "/public//x", want: "/public//x"},
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
	} {
		got, err := NormalizePath(tt.in)
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
	for _, s := range []string{"/read", "/read/..%2Fdelete", "/a/./b/../c?x", "/%2e%2e/%2E", "/\\", "/%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, err := NormalizePath(in)
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
	})
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
