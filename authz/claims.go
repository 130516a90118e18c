package authz

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Claims are the claims of a verified token.
//
// A Claims is shared by every request that presents the same token
// (through the verified-token cache), and is read-only.
//
// It is two allocations: this struct, whose one pointer is buf, and buf,
// a string that holds every string the claims keep (the token's signed
// part, the few claims Check reads) one after another, then the spans of
// its lists (the audience, the scopes). The garbage collector scans one
// word of a Claims and marks buf without scanning it, however many tokens
// the cache holds; the accessors return substrings of buf. A copy of a
// Claims is a Claims like the first.
//
// Whatever keeps one of its strings beyond the request (a span, a metric
// label) keeps the whole of buf alive, so it keeps a copy (strings.Clone)
// instead.
//
// It keeps no map of the claims: Raw parses the payload again for the
// callers that want every claim (Introspect, an exchange).
type Claims struct {
	// buf is the strings (each begins where the one before it ends: see
	// ends), then the table: a span of 8 bytes (offset and length, each a
	// little-endian uint32) for each entry of the lists, the audience's
	// first, then the scopes', then the unsafe names'.
	buf string

	// exp, nbf and iat are seconds since the epoch, as in the token (nbf 0
	// when absent, for the checks; hasNbf and hasIat say whether the token
	// has them). Numbers rather than time.Time, which holds a pointer.
	exp, nbf, iat float64

	// ends are where the strings end in buf, in their order (strSigned
	// to strScopes): the first begins at 0, the table at the last's end.
	ends [numStrings]uint32

	// lists are how many entries each list has (listAud, listScopes,
	// listUnsafe). unsafe names the top-level claims that hold a string no
	// header value may carry (see headerSafe); empty for nearly every
	// token.
	lists [numLists]uint16

	// unsafeScope is set when a scope is no RFC 6749 scope-token, so that
	// ScopeText would not say truthfully which scopes the token holds.
	unsafeScope, hasNbf, hasIat, hasAud bool

	// size is how many bytes the two allocations take (a token is at
	// most 16 KiB).
	size uint32
}

// The strings of a Claims, in their order in buf.
const (
	// strSigned is the token's header.payload as it was signed, which the
	// verified-token cache compares on a hit: Raw decodes the payload from
	// it rather than the claims keeping a second, decoded copy.
	strSigned = iota
	strIss
	strSub
	strCaller // client_id, else azp
	strIDP
	strID     // jti
	strAud    // the audience's entries, one after another
	strUnsafe // the unsafe names, one after another
	strScopes // ScopeText: the scopes joined by spaces, their spans in it
	numStrings
)

// A list of a Claims: its entries are spans in the table.
type list uint8

const (
	listAud list = iota
	listScopes
	listUnsafe
	numLists
)

const (
	// spanSize is the bytes of a list entry's span in the table.
	spanSize = 8
	// claimsAlloc is what the struct of a Claims takes on the heap: its
	// size class (TestClaimsSize).
	claimsAlloc = 96
)

// str is the i-th string.
func (c *Claims) str(i int) string {
	var start uint32
	if i > 0 {
		start = c.ends[i-1]
	}
	return c.buf[start:c.ends[i]]
}

// signed is the token's header.payload.
func (c *Claims) signed() string { return c.str(strSigned) }

// entries are the list l's first entry in the table, and how many it has.
func (c *Claims) entries(l list) (first, n int) {
	for _, k := range c.lists[:l] {
		first += int(k)
	}
	return first, int(c.lists[l])
}

// count is how many entries the list l has.
func (c *Claims) count(l list) int { return int(c.lists[l]) }

// entry is the string of the i-th span of the table.
func (c *Claims) entry(i int) string {
	at := int(c.ends[numStrings-1]) + i*spanSize
	s := c.buf[at : at+spanSize]
	off := int(uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24)
	n := int(uint32(s[4]) | uint32(s[5])<<8 | uint32(s[6])<<16 | uint32(s[7])<<24)
	return c.buf[off : off+n]
}

// contains reports whether the list l holds s.
func (c *Claims) contains(l list, s string) bool {
	first, n := c.entries(l)
	for i := first; i < first+n; i++ {
		if c.entry(i) == s {
			return true
		}
	}
	return false
}

// anyOf reports whether match holds for an entry of the list l, tried in
// their order.
func (c *Claims) anyOf(l list, match func(string) bool) bool {
	first, n := c.entries(l)
	for i := first; i < first+n; i++ {
		if match(c.entry(i)) {
			return true
		}
	}
	return false
}

// strings is the list l, in a slice of the caller's own; nil when empty
// and not present.
func (c *Claims) strings(l list, present bool) []string {
	first, n := c.entries(l)
	if n == 0 && !present {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = c.entry(first + i)
	}
	return out
}

// Issuer is the token's iss.
func (c *Claims) Issuer() string { return c.str(strIss) }

// Subject is the token's sub.
func (c *Claims) Subject() string { return c.str(strSub) }

// Audience is the token's aud as a list (a string aud is one entry), in a
// slice of the caller's own; nil when the token has no aud.
func (c *Claims) Audience() []string { return c.strings(listAud, c.hasAud) }

// HasAudience reports whether the token's aud holds a.
func (c *Claims) HasAudience(a string) bool { return c.contains(listAud, a) }

// Scopes are the token's scopes, from scope (a space-separated string),
// scp (a string or an array) and permissions (an array), as identity
// providers differ, each once: in a slice of the caller's own.
func (c *Claims) Scopes() []string { return c.strings(listScopes, false) }

// ScopeText joins Scopes with spaces.
func (c *Claims) ScopeText() string { return c.str(strScopes) }

// parseClaims decodes a payload and reads the registered claims vakt checks.
// exp is required; exp, nbf and iat must be JSON numbers (a numeric string is
// not a NumericDate); iss and sub must be strings; aud a string or an array
// of strings. signed is the token's header.payload, which the claims keep (a
// copy) for Raw and for the verified-token cache's comparison; members is
// how many top-level members the payload has (scanTop), to size the map.
//
// It returns the claims and the map it parsed them from, which is the
// caller's own and is kept nowhere: a caller that wants every claim of a
// token it has just verified need not parse the payload again (Raw).
func parseClaims(payload, signed string, members int) (*Claims, map[string]any, error) {
	raw, err := parseJSONObjectHint(payload, members)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: payload %v", ErrMalformed, err)
	}
	f := claimFields{signed: signed}
	if f.iss, err = stringClaim(raw, "iss"); err != nil {
		return nil, nil, err
	}
	if f.sub, err = stringClaim(raw, "sub"); err != nil {
		return nil, nil, err
	}
	if f.aud, err = audienceClaim(raw); err != nil {
		return nil, nil, err
	}
	var t timeClaims
	var ok bool
	if t.exp, ok, err = numericDate(raw, "exp"); err != nil {
		return nil, nil, err
	} else if !ok {
		return nil, nil, fmt.Errorf("%w: exp is required", ErrClaimInvalid)
	}
	if t.nbf, t.hasNbf, err = numericDate(raw, "nbf"); err != nil {
		return nil, nil, err
	}
	if t.iat, t.hasIat, err = numericDate(raw, "iat"); err != nil {
		return nil, nil, err
	}
	var unsafeScope bool
	if f.scopes, unsafeScope, err = scopes(raw); err != nil {
		return nil, nil, err
	}
	f.unsafe = unsafeClaims(raw)
	if s, ok := raw["client_id"].(string); ok && s != "" {
		f.caller = s
	} else {
		f.caller, _ = raw["azp"].(string)
	}
	f.idp, _ = raw["idp"].(string)
	f.id, _ = raw["jti"].(string)
	return newClaims(&f, &t, unsafeScope), raw, nil
}

// claimFields are the strings a Claims keeps, before newClaims copies them.
type claimFields struct {
	signed, iss, sub, caller, idp, id string
	aud, scopes, unsafe               []string
}

// newClaims makes the Claims of f, with the dates t: the struct, and buf
// at its size class (strings.Builder grows to one, so that the size
// counted is what the allocation costs), written here and never again.
func newClaims(f *claimFields, t *timeClaims, unsafeScope bool) *Claims {
	strs := [...]string{strSigned: f.signed, strIss: f.iss, strSub: f.sub, strCaller: f.caller, strIDP: f.idp, strID: f.id}
	n := 0
	for _, s := range strs {
		n += len(s)
	}
	for _, s := range f.aud {
		n += len(s)
	}
	for _, s := range f.unsafe {
		n += len(s)
	}
	for i, s := range f.scopes {
		if i > 0 {
			n++ // the space before it in ScopeText
		}
		n += len(s)
	}
	n += (len(f.aud) + len(f.scopes) + len(f.unsafe)) * spanSize
	if n > math.MaxInt32 || max(len(f.aud), len(f.scopes), len(f.unsafe)) > math.MaxUint16 {
		// Offsets are uint32 and counts uint16: unreachable from a token
		// of any size a transport carries (gRPC's 1 MiB) within the
		// bounds on its lists, refused rather than wrapped should a bound
		// ever move.
		panic("authz: claims over 2 GiB or 65535 entries")
	}
	c := &Claims{
		exp: t.exp, nbf: t.nbf, iat: t.iat,
		lists:       [numLists]uint16{listAud: uint16(len(f.aud)), listScopes: uint16(len(f.scopes)), listUnsafe: uint16(len(f.unsafe))},
		unsafeScope: unsafeScope, hasNbf: t.hasNbf, hasIat: t.hasIat, hasAud: f.aud != nil,
	}
	var b strings.Builder
	b.Grow(n)
	for i, s := range strs {
		b.WriteString(s)
		c.ends[i] = uint32(b.Len())
	}
	for _, s := range f.aud {
		b.WriteString(s)
	}
	c.ends[strAud] = uint32(b.Len())
	for _, s := range f.unsafe {
		b.WriteString(s)
	}
	c.ends[strUnsafe] = uint32(b.Len())
	for i, s := range f.scopes {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s)
	}
	c.ends[strScopes] = uint32(b.Len())

	// The table, in the order of the lists: each entry's span, found
	// again as the strings were written.
	span := func(off, n int) {
		var e [spanSize]byte
		binary.LittleEndian.PutUint32(e[:4], uint32(off))
		binary.LittleEndian.PutUint32(e[4:], uint32(n))
		b.Write(e[:])
	}
	at := int(c.ends[strID])
	for _, s := range f.aud {
		span(at, len(s))
		at += len(s)
	}
	at = int(c.ends[strUnsafe])
	for i, s := range f.scopes {
		if i > 0 {
			at++
		}
		span(at, len(s))
		at += len(s)
	}
	at = int(c.ends[strAud])
	for _, s := range f.unsafe {
		span(at, len(s))
		at += len(s)
	}
	if b.Len() != n {
		// n above missed a string, or counted one twice.
		panic("authz: newClaims sized the claims wrong")
	}
	c.buf = b.String()
	c.size = uint32(claimsAlloc + b.Cap())
	return c
}

// unsafeClaims lists the top-level claims holding a string, or an array of
// strings, that headerSafe refuses.
func unsafeClaims(raw map[string]any) []string {
	var out []string
	for name, v := range raw {
		switch x := v.(type) {
		case string:
			if !headerSafe(x) {
				out = append(out, name)
			}
		case []any:
			for _, e := range x {
				if s, ok := e.(string); ok && !headerSafe(s) {
					out = append(out, name)
					break
				}
			}
		}
	}
	return out
}

// headerSafe reports whether s can be an HTTP header value exactly as it is
// (RFC 9110 §5.5): no control character (CR, LF, NUL, HTAB and the rest of
// C0, DEL), and no leading or trailing space, which every parser strips.
// Bytes above 0x7e pass: non-ASCII text travels as its UTF-8 bytes (obs-text,
// which Envoy and HTTP/1.1 and HTTP/2 servers carry through).
func headerSafe(s string) bool {
	if s != "" && (s[0] == ' ' || s[len(s)-1] == ' ') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// forwardable reports whether every claim named can be forwarded as a
// header value as it is.
func (c *Claims) forwardable(names ...string) bool {
	if c.count(listUnsafe) == 0 {
		return true
	}
	for _, n := range names {
		if c.contains(listUnsafe, n) {
			return false
		}
	}
	return true
}

// ExpiresAt is the token's exp.
func (c *Claims) ExpiresAt() time.Time { return toTime(c.exp) }

// NotBefore is the token's nbf; the zero Time when it has none.
func (c *Claims) NotBefore() time.Time {
	if !c.hasNbf {
		return time.Time{}
	}
	return toTime(c.nbf)
}

// IssuedAt is the token's iat; the zero Time when it has none.
func (c *Claims) IssuedAt() time.Time {
	if !c.hasIat {
		return time.Time{}
	}
	return toTime(c.iat)
}

// Caller is the application or client the token was issued to: client_id
// (RFC 8693, RFC 9068), else azp (OpenID Connect).
func (c *Claims) Caller() string { return c.str(strCaller) }

// IDP is the token's own idp claim, "" when it has none (see
// Provider.IdentityProvider for the one to believe).
func (c *Claims) IDP() string { return c.str(strIDP) }

// ID is the token's jti, "" when it has none.
func (c *Claims) ID() string { return c.str(strID) }

// Raw returns every claim as the token carries it, numbers as json.Number
// so that they are copied verbatim, in a map of the caller's own (parsed
// anew from the token's payload on every call: the cache keeps no map).
func (c *Claims) Raw() map[string]any {
	signed := c.signed()
	dot := strings.IndexByte(signed, '.')
	if dot < 0 {
		// Every Claims comes from a verified token: claims without one
		// would mint and forward tokens without their subject.
		panic("authz: Claims without the token they came from")
	}
	payload, err := decodeString(signed[dot+1:])
	if err != nil {
		panic("authz: Claims whose token does not decode: " + err.Error())
	}
	m, err := parseJSONObject(payload)
	if err != nil {
		return map[string]any{} // parsed once already; cannot fail
	}
	return m
}

// ScopesValid reports whether every scope of the token is an RFC 6749
// scope-token: only then can its scopes be written as one space-separated
// string that says the same (a scope "read admin" would read as two).
func (c *Claims) ScopesValid() bool { return !c.unsafeScope }

// HasScope reports whether the token grants scope.
func (c *Claims) HasScope(scope string) bool { return c.contains(listScopes, scope) }

// Bounds of the claims vakt derives: linear work, and a clear refusal past
// what any identity provider issues.
const (
	maxAudiences = 64
	maxScopes    = 1024
)

var (
	errTooManyAudiences = fmt.Errorf("%w: aud has more than %d entries", ErrClaimInvalid, maxAudiences)
	errTooManyScopes    = fmt.Errorf("%w: more than %d scopes", ErrClaimInvalid, maxScopes)
)

// scopes collects the token's scopes, each once, in their order: from
// scope, a list of scope-tokens separated by single spaces (RFC 6749 §3.3:
// only U+0020 separates, so "read:users\u00a0admin" is one scope, not two),
// scp (a string like scope, or an array) and permissions (an array). Few
// scopes are compared in a slice; past a handful a set keeps the work
// linear. invalid reports a scope that is no RFC 6749 scope-token (a space
// inside an array element, a control character, non-ASCII): such a token's
// scopes cannot be told to an application truthfully.
func scopes(raw map[string]any) (out []string, invalid bool, err error) {
	var seen map[string]struct{}
	add := func(s string) {
		if s == "" || len(out) > maxScopes {
			return
		}
		if !scopeToken(s) {
			invalid = true
		}
		if seen == nil && len(out) >= 16 {
			seen = make(map[string]struct{}, 64)
			for _, o := range out {
				seen[o] = struct{}{}
			}
		}
		if seen != nil {
			if _, dup := seen[s]; dup {
				return
			}
			seen[s] = struct{}{}
		} else if slices.Contains(out, s) {
			return
		}
		out = append(out, s)
	}
	for _, name := range [...]string{"scope", "scp", "permissions"} {
		switch v := raw[name].(type) {
		case string:
			if name == "permissions" {
				add(v)
				continue
			}
			for s := range strings.SplitSeq(v, " ") {
				add(s)
			}
		case []any:
			for _, e := range v {
				if s, ok := e.(string); ok {
					add(s)
				}
			}
		}
	}
	if len(out) > maxScopes {
		return nil, false, errTooManyScopes
	}
	return out, invalid, nil
}

// scopeToken reports whether s is an RFC 6749 scope-token:
// 1*( %x21 / %x23-5B / %x5D-7E ).
func scopeToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c == 0x22 || c == 0x5c || c > 0x7e {
			return false
		}
	}
	return s != ""
}

// checkTimes applies exp and nbf at now with leeway.
func (c *Claims) checkTimes(now time.Time, leeway time.Duration) error {
	return checkTimes(c.exp, c.nbf, now, leeway)
}

// checkTimes applies exp and nbf (0: none) at now with leeway. exp: 0 is
// long expired.
func checkTimes(exp, nbf float64, now time.Time, leeway time.Duration) error {
	t := unixSeconds(now)
	l := leeway.Seconds()
	if t >= exp+l {
		return ErrExpired
	}
	if nbf != 0 && t < nbf-l {
		return ErrNotYetValid
	}
	return nil
}

// checkIssuedAt rejects a token issued in the future (beyond leeway).
func (c *Claims) checkIssuedAt(now time.Time, leeway time.Duration) error {
	if c.hasIat && c.IssuedAt().After(now.Add(leeway)) {
		return fmt.Errorf("%w: iat is in the future", ErrNotYetValid)
	}
	return nil
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func toTime(sec float64) time.Time {
	// Keep absurd values representable: year 1 to year 9999 covers every
	// token that is not an attack, and the float comparisons use sec itself.
	const lo, hi = -62135596800, 253402300799
	sec = math.Max(lo, math.Min(hi, sec))
	whole, frac := math.Modf(sec)
	return time.Unix(int64(whole), int64(frac*1e9)).UTC()
}

func stringClaim(raw map[string]any, name string) (string, error) {
	v, ok := raw[name]
	if !ok {
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%w: %s is not a string", ErrClaimInvalid, name)
	}
	return s, nil
}

func audienceClaim(raw map[string]any) ([]string, error) {
	switch v := raw["aud"].(type) {
	case nil:
		if _, present := raw["aud"]; present {
			return nil, fmt.Errorf("%w: aud is null", ErrClaimInvalid)
		}
		return nil, nil
	case string:
		return []string{v}, nil
	case []any:
		if len(v) > maxAudiences {
			return nil, errTooManyAudiences
		}
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%w: aud holds a value that is not a string", ErrClaimInvalid)
			}
			out = append(out, s)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%w: aud is neither a string nor an array of strings", ErrClaimInvalid)
	}
}

func numericDate(raw map[string]any, name string) (float64, bool, error) {
	v, ok := raw[name]
	if !ok {
		return 0, false, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, false, fmt.Errorf("%w: %s is not a number", ErrClaimInvalid, name)
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsInf(f, 0) {
		return 0, false, fmt.Errorf("%w: %s is out of range", ErrClaimInvalid, name)
	}
	return f, true, nil
}

// timeClaims are exp, nbf and iat as scanned before the signature.
type timeClaims struct {
	exp, nbf, iat  float64
	hasNbf, hasIat bool
}

// read takes the dates from the scanned claims: exp required, each a JSON
// number.
func (t *timeClaims) read(top *topClaims) error {
	var ok bool
	var err error
	if t.exp, ok, err = top.number(top.exp, "exp"); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("%w: exp is required", ErrClaimInvalid)
	}
	if t.nbf, t.hasNbf, err = top.number(top.nbf, "nbf"); err != nil {
		return err
	}
	t.iat, t.hasIat, err = top.number(top.iat, "iat")
	return err
}

// check is Claims.checkTimes and checkIssuedAt on the scanned dates.
func (t *timeClaims) check(now time.Time, leeway time.Duration) error {
	var nbf float64
	if t.hasNbf {
		nbf = t.nbf
	}
	if err := checkTimes(t.exp, nbf, now, leeway); err != nil {
		return err
	}
	if t.hasIat && toTime(t.iat).After(now.Add(leeway)) {
		return fmt.Errorf("%w: iat is in the future", ErrNotYetValid)
	}
	return nil
}
