package authz

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// claimsPayloads are payloads at the edges of what newClaims lays out: empty
// strings, an empty aud beside an absent one, scopes from three claims with
// duplicates, the most scopes and audiences allowed, claims no header may
// carry, and a payload as large as a token at the size limit may hold.
func claimsPayloads(t *testing.T) map[string]map[string]any {
	exp := json.Number("4102444800")
	many := func(n int, f string) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = fmt.Sprintf(f, i)
		}
		return out
	}
	scopeText := make([]string, maxScopes)
	for i := range scopeText {
		scopeText[i] = fmt.Sprintf("s%d", i)
	}
	return map[string]map[string]any{
		"minimal":          {"exp": exp},
		"empty strings":    {"exp": exp, "iss": "", "sub": "", "client_id": "", "azp": "", "idp": "", "jti": "", "scope": "", "aud": ""},
		"aud empty array":  {"exp": exp, "aud": []any{}},
		"aud empty member": {"exp": exp, "aud": []any{"", "a", ""}},
		"aud max":          {"exp": exp, "aud": many(maxAudiences, "audience-%03d")},
		"scopes dup":       {"exp": exp, "scope": "a b  a c ", "scp": []any{"b", "d", "a", 7}, "permissions": []any{"d", "e", "a"}},
		"scopes max":       {"exp": exp, "scope": strings.Join(scopeText, " ")},
		"scopes max split": {"exp": exp, "scope": strings.Join(scopeText[:500], " "), "scp": many(maxScopes-500, "s%d"), "permissions": many(maxScopes, "s%d")},
		"scopes invalid":   {"exp": exp, "scp": []any{"read admin", "é", "x\u0000"}},
		"unsafe": {"exp": exp, "sub": "a\r\nInjected: 1", "idp": " lead", "note": "x\x7f",
			"list": []any{"ok", "bad\n"}, "fine": "fine", "n": 1},
		"large": {"exp": exp, "iss": "https://a.example", "sub": strings.Repeat("s", 3000),
			"aud": many(maxAudiences, strings.Repeat("a", 40)+"%d"), "scope": strings.Join(scopeText[:300], " "),
			"client_id": strings.Repeat("c", 1000), "jti": strings.Repeat("j", 500), "idp": strings.Repeat("i", 500),
			"x\n": "unsafe name", "blob": strings.Repeat("b", 1500)},
	}
}

// checkLayout checks that c is laid out as newClaims writes it: the
// strings one after another in buf, then a span for every entry of the
// lists, each inside the strings of its list (a scope inside ScopeText),
// and nothing after the table.
func checkLayout(t *testing.T, c *Claims) {
	t.Helper()
	var start uint32
	for i, end := range c.ends {
		if end < start || int(end) > len(c.buf) {
			t.Fatalf("string %d ends at %d, after %d, in %d bytes", i, end, start, len(c.buf))
		}
		start = end
	}
	entries := int(c.lists[listAud]) + int(c.lists[listScopes]) + int(c.lists[listUnsafe])
	if table := len(c.buf) - int(c.ends[numStrings-1]); table != entries*spanSize {
		t.Fatalf("a table of %d bytes for %d entries", table, entries)
	}
	for l, in := range map[list]int{listAud: strAud, listScopes: strScopes, listUnsafe: strUnsafe} {
		from, to := int(c.ends[in-1]), int(c.ends[in])
		first, n := c.entries(l)
		at := from
		for i := first; i < first+n; i++ {
			span := c.buf[int(c.ends[numStrings-1])+i*spanSize:][:spanSize]
			off := int(binary.LittleEndian.Uint32([]byte(span[:4])))
			size := int(binary.LittleEndian.Uint32([]byte(span[4:])))
			// In order, one after another (a space between scopes).
			want := at
			if l == listScopes && i > first {
				want++
			}
			if off != want || off+size > to {
				t.Fatalf("list %d, entry %d: [%d, %d) outside [%d, %d) or out of order", l, i-first, off, off+size, at, to)
			}
			at = off + size
		}
		if n > 0 && at != to {
			t.Fatalf("list %d ends at %d, its strings at %d", l, at, to)
		}
	}
}

// The claims of every payload at the edges are laid out as newClaims
// means to (checkLayout), and the accessors say what the payload does.
func TestClaimsLayout(t *testing.T) {
	scopeText := make([]string, maxScopes)
	for i := range scopeText {
		scopeText[i] = fmt.Sprintf("s%d", i)
	}
	for name, payload := range claimsPayloads(t) {
		t.Run(name, func(t *testing.T) {
			data, err := json.Marshal(payload)
			if err != nil {
				t.Fatal(err)
			}
			signed := "eyJhbGciOiJFUzI1NiJ9." + base64.RawURLEncoding.EncodeToString(data)
			if name == "large" && len(signed)+87 > DefaultMaxTokenSize {
				t.Fatalf("the large payload makes a %d-byte token, over the limit", len(signed)+87)
			}
			c, raw, err := parseClaims(string(data), signed, 0)
			if err != nil {
				t.Fatal(err)
			}
			checkLayout(t, c)
			if got := len(c.Scopes()); got != len(slices.Compact(slices.Sorted(slices.Values(c.Scopes())))) {
				t.Errorf("a scope twice: %q", c.Scopes())
			}
			checkClaims(t, c, raw, signed)
			if name == "aud empty array" && (c.Audience() == nil || len(c.Audience()) != 0 || c.HasAudience("")) {
				t.Errorf("aud [] is %#v", c.Audience())
			}
			if name == "minimal" && (c.Audience() != nil || c.Scopes() != nil || c.ScopeText() != "") {
				t.Errorf("minimal: aud %#v scopes %#v", c.Audience(), c.Scopes())
			}
			if name == "unsafe" && (c.forwardable("sub") || c.forwardable("idp") || c.forwardable("note") ||
				c.forwardable("list") || !c.forwardable("fine") || !c.forwardable("n")) {
				t.Errorf("unsafe: %q", c.strings(listUnsafe, false))
			}
			if name == "scopes invalid" && c.ScopesValid() {
				t.Error("invalid scopes taken as valid")
			}
		})
	}
	for name, payload := range map[string]map[string]any{
		"aud over":    {"exp": 1, "aud": make([]any, maxAudiences+1)},
		"scopes over": {"exp": 1, "scope": strings.Join(append(scopeText, "one-more"), " ")},
	} {
		data, _ := json.Marshal(payload)
		if _, _, err := parseClaims(string(data), "h."+base64.RawURLEncoding.EncodeToString(data), 0); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Any payload parseClaims accepts makes a Claims laid out as newClaims
// means to, whose accessors say what the payload does.
func FuzzParseClaims(f *testing.F) {
	for _, p := range []string{
		`{"exp":1}`, `{"exp":1,"aud":[]}`, `{"exp":1,"aud":["",""],"scope":" a  a ","scp":["a","b c"],"permissions":["b"]}`,
		`{"exp":1,"sub":"a\r\n","x\u0000":"\u007f","l":["ok","\n"],"client_id":"","azp":"z","idp":" i","jti":"j"}`,
	} {
		f.Add([]byte(p))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		signed := "h." + base64.RawURLEncoding.EncodeToString(payload)
		c, raw, err := parseClaims(string(payload), signed, 0)
		if err != nil {
			return
		}
		checkLayout(t, c)
		checkClaims(t, c, raw, signed)
	})
}
