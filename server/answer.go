package server

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"hash/maphash"
	"math"
	"time"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/internal/cache"
)

// checkAnswer is a Check decided, in no face's terms: what the request
// gets, which each face renders (renderEnvoy for Envoy's gRPC API,
// httpAuthz as an HTTP response). decide makes it once per request.
type checkAnswer struct {
	allow bool
	// status is the HTTP status: 200 on allow, the reason's on a refusal.
	status int
	// outage is set when the request could not be decided (keys that
	// cannot be had): no answer, an error, which a proxy tells from a
	// refusal (Envoy's status_on_error, the HTTP face's 503).
	outage bool
	// id is what an allow tells the application of the token: its
	// identity headers (and Envoy's rendering); nil on a public route.
	id *identity
	// remove are the headers an allow has the proxy remove from the
	// request: a client's x-vakt-* that vakt does not set, and
	// Authorization under stripAuthorization. Sorted, each once.
	remove []string
	// headers and body are a refusal's: WWW-Authenticate, the content
	// type, grpc-status and grpc-message for a gRPC request; the JSON
	// error.
	headers []answerHeader
	body    string
}

// answerHeader is a header an answer sets.
type answerHeader struct{ name, value string }

// identity is what an allow tells an application of a token, as one face
// renders it: for Envoy's face, the whole allow in its wire form (the
// identity headers, and the claims as dynamic metadata), which the codec
// writes as it is; for the HTTP face, the headers' names and values alone.
// It is made once per verified token, application and face, kept in the
// answers cache, shared, and never modified: each face's bytes are its
// own, and the engine keeps none.
//
// The headers are spans of those bytes: an identity is one object and its
// bytes, holds no string of its own, nor the claims (whose size only the
// verified-token cache counts), and gives the garbage collector little to
// scan (its pointers are the first words).
type identity struct {
	// What it was made for. The token is its key's: the same signature is
	// the same verified token, whose identity the same provider (and its
	// configuration) and application always make alike.
	provider *authz.Provider
	app      *authz.Application
	spans    []headerSpan // inline[:n], or a larger array of its own
	// envoy holds the bytes the spans point into: Envoy's wire form (the
	// Envoy face), or the names and values one after another (the HTTP
	// face), which no codec writes.
	envoy  preMarshalled
	size   int // about how many bytes it holds
	face   face
	inline [6]headerSpan
}

// face is a face that renders identities: each keeps its own.
type face uint8

const (
	envoyFace face = iota + 1
	httpFace
)

// headerSpan is where a header's name and value are in an identity's wire
// form.
type headerSpan struct{ nameOff, nameLen, valueOff, valueLen uint32 }

// headers calls f with each header the identity sets, as views of its
// wire form (which f must copy to keep).
func (id *identity) headers(f func(name, value []byte)) {
	b := id.envoy.bytes
	for _, s := range id.spans {
		f(b[s.nameOff:s.nameOff+s.nameLen], b[s.valueOff:s.valueOff+s.valueLen])
	}
}

// sets reports whether the identity sets the header name (in any case).
func (id *identity) sets(name string) bool {
	b := id.envoy.bytes
	for _, s := range id.spans {
		if asciiEqualFoldBytes(b[s.nameOff:s.nameOff+s.nameLen], name) {
			return true
		}
	}
	return false
}

// maxAnswer bounds an allow's answer in a face's bytes: one whose
// claims would make it larger goes without them in dynamic_metadata (the
// identity headers are always there), and one whose headers alone are
// larger is made on every Check, not kept, so that one large token cannot
// take a large share of the cache. A typical token's answer is under
// 1 KiB.
const maxAnswer = 2 << 10

// identityOverhead is what an identity costs besides its wire form:
// itself (at its allocation's size class, 192 bytes), the cache's slot and
// its index's entry.
const identityOverhead = 192 + 176

// newIdentity makes the identity for a token and an application, as f
// renders it.
func newIdentity(d *authz.Decision, app *authz.Application, f face) *identity {
	var raw map[string]any
	var stack [16]answerHeader
	hs := stack[:0]
	if f == envoyFace || len(app.ForwardClaims) > 0 {
		raw = d.RawClaims() // parsed by the verification on a cache miss
	}
	hs = identityHeaders(d, app, raw, hs)
	id := &identity{provider: d.Provider, app: app, face: f}
	id.spans = id.inline[:0]
	if len(hs) > len(id.inline) {
		id.spans = make([]headerSpan, 0, len(hs))
	}
	if f == envoyFace {
		id.spans = envoyIdentity(&id.envoy, hs, raw, !app.NoDynamicMetadata, id.spans)
	} else {
		id.spans = plainIdentity(&id.envoy, hs, id.spans)
	}
	id.size = identityOverhead + cap(id.envoy.bytes)
	if len(hs) > len(id.inline) {
		id.size += roundedSize(cap(id.spans) * headerSpanSize)
	}
	return id
}

// headerSpanSize is the size of a headerSpan.
const headerSpanSize = 16

// roundedSize is about what an allocation of n bytes takes: n rounded up
// to a multiple of 16 (the allocator's size classes are coarser; the
// allowance in identityOverhead covers the rest).
func roundedSize(n int) int { return (n + 15) &^ 15 }

// plainIdentity writes the headers' names and values into p's bytes, one
// after another, and appends to spans where each is: the HTTP face's
// rendering, with no wire form and no metadata.
func plainIdentity(p *preMarshalled, hs []answerHeader, spans []headerSpan) []headerSpan {
	n := 0
	for _, h := range hs {
		n += len(h.name) + len(h.value)
	}
	b := make([]byte, 0, n)
	for _, h := range hs {
		nameOff := len(b)
		b = append(b, h.name...)
		valueOff := len(b)
		b = append(b, h.value...)
		spans = append(spans, headerSpan{uint32(nameOff), uint32(len(h.name)), uint32(valueOff), uint32(len(h.value))})
	}
	p.bytes = b
	return spans
}

// identityHeaders appends to hs the headers of the allow answer for a token
// and an application, those with a value: the subject, the calling
// application, the identity provider, the scopes, then the claims the
// application forwards, in its order.
func identityHeaders(d *authz.Decision, app *authz.Application, raw map[string]any, hs []answerHeader) []answerHeader {
	set := func(name, value string) {
		if value != "" {
			hs = append(hs, answerHeader{name, value})
		}
	}
	c := d.Claims
	set(authz.HeaderSubject, c.Subject())
	set(authz.HeaderClientID, d.Caller)
	set(authz.HeaderIdentityProvider, d.Provider.IdentityProvider(c))
	set(authz.HeaderScope, c.ScopeText())
	for _, fc := range app.ForwardClaims {
		set(fc.Header, claimString(raw[fc.Claim]))
	}
	return hs
}

// claimString renders a claim as a header value: strings as they are,
// anything else as JSON.
func claimString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case json.Number:
		return x.String()
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return ""
		}
		return string(b)
	}
}

// answerCache keeps the identity of each verified token for each
// application it was allowed to, so that a token Checked again costs no
// rework, in any face: keyed by where the verified-token cache keeps the
// token (authz.Decision.TokenKey) mixed with the application's id, and
// found only for the same claims (a token verified anew has claims of its
// own) and the same *Application (one that changed is a new one). Bounded
// in entries and bytes, each identity counted at what it holds; it lives
// beside the verified-token cache, from one configuration to the next. The
// zero *answerCache keeps nothing.
type answerCache struct {
	c       *cache.Cache[*identity]
	seed    maphash.Seed
	entries int
	bytes   int64
}

func newAnswerCache(entries int, maxBytes int64) *answerCache {
	return &answerCache{c: cache.New[*identity](entries, maxBytes), seed: maphash.MakeSeed(), entries: entries, bytes: maxBytes}
}

// identity returns the identity of d's token for app as f renders it:
// the one kept, or a new one, kept when it fits.
func (a *answerCache) identity(d *authz.Decision, app *authz.Application, f face) *identity {
	tk, ok := d.TokenKey()
	if a == nil || !ok {
		return newIdentity(d, app, f)
	}
	// The key's first bytes choose the shard: the application and the
	// face are mixed into others.
	k := tk
	binary.LittleEndian.PutUint64(k[8:], binary.LittleEndian.Uint64(k[8:])^maphash.String(a.seed, app.ID))
	k[16] ^= byte(f)
	// No clock: an expired token is refused before its identity is asked
	// for, so an entry is good until it is evicted or replaced.
	if id, ok := a.c.Get(&k, 0); ok && id.provider == d.Provider && id.app == app && id.face == f {
		return id
	}
	id := newIdentity(d, app, f)
	if len(id.envoy.bytes) <= maxAnswer {
		a.c.Put(&k, id, int64(id.size), expiryNanos(d.Claims.ExpiresAt()), time.Now().UnixNano())
	}
	return id
}

// expiryNanos is when an answer leaves the cache at the latest: a minute
// past its token's exp (a provider's leeway may accept it that long), in
// unix nanoseconds, clamped to what an int64 holds.
func expiryNanos(exp time.Time) int64 {
	if exp.After(time.Unix(0, math.MaxInt64).Add(-time.Minute)) {
		return math.MaxInt64
	}
	return exp.Add(time.Minute).UnixNano()
}

// Stats counts the answers cache.
func (a *answerCache) Stats() cache.Stats {
	if a == nil {
		return cache.Stats{}
	}
	return a.c.Stats()
}

// cacheBudget splits the configured cache memory (validation.cacheMemory;
// authz's default when 0) between the verified-token cache and the
// answers cache: half each.
func cacheBudget(maxBytes int64) (tokens, answers int64) {
	total := cmp.Or(max(maxBytes, 0), authz.DefaultCacheBytes)
	// Each half a byte at least: authz reads 0 as its default.
	return max(total/2, 1), max(total-total/2, 1)
}
