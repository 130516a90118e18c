package authz

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// DefaultMaxTokenSize caps the size of a token before any parsing.
const DefaultMaxTokenSize = 16 << 10

// Bounds of a JOSE header, parsed in full before the signature is checked.
const (
	maxHeaderSize   = 2 << 10
	maxHeaderValues = 32
)

// b64 decodes base64url without padding and rejects non-canonical trailing
// bits. The standard decoder silently skips '\r' and '\n', so callers check
// the alphabet first (see validSegment).
var b64 = base64.RawURLEncoding.Strict()

// forbiddenHeaders are JOSE header members whose mere presence rejects a
// token: vakt supports no extensions (crit, b64) and never follows or trusts
// a key that a token points to or carries (jku, x5u, jwk).
var forbiddenHeaders = [...]string{"crit", "b64", "jku", "x5u", "jwk"}

// parsedToken is a compact JWS whose structure has been checked but whose
// signature and claims have not.
type parsedToken struct {
	alg          string
	kid          string
	typ          string // the typ header, "" when absent
	signingInput string // "header.payload", as signed
	signature    []byte
	payload      string // decoded JSON object
}

// parseCompact checks the structure of a compact JWS (RFC 7515 §7.1) and
// decodes its header. It rejects, in this order:
//   - tokens over maxSize bytes (ErrTooLarge);
//   - JSON serialization and JWE (ErrUnsupported);
//   - anything but three base64url segments with no padding, no characters
//     outside the URL-safe alphabet and canonical trailing bits (ErrMalformed);
//   - a header or payload that is not a JSON object, or that repeats a member
//     name (ErrMalformed);
//   - a header without a string alg, or alg "none" (ErrAlgorithmNotAllowed);
//   - crit, b64, jku, x5u and jwk headers (ErrHeaderNotAllowed): vakt never
//     follows a key reference a token carries, and supports no extensions.
func parseCompact(token string, maxSize int) (*parsedToken, error) {
	if len(token) > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(token), maxSize)
	}
	if token == "" {
		return nil, fmt.Errorf("%w: token is empty", ErrMalformed)
	}
	if token[0] == '{' {
		return nil, fmt.Errorf("%w: JWS JSON serialization", ErrUnsupported)
	}
	// Forward scans (IndexByte is vectorised), each byte looked at once:
	// the signature, a third of the token, is searched for a third dot only.
	first := strings.IndexByte(token, '.')
	if first < 0 {
		return nil, fmt.Errorf("%w: expected three dot-separated segments", ErrMalformed)
	}
	second := strings.IndexByte(token[first+1:], '.')
	if second < 0 {
		return nil, fmt.Errorf("%w: expected three dot-separated segments", ErrMalformed)
	}
	last := first + 1 + second
	if strings.IndexByte(token[last+1:], '.') >= 0 {
		if strings.Count(token, ".") == 4 {
			return nil, fmt.Errorf("%w: encrypted tokens (JWE)", ErrUnsupported)
		}
		return nil, fmt.Errorf("%w: expected three dot-separated segments", ErrMalformed)
	}
	hSeg, pSeg, sSeg := token[:first], token[first+1:last], token[last+1:]
	for _, seg := range [...]string{hSeg, pSeg, sSeg} {
		if !validSegment(seg) {
			return nil, fmt.Errorf("%w: segment is not unpadded base64url", ErrMalformed)
		}
	}

	// The header is parsed before the signature is checked: it is bounded
	// so that it costs no more than a normal one. Real headers are a few
	// hundred bytes of a handful of members.
	if len(hSeg) > b64.EncodedLen(maxHeaderSize) {
		return nil, fmt.Errorf("%w: header is larger than %d bytes", ErrMalformed, maxHeaderSize)
	}
	hdrJSON, err := decodeSegment(hSeg, "header")
	if err != nil {
		return nil, err
	}
	// A map, not a struct: encoding/json matches struct fields without regard
	// to case, and "KID" is not "kid".
	h, _, err := parseJSONObjectLimit(hdrJSON, maxHeaderValues)
	if err != nil {
		return nil, fmt.Errorf("%w: header %v", ErrMalformed, err)
	}
	if _, ok := h["enc"]; ok {
		return nil, fmt.Errorf("%w: encrypted tokens (JWE)", ErrUnsupported)
	}
	var alg, kid, typ string
	if err := headerString(h, "alg", &alg); err != nil {
		return nil, err
	}
	if alg == "" {
		return nil, fmt.Errorf("%w: header has no alg", ErrMalformed)
	}
	if strings.EqualFold(alg, "none") {
		return nil, fmt.Errorf("%w: %s", ErrAlgorithmNotAllowed, quoted(alg))
	}
	for _, name := range forbiddenHeaders {
		if _, ok := h[name]; ok {
			return nil, fmt.Errorf("%w: %s", ErrHeaderNotAllowed, name)
		}
	}
	if err := headerString(h, "kid", &kid); err != nil {
		return nil, err
	}
	if err := headerString(h, "typ", &typ); err != nil {
		return nil, err
	}
	if sSeg == "" {
		return nil, fmt.Errorf("%w: signature is empty", ErrSignatureInvalid)
	}

	payload, err := decodeSegment(pSeg, "payload")
	if err != nil {
		return nil, err
	}
	sig, err := b64.DecodeString(sSeg)
	if err != nil {
		return nil, fmt.Errorf("%w: signature is not base64url", ErrMalformed)
	}
	return &parsedToken{
		alg:          alg,
		kid:          kid,
		typ:          typ,
		signingInput: token[:last],
		signature:    sig,
		payload:      payload,
	}, nil
}

// headerString reads an optional string member of the header.
func headerString(h map[string]any, name string, dst *string) error {
	raw, ok := h[name]
	if !ok {
		return nil
	}
	s, ok := raw.(string)
	if !ok {
		return fmt.Errorf("%w: header %s is not a string", ErrMalformed, name)
	}
	*dst = s
	return nil
}

// validSegment reports whether s uses only the unpadded base64url alphabet.
func validSegment(s string) bool {
	for i := 0; i < len(s); i++ {
		if charClass[s[i]]&classB64URL == 0 {
			return false
		}
	}
	return true
}

func decodeSegment(seg, what string) (string, error) {
	if seg == "" {
		return "", fmt.Errorf("%w: %s is empty", ErrMalformed, what)
	}
	out, err := decodeString(seg)
	if err != nil {
		return "", fmt.Errorf("%w: %s is not canonical base64url", ErrMalformed, what)
	}
	return out, nil
}

// decodeString is b64.DecodeString into a string, which the parser's
// strings are substrings of: in one allocation, as DecodeString's, a
// thousand characters at a time through an array on the stack (whole
// quanta but for the last, so that Strict checks the same bits).
func decodeString(seg string) (string, error) {
	const chars = 1024
	var b strings.Builder
	b.Grow(b64.DecodedLen(len(seg)))
	var chunk [chars / 4 * 3]byte
	for seg != "" {
		n := min(len(seg), chars)
		m, err := b64.Decode(chunk[:], []byte(seg[:n])) // not copied: Decode only reads it
		if err != nil {
			return "", err
		}
		b.Write(chunk[:m])
		seg = seg[n:]
	}
	return b.String(), nil
}
