package authz

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unsafe"
	"weak"
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

// Every ref of a Claims, string or list, lies inside its allocation and
// after its header; lists lie where newClaims put them (just after the
// header, before any string), aligned for refs; the Claims is at a
// word-aligned address; the accessors say what
// the payload does. Run with -race (checkptr) too.
func TestClaimsLayout(t *testing.T) {
	scopeText := make([]string, maxScopes)
	for i := range scopeText {
		scopeText[i] = fmt.Sprintf("s%d", i)
	}
	// The refs' arrays start right after the header: it must leave them
	// aligned (116 bytes on 386 is, 120 on amd64 is).
	if claimsOverhead%int(unsafe.Alignof(ref{})) != 0 || sizeRef%int(unsafe.Alignof(ref{})) != 0 {
		t.Fatalf("header %d bytes, align %d; ref %d bytes, align %d", claimsOverhead, unsafe.Alignof(Claims{}), sizeRef, unsafe.Alignof(ref{}))
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
			c, raw, err := parseClaims(data, signed, 0)
			if err != nil {
				t.Fatal(err)
			}
			base := uintptr(unsafe.Pointer(c))
			if base%8 != 0 || c.self != base {
				t.Fatalf("claims at %#x, self %#x", base, c.self)
			}
			lists := int(c.aud.n + c.scopes.n + c.unsafe.n)
			listsEnd := uint32(claimsOverhead + lists*sizeRef)
			inside := func(what string, r ref, from, to uint32, width uint32) {
				t.Helper()
				if r.n == 0 {
					return
				}
				end := uint64(r.off) + uint64(r.n)*uint64(width)
				if r.off < from || end > uint64(to) {
					t.Errorf("%s %+v outside [%d, %d)", what, r, from, to)
				}
				if width == uint32(sizeRef) && r.off%4 != 0 {
					t.Errorf("%s %+v misaligned", what, r)
				}
			}
			size := uint32(c.size)
			for what, r := range map[string]ref{"signed": c.signed, "iss": c.iss, "sub": c.sub, "caller": c.caller,
				"idp": c.idp, "id": c.id, "scopeTxt": c.scopeTxt} {
				inside(what, r, listsEnd, size, 1)
			}
			for what, l := range map[string]ref{"aud": c.aud, "scopes": c.scopes, "unsafe": c.unsafe} {
				inside(what, l, uint32(claimsOverhead), listsEnd, uint32(sizeRef))
				for i, r := range c.list(l) {
					inside(fmt.Sprintf("%s[%d]", what, i), r, listsEnd, size, 1)
				}
			}
			// Scopes are views of ScopeText.
			for i, r := range c.list(c.scopes) {
				inside(fmt.Sprintf("scope %d in ScopeText", i), r, c.scopeTxt.off, c.scopeTxt.off+c.scopeTxt.n, 1)
			}
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
				t.Errorf("unsafe: %q", c.strings(c.unsafe, false))
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
		if _, _, err := parseClaims(data, "h."+base64.RawURLEncoding.EncodeToString(data), 0); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A view an accessor made keeps the Claims' allocation alive on its own,
// though the allocation holds no pointer (the collector finds an object from
// a pointer to any of its bytes): the bytes stay the claims' after the
// *Claims is dropped and the heap churns, and the allocation goes once the
// view goes too.
func TestClaimsViewKeepsClaims(t *testing.T) {
	payload := []byte(`{"exp":4102444800,"sub":"user-` + strings.Repeat("x", 200) + `","scope":"a b c","aud":["x","y"]}`)
	signed := "h." + base64.RawURLEncoding.EncodeToString(payload)
	// A weak pointer says at once, after a collection, whether the claims
	// survived it: runtime.GC returns once the cycle is done and swept.
	var claims weak.Pointer[Claims]
	views := func() (sub, scope, aud string) {
		c, _, err := parseClaims(payload, signed, 0)
		if err != nil {
			t.Fatal(err)
		}
		claims = weak.Make(c)
		return c.Subject(), c.Scopes()[2], c.Audience()[1]
	}
	sub, scope, aud := views()
	var junk [][]uint64
	for range 5 {
		runtime.GC()
		for range 2000 {
			junk = append(junk, make([]uint64, 40)) // the claims' size class
		}
		for i := range junk {
			for j := range junk[i] {
				junk[i][j] = ^uint64(0)
			}
		}
	}
	runtime.GC()
	if claims.Value() == nil {
		t.Fatal("the claims were collected while a view of them was held")
	}
	if sub != "user-"+strings.Repeat("x", 200) || scope != "c" || aud != "y" {
		t.Fatalf("views changed: %q %q %q", sub[:10], scope, aud)
	}
	runtime.KeepAlive(sub)
	runtime.KeepAlive(scope)
	runtime.KeepAlive(aud)
	sub, scope, aud = "", "", ""
	junk = nil
	// Unreachable, the claims go at the next collection; a few more are
	// allowed for whatever may still point at them unseen (a register).
	for range 10 {
		runtime.GC()
		if claims.Value() == nil {
			return
		}
	}
	t.Fatal("the claims were never collected")
}

// Any payload parseClaims accepts makes a Claims whose refs stay inside it
// and whose accessors say what the payload does.
func FuzzParseClaims(f *testing.F) {
	for _, p := range []string{
		`{"exp":1}`, `{"exp":1,"aud":[]}`, `{"exp":1,"aud":["",""],"scope":" a  a ","scp":["a","b c"],"permissions":["b"]}`,
		`{"exp":1,"sub":"a\r\n","x\u0000":"\u007f","l":["ok","\n"],"client_id":"","azp":"z","idp":" i","jti":"j"}`,
	} {
		f.Add([]byte(p))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		signed := "h." + base64.RawURLEncoding.EncodeToString(payload)
		c, raw, err := parseClaims(payload, signed, 0)
		if err != nil {
			return
		}
		end := uint64(c.size)
		for _, r := range []ref{c.signed, c.iss, c.sub, c.caller, c.idp, c.id, c.scopeTxt} {
			if r.n > 0 && (r.off < uint32(claimsOverhead) || uint64(r.off)+uint64(r.n) > end) {
				t.Fatalf("ref %+v outside %d bytes", r, end)
			}
		}
		for _, l := range []ref{c.aud, c.scopes, c.unsafe} {
			if l.n > 0 && (l.off < uint32(claimsOverhead) || l.off%4 != 0 || uint64(l.off)+uint64(l.n)*uint64(sizeRef) > end) {
				t.Fatalf("list %+v outside %d bytes", l, end)
			}
			for _, r := range c.list(l) {
				if r.n > 0 && uint64(r.off)+uint64(r.n) > end {
					t.Fatalf("ref %+v outside %d bytes", r, end)
				}
			}
		}
		checkClaims(t, c, raw, signed)
	})
}
