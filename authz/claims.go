package authz

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"
)

// Claims are the claims of a verified token.
//
// A Claims value is shared by every request that presents the same token
// (through the verified-token cache), so it is read-only: callers must not
// modify it or anything it points to.
//
// Its strings are views of one buffer holding the token's signed part:
// whatever keeps one of them beyond the request (a span, a metric label)
// keeps the whole buffer, so it keeps a copy (strings.Clone) instead.
//
// It keeps no map of the claims: a cached token costs its signed part and
// the few strings Check reads, all in one buffer that holds no pointer
// (pack), not a tree of maps and interfaces for the garbage collector to
// trace. Raw parses the payload again for the callers that want every
// claim (Introspect, an exchange).
type Claims struct {
	Issuer   string
	Subject  string
	Audience []string

	// signed is the token's header.payload as it was signed, which the
	// verified-token cache compares on a hit: Raw decodes the payload from
	// it rather than the claims keeping a second, decoded copy. caller,
	// idp and jti are read from the payload once. Like every string of a
	// Claims, they are views of the one buffer pack made.
	signed          string
	caller, idp, id string

	// Scopes are the token's scopes, from scope (a space-separated string),
	// scp (a string or an array) and permissions (an array), as identity
	// providers differ. ScopeText joins them with spaces.
	Scopes    []string
	ScopeText string

	// unsafe names the top-level claims that hold a string no header value
	// may carry (see headerSafe); nil for nearly every token.
	unsafe []string

	derived atomic.Pointer[derivedValue]

	// The fields without pointers come last, where the garbage collector,
	// which scans an object up to its last pointer, does not look.

	// exp, nbf and iat are seconds since the epoch, as in the token (nbf 0
	// when absent, for the checks; hasNbf and hasIat say whether the token
	// has them). Numbers rather than time.Time: 24 bytes and a pointer
	// each, for every cached token, that ExpiresAt and the rest make on
	// demand.
	exp, nbf, iat float64

	// unsafeScope is set when a scope is no RFC 6749 scope-token, so that
	// ScopeText would not say truthfully which scopes the token holds.
	unsafeScope    bool
	hasNbf, hasIat bool

	// size is about how many bytes of memory the claims hold (a token is
	// at most 16 KiB): an int32, beside the bools in one word.
	size int32
}

type derivedValue struct {
	key, value any
}

// Derive returns what compute makes of these claims for key, computing it
// once per key: a repeated token then costs no rework in an adapter (the
// Check adapter keeps its response here, keyed by the application). Claims
// are shared through the cache, and so is the value: compute must return
// something nobody modifies afterwards.
func (c *Claims) Derive(key any, compute func() any) any {
	if d := c.derived.Load(); d != nil && d.key == key {
		return d.value
	}
	v := compute()
	c.derived.Store(&derivedValue{key: key, value: v})
	return v
}

// parseClaims decodes a payload and reads the registered claims vakt checks.
// exp is required; exp, nbf and iat must be JSON numbers (a numeric string is
// not a NumericDate); iss and sub must be strings; aud a string or an array
// of strings. signed is the token's header.payload, which the claims keep (a
// copy) for Raw and for the verified-token cache's comparison; members is
// how many top-level members the payload has (scanTop), to size the map;
// issuer is the provider's, which an iss equal to it (every accepted
// token's) shares rather than copies.
//
// It returns the claims and the map it parsed them from, which is the
// caller's own and is kept nowhere: a caller that wants every claim of a
// token it has just verified need not parse the payload again (Raw).
func parseClaims(payload []byte, signed string, members int, issuer string) (*Claims, map[string]any, error) {
	raw, err := parseJSONObjectHint(payload, members)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: payload %v", ErrMalformed, err)
	}
	c := &Claims{}
	f := claimFields{signed: signed, issuer: issuer}
	if f.iss, err = stringClaim(raw, "iss"); err != nil {
		return nil, nil, err
	}
	if f.sub, err = stringClaim(raw, "sub"); err != nil {
		return nil, nil, err
	}
	if f.aud, err = audienceClaim(raw); err != nil {
		return nil, nil, err
	}
	var ok bool
	if c.exp, ok, err = numericDate(raw, "exp"); err != nil {
		return nil, nil, err
	} else if !ok {
		return nil, nil, fmt.Errorf("%w: exp is required", ErrClaimInvalid)
	}
	if c.nbf, c.hasNbf, err = numericDate(raw, "nbf"); err != nil {
		return nil, nil, err
	}
	if c.iat, c.hasIat, err = numericDate(raw, "iat"); err != nil {
		return nil, nil, err
	}
	if f.scopes, c.unsafeScope, err = scopes(raw); err != nil {
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
	c.pack(&f)
	return c, raw, nil
}

// claimFields are the strings a Claims keeps, before pack copies them.
type claimFields struct {
	signed, iss, sub, caller, idp, id string
	aud, scopes, unsafe               []string
	issuer                            string // the provider's
}

// pack copies every string the claims keep into one byte buffer, and makes
// the claims' strings views of it (unsafe.String) and their three slices
// views of one array: a cached token is then three objects (the Claims, the
// buffer, which holds no pointer, and the array) rather than one for each
// claim, for the garbage collector to mark on every cycle. The buffer is
// written here, before any view of it exists, and never again; nothing but
// the views reaches it. So the views are as immutable as any string.
func (c *Claims) pack(f *claimFields) {
	n := len(f.signed) + len(f.sub)
	if f.iss != f.issuer {
		n += len(f.iss)
	}
	n += len(f.caller) + len(f.idp) + len(f.id)
	for _, s := range f.aud {
		n += len(s)
	}
	for _, s := range f.scopes {
		n += len(s) + 1 // and a space in ScopeText
	}
	for _, s := range f.unsafe {
		n += len(s)
	}
	// Grown, not made: append rounds the capacity up to the allocation's
	// size class, so that cap(buf) is what the buffer costs.
	buf := slices.Grow([]byte(nil), n)
	view := func(s string) string {
		if s == "" {
			return ""
		}
		start := len(buf)
		buf = append(buf, s...) // within cap: never reallocates
		return unsafe.String(&buf[start], len(s))
	}
	c.signed = view(f.signed)
	if f.iss == f.issuer {
		c.Issuer = f.issuer
	} else {
		c.Issuer = view(f.iss)
	}
	c.Subject = view(f.sub)
	c.caller = view(f.caller)
	c.idp = view(f.idp)
	c.id = view(f.id)

	var strs []string
	if k := len(f.aud) + len(f.scopes) + len(f.unsafe); k > 0 {
		strs = slices.Grow([]string(nil), k)
	}
	for _, s := range f.aud {
		strs = append(strs, view(s))
	}
	if f.aud != nil {
		c.Audience = strs[:len(strs):len(strs)]
	}
	// The scopes are views of ScopeText: them, joined by spaces.
	from, start := len(strs), len(buf)
	for i, s := range f.scopes {
		if i > 0 {
			buf = append(buf, ' ')
		}
		strs = append(strs, view(s))
	}
	if len(buf) > start {
		c.ScopeText = unsafe.String(&buf[start], len(buf)-start)
	}
	if f.scopes != nil {
		c.Scopes = strs[from:len(strs):len(strs)]
	}
	from = len(strs)
	for _, s := range f.unsafe {
		strs = append(strs, view(s))
	}
	if f.unsafe != nil {
		c.unsafe = strs[from:len(strs):len(strs)]
	}
	c.size = int32(claimsOverhead + cap(buf) + cap(strs)*sizeString)
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
	if len(c.unsafe) == 0 {
		return true
	}
	for _, n := range names {
		if slices.Contains(c.unsafe, n) {
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
func (c *Claims) Caller() string { return c.caller }

// IDP is the token's own idp claim, "" when it has none (see
// Provider.IdentityProvider for the one to believe).
func (c *Claims) IDP() string { return c.idp }

// ID is the token's jti, "" when it has none.
func (c *Claims) ID() string { return c.id }

// Raw returns every claim as the token carries it, numbers as json.Number
// so that they are copied verbatim, in a map of the caller's own (parsed
// anew from the token's payload on every call: the cache keeps no map).
func (c *Claims) Raw() map[string]any {
	dot := strings.IndexByte(c.signed, '.')
	if dot < 0 {
		// Every Claims comes from a verified token: claims without one
		// would mint and forward tokens without their subject.
		panic("authz: Claims without the token they came from")
	}
	payload, err := b64.DecodeString(c.signed[dot+1:])
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
func (c *Claims) HasScope(scope string) bool { return slices.Contains(c.Scopes, scope) }

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

// checkTimes applies exp and nbf at now with leeway. exp: 0 is long expired.
func (c *Claims) checkTimes(now time.Time, leeway time.Duration) error {
	t := unixSeconds(now)
	l := leeway.Seconds()
	if t >= c.exp+l {
		return ErrExpired
	}
	if c.nbf != 0 && t < c.nbf-l {
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
	c := Claims{exp: t.exp}
	if t.hasNbf {
		c.nbf = t.nbf
	}
	if err := c.checkTimes(now, leeway); err != nil {
		return err
	}
	if t.hasIat && toTime(t.iat).After(now.Add(leeway)) {
		return fmt.Errorf("%w: iat is in the future", ErrNotYetValid)
	}
	return nil
}
