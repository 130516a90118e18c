package authz

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Bounds of a token's header or payload. Real claims nest two or three
// levels and hold a few dozen values; the bounds keep what a signed but
// hostile token can make vakt build small.
const (
	maxJSONDepth  = 32
	maxJSONValues = 4096 // values of every kind, at every depth
)

var (
	errJSONSyntax    = errors.New("not valid JSON")
	errJSONDuplicate = errors.New("repeats a member name")
	errJSONDepth     = errors.New("nests too deep")
	errJSONNotObject = errors.New("is not a JSON object")
	errJSONNumber    = errors.New("holds a number out of range")
	errJSONValues    = errors.New("holds too many values")
)

// parseJSONObject parses data, which must be exactly one JSON object
// (RFC 8259), into the values encoding/json would produce with UseNumber:
// map[string]any, []any, string, json.Number, bool and nil. Unlike
// encoding/json it rejects a member name repeated within one object, at any
// depth (RFC 7515 §5.2, RFC 7519 §4: two parsers must not read different
// claims from one token), and nesting deeper than maxJSONDepth. Invalid UTF-8
// and lone surrogates become U+FFFD, as with encoding/json.
//
// Its strings, names and numbers are substrings of data wherever they need
// no unescaping, not copies: a string kept keeps data alive; what the
// verified-token cache keeps it copies (newClaims).
func parseJSONObject(data string) (map[string]any, error) {
	m, _, err := parseJSONObjectSize(data)
	return m, err
}

// parseJSONObjectHint is parseJSONObject with the map sized for members
// top-level members (as scanTop counted them), so that it does not grow
// member by member. Nested objects get no hint: see object.
func parseJSONObjectHint(data string, members int) (map[string]any, error) {
	p := jsonParser{data: data, maxValues: maxJSONValues, members: members}
	return p.top()
}

// parseJSONObjectSize is parseJSONObject, also returning about how many
// bytes of memory the result holds (for the verified-token cache's bound).
func parseJSONObjectSize(data string) (map[string]any, int64, error) {
	return parseJSONObjectLimit(data, maxJSONValues)
}

// parseJSONObjectLimit is parseJSONObjectSize with a bound of its own on
// the values (a JOSE header holds a handful).
func parseJSONObjectLimit(data string, maxValues int) (map[string]any, int64, error) {
	p := jsonParser{data: data, maxValues: maxValues}
	v, err := p.top()
	return v, p.size, err
}

// top parses the whole of p.data as one object.
func (p *jsonParser) top() (map[string]any, error) {
	p.skipSpace()
	if p.i >= len(p.data) || p.data[p.i] != '{' {
		return nil, errJSONNotObject
	}
	v, err := p.object(0)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.i != len(p.data) {
		return nil, errJSONSyntax
	}
	return v, nil
}

type jsonParser struct {
	data      string
	i         int
	values    int   // values parsed so far
	maxValues int   // maxJSONValues when 0
	size      int64 // bytes the result holds, estimated (see count)
	members   int   // the top-level object's members, when known: its map's size
}

// Memory the parser's values hold, estimated from Go's representation: a
// map header and its slots, an interface's boxed string header, a slice.
// A test (TestCacheEntrySize) holds the estimate to the measured heap.
const (
	sizeMap      = 64
	sizeMapSlot  = 40 // key and value (two-word each), control byte, load factor
	sizeMapSlots = 8  // a map's first group
	sizeBoxed    = 16 // a string or json.Number stored in an interface
	sizeSlice    = 24
	sizeElem     = 16 // an interface in a slice
	sizeString   = 16 // a string header
)

// count notes one more value, refusing more than maxJSONValues.
func (p *jsonParser) count() error {
	limit := p.maxValues
	if limit == 0 {
		limit = maxJSONValues
	}
	if p.values++; p.values > limit {
		return errJSONValues
	}
	return nil
}

func (p *jsonParser) skipSpace() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonParser) value(depth int) (any, error) {
	if err := p.count(); err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.i >= len(p.data) {
		return nil, errJSONSyntax
	}
	switch c := p.data[p.i]; {
	case c == '{':
		return p.object(depth + 1)
	case c == '[':
		return p.array(depth + 1)
	case c == '"':
		s, err := p.string()
		p.size += sizeBoxed + int64(len(s))
		return s, err
	case c == '-' || '0' <= c && c <= '9':
		n, err := p.number()
		p.size += sizeBoxed + int64(len(n))
		return n, err
	default:
		for _, lit := range [...]struct {
			text string
			v    any
		}{{"true", true}, {"false", false}, {"null", nil}} {
			if len(p.data)-p.i >= len(lit.text) && p.data[p.i:p.i+len(lit.text)] == lit.text {
				p.i += len(lit.text)
				return lit.v, nil
			}
		}
		return nil, errJSONSyntax
	}
}

func (p *jsonParser) object(depth int) (map[string]any, error) {
	if depth > maxJSONDepth {
		return nil, errJSONDepth
	}
	p.i++ // '{'
	// No size hint below the top: a hint reserves room before a single
	// member is seen, which thousands of empty objects would turn into
	// megabytes. The top level's members were counted by a scan already.
	var m map[string]any
	if depth == 0 && p.members > 0 {
		m = make(map[string]any, p.members)
	} else {
		m = map[string]any{}
	}
	defer func() { p.size += sizeMap + sizeMapSlot*int64(max(len(m), sizeMapSlots)) }()
	p.skipSpace()
	if p.i < len(p.data) && p.data[p.i] == '}' {
		p.i++
		return m, nil
	}
	for {
		p.skipSpace()
		if p.i >= len(p.data) || p.data[p.i] != '"' {
			return nil, errJSONSyntax
		}
		name, err := p.string()
		if err != nil {
			return nil, err
		}
		p.size += int64(len(name))
		if _, dup := m[name]; dup {
			return nil, errJSONDuplicate
		}
		p.skipSpace()
		if p.i >= len(p.data) || p.data[p.i] != ':' {
			return nil, errJSONSyntax
		}
		p.i++
		v, err := p.value(depth)
		if err != nil {
			return nil, err
		}
		m[name] = v
		p.skipSpace()
		if p.i >= len(p.data) {
			return nil, errJSONSyntax
		}
		switch p.data[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return m, nil
		default:
			return nil, errJSONSyntax
		}
	}
}

func (p *jsonParser) array(depth int) ([]any, error) {
	if depth > maxJSONDepth {
		return nil, errJSONDepth
	}
	p.i++ // '['
	a := []any{}
	defer func() { p.size += sizeSlice + sizeElem*int64(cap(a)) }()
	p.skipSpace()
	if p.i < len(p.data) && p.data[p.i] == ']' {
		p.i++
		return a, nil
	}
	for {
		v, err := p.value(depth)
		if err != nil {
			return nil, err
		}
		a = append(a, v)
		p.skipSpace()
		if p.i >= len(p.data) {
			return nil, errJSONSyntax
		}
		switch p.data[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return a, nil
		default:
			return nil, errJSONSyntax
		}
	}
}

// string reads a string literal starting at the opening quote.
func (p *jsonParser) string() (string, error) {
	start := p.i + 1
	// Fast path: printable ASCII without escapes, the shape of nearly every
	// claim, is a substring of the data.
	for j := start; j < len(p.data); j++ {
		c := p.data[j]
		if c == '"' {
			p.i = j + 1
			return p.data[start:j], nil
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
	}
	var buf strings.Builder
	for j := start; j < len(p.data); {
		c := p.data[j]
		switch {
		case c == '"':
			p.i = j + 1
			return buf.String(), nil
		case c < 0x20:
			return "", errJSONSyntax
		case c == '\\':
			if j+1 >= len(p.data) {
				return "", errJSONSyntax
			}
			switch e := p.data[j+1]; e {
			case '"', '\\', '/':
				buf.WriteByte(e)
				j += 2
			case 'b':
				buf.WriteByte('\b')
				j += 2
			case 'f':
				buf.WriteByte('\f')
				j += 2
			case 'n':
				buf.WriteByte('\n')
				j += 2
			case 'r':
				buf.WriteByte('\r')
				j += 2
			case 't':
				buf.WriteByte('\t')
				j += 2
			case 'u':
				r, ok := hex4(p.data, j+2)
				if !ok {
					return "", errJSONSyntax
				}
				j += 6
				if utf16.IsSurrogate(r) {
					r2, ok := rune(-1), false
					if j+1 < len(p.data) && p.data[j] == '\\' && p.data[j+1] == 'u' {
						r2, ok = hex4(p.data, j+2)
					}
					if dec := utf16.DecodeRune(r, r2); ok && dec != utf8.RuneError {
						r = dec
						j += 6
					} else {
						r = utf8.RuneError
					}
				}
				buf.WriteRune(r)
			default:
				return "", errJSONSyntax
			}
		case c < utf8.RuneSelf:
			buf.WriteByte(c)
			j++
		default:
			r, size := utf8.DecodeRuneInString(p.data[j:])
			buf.WriteRune(r) // RuneError for invalid bytes
			j += size
		}
	}
	return "", errJSONSyntax
}

func hex4(b string, at int) (rune, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	var r rune
	for i := at; i < at+4; i++ {
		c := b[i]
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// number reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?.
func (p *jsonParser) number() (json.Number, error) {
	start := p.i
	d := p.data
	i := p.i
	if d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && '1' <= d[i] && d[i] <= '9':
		for i < len(d) && '0' <= d[i] && d[i] <= '9' {
			i++
		}
	default:
		return "", errJSONSyntax
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return "", errJSONSyntax
		}
		for i < len(d) && '0' <= d[i] && d[i] <= '9' {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return "", errJSONSyntax
		}
		for i < len(d) && '0' <= d[i] && d[i] <= '9' {
			i++
		}
	}
	p.i = i
	// A number no float64 can hold (1e999) would be one value to one face
	// and an error to another: refuse it here, once, for every face.
	if f, err := strconv.ParseFloat(d[start:i], 64); err != nil || math.IsInf(f, 0) {
		return "", errJSONNumber
	}
	return json.Number(d[start:i]), nil
}
