package server

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// refASCIIFold is asciiEqualFold by another road, for any bytes.
func refASCIIFold(a, b string) bool {
	low := func(s string) []byte {
		out := []byte(s)
		for i, c := range out {
			if c < utf8.RuneSelf {
				out[i] = strings.ToLower(string(rune(c)))[0]
			}
		}
		return out
	}
	return string(low(a)) == string(low(b))
}

func FuzzASCIIEqualFold(f *testing.F) {
	f.Add("x-vakt-subject", "X-VAKT-SUBJECT")
	f.Add("x-vakt-ſubject", "x-vakt-subject")
	f.Add("\u212a", "k")
	f.Add("@", "`")
	f.Add("[", "{")
	f.Fuzz(func(t *testing.T, a, b string) {
		if got, want := asciiEqualFold(a, b), refASCIIFold(a, b); got != want {
			t.Fatalf("%q %q: %v, want %v", a, b, got, want)
		}
		if isASCII(a) && isASCII(b) && asciiEqualFold(a, b) != strings.EqualFold(a, b) {
			t.Fatalf("%q %q differ from EqualFold", a, b)
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func TestASCIIEqualFoldBytes(t *testing.T) {
	for x := range 256 {
		for y := range 256 {
			a, b := string([]byte{byte(x)}), string([]byte{byte(y)})
			if asciiEqualFold(a, b) != refASCIIFold(a, b) {
				t.Fatalf("%#x %#x", x, y)
			}
		}
	}
	if asciiEqualFold("x-vakt-ſubject", "x-vakt-subject") || asciiEqualFold("ab", "abc") || !asciiEqualFold("", "") {
		t.Fatal("fold")
	}
}
