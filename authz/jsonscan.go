package authz

import (
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// Before a token's signature is checked, vakt reads only what choosing the
// provider and the cheap checks need: iss, exp, nbf, iat and aud, found by
// scanning the payload's top-level members without building anything. The
// payload is parsed in full (and strictly: no repeated member, every value
// checked) only once the signature has verified, so that nothing a client
// controls costs more than a scan of its bytes until then.

// span is where a value lies in the payload: [start, end), or end 0 when the
// member is absent.
type span struct{ start, end int }

func (s span) present() bool { return s.end > 0 }

// topClaims are the registered claims' values, found by scanTop.
type topClaims struct {
	data                    string
	iss, exp, nbf, iat, aud span
	members                 int // top-level members seen
}

// scanTop walks the top-level members of the payload object data. It
// checks the structure it needs to skip values (strings, nesting up to
// maxJSONDepth), no more: parseJSONObject checks the rest after the
// signature. A member name written with escapes ("i\u0073s") counts as the
// name it spells. When a name repeats, the first is kept; the full parse
// refuses the token anyway.
func scanTop(data string) (topClaims, error) {
	t := topClaims{data: data}
	i := skipWS(data, 0)
	if i >= len(data) || data[i] != '{' {
		return t, errJSONNotObject
	}
	i = skipWS(data, i+1)
	if i < len(data) && data[i] == '}' {
		return t, nil
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return t, errJSONSyntax
		}
		end, escaped, err := skipString(data, i)
		if err != nil {
			return t, err
		}
		name := data[i:end] // quoted
		i = skipWS(data, end)
		if i >= len(data) || data[i] != ':' {
			return t, errJSONSyntax
		}
		i = skipWS(data, i+1)
		vend, err := skipValue(data, i)
		if err != nil {
			return t, err
		}
		t.members++
		if dst := t.slot(name, escaped); dst != nil && !dst.present() {
			*dst = span{i, vend}
		}
		i = skipWS(data, vend)
		if i >= len(data) {
			return t, errJSONSyntax
		}
		switch data[i] {
		case ',':
			i = skipWS(data, i+1)
		case '}':
			return t, nil
		default:
			return t, errJSONSyntax
		}
	}
}

// slot is where the value of the member name (a string literal, quoted)
// goes, or nil for a member not read before the signature.
func (t *topClaims) slot(quoted string, escaped bool) *span {
	name := quoted[1 : len(quoted)-1]
	if escaped {
		if len(quoted) > 34 {
			return nil
		}
		p := jsonParser{data: quoted}
		var err error
		if name, err = p.string(); err != nil {
			return nil
		}
	}
	switch name {
	case "iss":
		return &t.iss
	case "exp":
		return &t.exp
	case "nbf":
		return &t.nbf
	case "iat":
		return &t.iat
	case "aud":
		return &t.aud
	}
	return nil
}

func skipWS(d string, i int) int {
	for i < len(d) {
		switch d[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index after the string literal starting at d[i]
// ('"'), and whether it holds an escape.
func skipString(d string, i int) (end int, escaped bool, err error) {
	for j := i + 1; j < len(d); j++ {
		switch c := d[j]; {
		case c == '"':
			return j + 1, escaped, nil
		case c == '\\':
			escaped = true
			j++
		case c < 0x20:
			return 0, false, errJSONSyntax
		}
	}
	return 0, false, errJSONSyntax
}

// skipValue returns the index after the value starting at d[i]. It nests
// by counting, without recursion, and leaves checking the value to the
// full parse: only where it ends matters here.
func skipValue(d string, i int) (int, error) {
	if i >= len(d) {
		return 0, errJSONSyntax
	}
	switch d[i] {
	case '"':
		end, _, err := skipString(d, i)
		return end, err
	case '{', '[':
		depth := 0
		for i < len(d) {
			switch d[i] {
			case '"':
				end, _, err := skipString(d, i)
				if err != nil {
					return 0, err
				}
				i = end
				continue
			case '{', '[':
				if depth++; depth > maxJSONDepth {
					return 0, errJSONDepth
				}
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1, nil
				}
			}
			i++
		}
		return 0, errJSONSyntax
	default: // a number or a literal: up to the next delimiter
		j := i
		for j < len(d) {
			if c := d[j]; c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r' {
				break
			}
			j++
		}
		if j == i {
			return 0, errJSONSyntax
		}
		return j, nil
	}
}

// str reads a string claim: ok is false when absent; an error when it is
// not a string. A string without escapes is not copied: it points into the
// payload, and is used only while the token is checked.
func (t *topClaims) str(s span, name string) (string, bool, error) {
	if !s.present() {
		return "", false, nil
	}
	raw := t.data[s.start:s.end]
	if raw[0] != '"' {
		return "", false, fmt.Errorf("%w: %s is not a string", ErrClaimInvalid, name)
	}
	if v, ok := plainString(raw); ok {
		return v, true, nil
	}
	p := jsonParser{data: raw}
	v, err := p.string()
	if err != nil {
		return "", false, fmt.Errorf("%w: payload %v", ErrMalformed, err)
	}
	return v, true, nil
}

// plainString returns a string literal without escapes or non-ASCII as a
// substring of raw.
func plainString(raw string) (string, bool) {
	body := raw[1 : len(raw)-1]
	for i := 0; i < len(body); i++ {
		if c := body[i]; c == '\\' || c >= utf8.RuneSelf {
			return "", false
		}
	}
	return body, true
}

// number reads a NumericDate: ok is false when absent; an error when it is
// not a JSON number (a numeric string is none) or out of range.
func (t *topClaims) number(s span, name string) (float64, bool, error) {
	if !s.present() {
		return 0, false, nil
	}
	raw := t.data[s.start:s.end]
	if c := raw[0]; c != '-' && (c < '0' || c > '9') {
		return 0, false, fmt.Errorf("%w: %s is not a number", ErrClaimInvalid, name)
	}
	f, err := strconv.ParseFloat(raw, 64)
	if err != nil || math.IsInf(f, 0) {
		return 0, false, fmt.Errorf("%w: %s is out of range", ErrClaimInvalid, name)
	}
	return f, true, nil
}

// audience calls match with each audience the token names (aud a string,
// or an array of strings) until it returns true, and reports whether one
// did. An aud of another shape is an error; so is an array of more than
// maxAudiences.
func (t *topClaims) audience(match func(string) bool) (bool, error) {
	if !t.aud.present() {
		return false, nil
	}
	raw := t.data[t.aud.start:t.aud.end]
	switch raw[0] {
	case '"':
		v, _, err := t.str(t.aud, "aud")
		if err != nil {
			return false, err
		}
		return match(v), nil
	case '[':
	default:
		return false, fmt.Errorf("%w: aud is neither a string nor an array of strings", ErrClaimInvalid)
	}
	i, n := skipWS(raw, 1), 0
	for i < len(raw) && raw[i] != ']' {
		if raw[i] != '"' {
			return false, fmt.Errorf("%w: aud holds a value that is not a string", ErrClaimInvalid)
		}
		if n++; n > maxAudiences {
			return false, errTooManyAudiences
		}
		end, _, err := skipString(raw, i)
		if err != nil {
			return false, fmt.Errorf("%w: payload %v", ErrMalformed, err)
		}
		v, _, err := t.str(span{t.aud.start + i, t.aud.start + end}, "aud")
		if err != nil {
			return false, err
		}
		if match(v) {
			return true, nil
		}
		i = skipWS(raw, end)
		if i < len(raw) && raw[i] == ',' {
			i = skipWS(raw, i+1)
		}
	}
	return false, nil
}
