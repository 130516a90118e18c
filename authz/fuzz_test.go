package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/internal/idptest"
)

// FuzzParseCompact: the structural parser never panics, every rejection
// wraps a sentinel, and what it accepts has three segments and an alg.
func FuzzParseCompact(f *testing.F) {
	for _, s := range []string{
		"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
		"eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
		"a.b.c.d.e", "{}", "", "...", "eyJ9.e30.e30",
		"eyJhbGciOiJSUzI1NiIsImFsZyI6IlJTMjU2In0.e30.c2ln",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		pt, err := parseCompact(tok, DefaultMaxTokenSize)
		if err != nil {
			for _, s := range []error{ErrMalformed, ErrTooLarge, ErrUnsupported, ErrAlgorithmNotAllowed, ErrHeaderNotAllowed, ErrSignatureInvalid} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error without a sentinel: %v", err)
		}
		if pt.alg == "" || strings.Count(tok, ".") != 2 || !strings.HasPrefix(tok, pt.signingInput+".") {
			t.Fatalf("accepted %q as %+v", tok, pt)
		}
		// A payload it accepts is a JSON object decodeObject can read, and
		// claims parsed from it say what the object does.
		if c, raw, err := parseClaims(pt.payload, pt.signingInput, 0); err == nil {
			checkClaims(t, c, raw, pt.signingInput)
		}
	})
}

// FuzzParseJSONObject compares the strict parser with encoding/json: on
// input encoding/json reads as an object without repeated names (and not
// nested absurdly deep) both give the same value; everything else the strict
// parser rejects.
func FuzzParseJSONObject(f *testing.F) {
	for _, s := range []string{
		`{"a":1,"a":2}`, `{"a":{"b":1,"b":2}}`, `{"a":[{"b":1},{"b":1}]}`, `{"\u0061":1,"a":2}`,
		`{"a\"":1,"a":2}`, `{"x":"{\"x\":1}"}`, `{"s":"\ud83d\ude00 \ud800 \u00e9\n"}`, `{"n":-0.5e+10,"t":true,"f":false,"z":null}`,
		`{"a":01}`, `{"a":1.}`, "{\"a\":\"\xff\"}", ` {"a":[]} `, `{"a":1}x`, `[1]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := parseJSONObject(string(data))
		var want map[string]any
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		werr := dec.Decode(&want)
		if werr == nil {
			if _, terr := dec.Token(); terr != io.EOF {
				werr = errors.New("trailing data")
			}
		}
		if werr == nil && bytes.TrimSpace(data)[0] != '{' {
			werr = errors.New("not an object")
		}
		_, dup := referenceDuplicate(data)
		switch {
		case werr != nil || dup:
			if err == nil {
				t.Fatalf("%q: accepted, encoding/json: %v, duplicate: %v", data, werr, dup)
			}
		case errors.Is(err, errJSONDepth):
		case err != nil:
			t.Fatalf("%q: rejected valid object: %v", data, err)
		case !reflect.DeepEqual(got, want):
			t.Fatalf("%q: got %#v, encoding/json %#v", data, got, want)
		}
	})
}

// referenceDuplicate finds the first repeated member name with json.Decoder.
func referenceDuplicate(data []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		obj       bool
		names     map[string]bool
		expectKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				if top != nil && top.obj {
					top.expectKey = true
				}
				stack = append(stack, &frame{obj: true, names: map[string]bool{}, expectKey: true})
			case '[':
				if top != nil && top.obj {
					top.expectKey = true
				}
				stack = append(stack, &frame{})
			default:
				stack = stack[:len(stack)-1]
			}
			continue
		}
		if top != nil && top.obj {
			if top.expectKey {
				k := tok.(string)
				if top.names[k] {
					return k, true
				}
				top.names[k] = true
				top.expectKey = false
			} else {
				top.expectKey = true
			}
		}
	}
}

// FuzzValidate runs whole validations on mutated tokens against a real key:
// no panic, and nothing but the seed itself is ever accepted unchanged.
func FuzzValidate(f *testing.F) {
	k := idptest.NewKey(f, "k1", "ES256")
	p, _ := staticProvider(f, "a", "https://a.example", k)
	now := time.Unix(1_800_000_000, 0)
	v, err := NewValidator(ValidatorConfig{Providers: []*Provider{p}, CacheSize: -1, Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	good := token(f, k, "https://a.example", now.Add(time.Hour))
	f.Add(good)
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := v.Validate(context.Background(), "a", tok)
		if err == nil && c.Issuer() != "https://a.example" {
			t.Fatalf("accepted a token of issuer %q", c.Issuer())
		}
	})
}

// FuzzParseKeySet: whatever a JWKS endpoint returns, parsing never panics,
// and every key it keeps can verify with at least one algorithm.
func FuzzParseKeySet(f *testing.F) {
	k := idptest.NewKey(f, "k1", "ES256")
	r := idptest.NewKey(f, "r1", "RS256")
	f.Add([]byte(idptest.JSON(f, map[string]any{"keys": []any{k.JWK(f), r.JWK(f)}})))
	f.Add([]byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, _, err := ParseKeySet(data)
		if err != nil {
			return
		}
		for kid, key := range set.byID {
			if len(key.algs) == 0 || key.ID != kid {
				t.Fatalf("key %q kept with algs %v", kid, key.algs)
			}
		}
	})
}

// checkClaims compares what the accessors of c (substrings of its
// buffer) say with raw, the claims it was parsed from.
func checkClaims(t *testing.T, c *Claims, raw map[string]any, signed string) {
	t.Helper()
	str := func(name string) string { s, _ := raw[name].(string); return s }
	caller := str("client_id")
	if caller == "" {
		caller = str("azp")
	}
	var aud []string
	switch a := raw["aud"].(type) {
	case string:
		aud = []string{a}
	case []any:
		aud = []string{}
		for _, e := range a {
			aud = append(aud, e.(string))
		}
	}
	if c.Issuer() != str("iss") || c.Subject() != str("sub") || c.Caller() != caller || c.IDP() != str("idp") ||
		c.ID() != str("jti") || c.signed() != signed || !slices.Equal(c.Audience(), aud) ||
		(c.Audience() == nil) != (aud == nil) || c.ScopeText() != strings.Join(c.Scopes(), " ") {
		t.Fatalf("claims %+v from %v", c, raw)
	}
	for _, a := range aud {
		if !c.HasAudience(a) {
			t.Fatalf("HasAudience(%q) false", a)
		}
	}
	for _, s := range c.Scopes() {
		if !c.HasScope(s) {
			t.Fatalf("HasScope(%q) false", s)
		}
	}
	if !reflect.DeepEqual(c.Raw(), raw) {
		t.Fatalf("Raw %v, parsed %v", c.Raw(), raw)
	}
}
