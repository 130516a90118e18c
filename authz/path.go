package authz

import (
	"strings"
)

// PathParameters says what Check does with a path segment holding ';'.
// Envoy leaves ';' alone, and Java servlet containers (Tomcat, Jetty,
// Spring) read ";…" as path parameters and drop them: "/public/..;/read"
// is "/public/.." there, which resolves to "/read". So a path with ';' must
// either be refused, or be read the way the upstream reads it.
type PathParameters uint8

const (
	// RejectPathParameters refuses a path with ';' anywhere (the default).
	RejectPathParameters PathParameters = iota
	// StripPathParameters drops what follows ';' in each segment, up to the
	// next '/', before the path is decoded and its dot segments resolved,
	// as servlet containers do. An encoded ';' (%3B) is still refused: no
	// upstream agrees on what it means.
	StripPathParameters
)

// NormalizePath returns the path of a request target for route matching:
// without query or fragment, percent-decoded, with "." and ".." segments
// resolved (RFC 3986 §5.2.4), and path parameters refused or stripped (see
// PathParameters). It rejects, with ErrBadPath, a path that could be read
// two ways:
//   - one that does not start with '/', or holds a space, a control byte or
//     a backslash;
//   - bad percent-encoding, an encoded slash or backslash (%2F, %5C): an
//     upstream might read those as separators, and "/read/..%2Fdelete" must
//     not borrow the rule of "/read";
//   - an encoded control byte or NUL (%00, %0A, %7F);
//   - a path encoded twice ("%25" followed by two hex digits, as in
//     %252e, or a "%" that decoding makes, as in %252%65): an upstream
//     that decodes once more sees another path;
//   - an empty segment ("//"), left as it is or made by stripping path
//     parameters ("/;/admin"): Envoy's merge_slashes, Tomcat and others
//     read "//admin" as "/admin", so it must not miss the rule of "/admin";
//   - ';' (unless params is StripPathParameters) and %3B.
//
// The common case, a clean path, costs no allocation.
func NormalizePath(target string, params PathParameters) (string, error) {
	if i := strings.IndexAny(target, "?#"); i >= 0 {
		target = target[:i]
	}
	if target == "" || target[0] != '/' {
		return "", ErrBadPath
	}
	clean := true
	for i := 0; i < len(target); i++ {
		switch c := target[i]; {
		case c == '\\':
			return "", ErrBadPath
		case c == '%':
			if i+2 >= len(target) || !isHex(target[i+1]) || !isHex(target[i+2]) {
				return "", ErrBadPath
			}
			switch d := unhex(target[i+1])<<4 | unhex(target[i+2]); {
			case d == '/', d == '\\', d == ';', d < 0x20, d == 0x7f:
				return "", ErrBadPath
			case d == '%' && i+4 < len(target) && isHex(target[i+3]) && isHex(target[i+4]):
				return "", ErrBadPath // encoded twice
			}
			clean = false
		case c == ';':
			if params != StripPathParameters {
				return "", ErrBadPath
			}
			clean = false
		case c == '.' && (target[i-1] == '/'):
			clean = false // a segment starting with '.' may be a dot segment
		case c < 0x21 || c == 0x7f:
			return "", ErrBadPath // controls and spaces are never in a valid request target
		}
	}
	if clean {
		if strings.Contains(target, "//") {
			return "", ErrBadPath
		}
		return target, nil
	}
	var b strings.Builder
	b.Grow(len(target))
	for i := 0; i < len(target); i++ {
		switch c := target[i]; c {
		case '%':
			b.WriteByte(unhex(target[i+1])<<4 | unhex(target[i+2]))
			i += 2
		case ';': // only with StripPathParameters: skip to the segment's end
			if j := strings.IndexByte(target[i:], '/'); j >= 0 {
				i += j - 1
			} else {
				i = len(target)
			}
		default:
			b.WriteByte(c)
		}
	}
	decoded := b.String()
	if strings.Contains(decoded, "//") || encodedAgain(decoded) {
		return "", ErrBadPath
	}
	return removeDotSegments(decoded), nil
}

// encodedAgain reports whether decoding made a percent-encoding: a second
// decoder would read another path.
func encodedAgain(s string) bool {
	for i := strings.IndexByte(s, '%'); i >= 0 && i+2 < len(s); {
		if isHex(s[i+1]) && isHex(s[i+2]) {
			return true
		}
		j := strings.IndexByte(s[i+1:], '%')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return false
}

func removeDotSegments(p string) string {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// BearerToken reads "Bearer <token>" (RFC 6750 §2.1): the scheme in any
// case, one or more spaces, and one b64token. Anything else (another
// scheme, two tokens, a comma from a repeated header) is ErrBadAuthorization.
func BearerToken(header string) (string, error) {
	tok, err := splitBearer(header)
	if err != nil {
		return "", ErrBadAuthorization
	}
	if !validB64Token(tok) {
		return "", ErrBadAuthorization
	}
	return tok, nil
}

// splitBearer does the part of BearerToken that needs no scan byte by byte:
// the scheme, and no second token. A token the verified-token cache holds
// passed validB64Token already (its bytes are base64url and dots), so the
// full check can wait for a cache miss.
func splitBearer(header string) (string, error) {
	scheme, rest, ok := strings.Cut(header, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", errNotBearer
	}
	if !ok {
		return "", ErrBadAuthorization
	}
	tok := strings.TrimLeft(rest, " ")
	if tok == "" || strings.IndexByte(tok, ' ') >= 0 || strings.IndexByte(tok, ',') >= 0 {
		return "", ErrBadAuthorization
	}
	return tok, nil
}

// errNotBearer is an Authorization header of another scheme (Basic, say):
// no bearer token at all, as RFC 6750 §3.1 reads it.
var errNotBearer error = &rejection{ReasonTokenMissing}

// validB64Token reports whether tok is a b64token:
// 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func validB64Token(tok string) bool {
	i := 0
	for i < len(tok) && charClass[tok[i]]&classB64Token != 0 {
		i++
	}
	if i == 0 {
		return false
	}
	for ; i < len(tok); i++ {
		if tok[i] != '=' {
			return false
		}
	}
	return true
}

// Character classes, one table lookup per byte on the hot path.
const (
	classB64URL   = 1 << iota // unpadded base64url (RFC 4648 §5)
	classB64Token             // RFC 6750 b64token, without '='
)

// charClass is computed once and never written afterwards.
var charClass = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		if 'A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '-' || b == '_' {
			t[c] |= classB64URL | classB64Token
		}
		if b == '.' || b == '~' || b == '+' || b == '/' {
			t[c] |= classB64Token
		}
	}
	return t
}()
