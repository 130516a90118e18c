package server

import (
	"context"
	"errors"
	"iter"
	"unsafe"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/vakt-dev/vakt/authz"

	// The proto codec registers itself; codec delegates to it.
	_ "google.golang.org/grpc/encoding/proto"
)

// preMarshalled is a response already in its wire form: Check's allow
// answer for a token and an application, marshalled once when the token is
// first verified and written as it is on every Check after. It is shared
// and never modified.
//
// It is one object and its bytes, kept with the token in the verified-token
// cache: no message (a tree of pointers the garbage collector would trace
// for every cached token), the one-element BufferSlice the codec returns in
// the object itself, and the headers the answer sets as bits.
type preMarshalled struct {
	bytes mem.SliceBuffer
	buf   [1]mem.Buffer // &bytes: a pointer in an interface, not a copy
	// sets has bit i set when the answer sets the i-th header of
	// answerHeaders(app), for i < 63; bit 63 when it sets any past them
	// (an application forwarding more than 59 claims), which setsHeader
	// then reads from the message.
	sets uint64
}

// moreHeaders is the bit of preMarshalled.sets for the headers past 63.
const moreHeaders = 63

// newPreMarshalled marshals an answer that sets no header (its sets say
// so): one that does is refused, as its headers would be removed as a
// client's.
func newPreMarshalled(m *authv3.CheckResponse) (*preMarshalled, error) {
	if len(m.GetOkResponse().GetHeaders()) > 0 {
		return nil, errors.New("newPreMarshalled: an answer with headers needs newPreMarshalledBytes and its sets")
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	return newPreMarshalledBytes(b, 0), nil
}

// newPreMarshalledBytes keeps b, an answer's wire form, which sets the
// headers sets says.
func newPreMarshalledBytes(b []byte, sets uint64) *preMarshalled {
	p := &preMarshalled{sets: sets, bytes: b}
	p.buf[0] = &p.bytes
	return p
}

// size is about how many bytes the answer holds: its bytes and itself.
func (p *preMarshalled) size() int { return cap(p.bytes) + int(unsafe.Sizeof(*p)) }

// wire is the answer's bytes as the codec returns them. Nothing frees
// them: a SliceBuffer's Free does nothing.
func (p *preMarshalled) wire() mem.BufferSlice { return p.buf[:] }

// message decodes the answer, into a message of the caller's own: for the
// rare answer that needs a change, and for callers that want a message.
func (p *preMarshalled) message() *authv3.CheckResponse {
	var m authv3.CheckResponse
	if err := proto.Unmarshal(p.bytes, &m); err != nil {
		panic(err) // bytes proto.Marshal made; cannot fail
	}
	return &m
}

// setsHeader reports whether the answer sets the header name (in any
// case), app being the application it was made for. more holds the names
// of the headers past the 63rd, read from the message the first time one
// is asked of a caller (and so once per request, however many headers it
// asks about): nil until then.
func (p *preMarshalled) setsHeader(app *authz.Application, name string, more *[]string) bool {
	for i, h := range answerHeaders(app) {
		if i >= moreHeaders {
			break
		}
		if p.sets&(1<<i) != 0 && asciiEqualFold(h, name) {
			return true
		}
	}
	if p.sets&(1<<moreHeaders) == 0 {
		return false
	}
	if *more == nil {
		hs := p.message().GetOkResponse().GetHeaders()
		names := make([]string, 0, len(hs))
		for _, h := range hs {
			names = append(names, h.GetHeader().GetKey())
		}
		*more = names
	}
	for _, h := range *more {
		if asciiEqualFold(h, name) {
			return true
		}
	}
	return false
}

// asciiEqualFold is HTTP's comparison of header names: ASCII letters in
// any case. strings.EqualFold would also take ſ for s and the Kelvin sign
// for k, and so a client's x-vakt-ſubject for the x-vakt-subject vakt sets
// (kept, where an upstream that upper-cases names reads it as that).
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// answerHeaders lists, in order, every header an allow answer for app may
// set: the identity headers, then the claims the application forwards.
func answerHeaders(app *authz.Application) iter.Seq2[int, string] {
	return func(yield func(int, string) bool) {
		fixed := [...]string{authz.HeaderSubject, authz.HeaderClientID, authz.HeaderIdentityProvider, authz.HeaderScope}
		for i, h := range fixed {
			if !yield(i, h) {
				return
			}
		}
		for j, fc := range app.ForwardClaims {
			if !yield(len(fixed)+j, fc.Header) {
				return
			}
		}
	}
}

// codec is gRPC's proto codec, but for a *preMarshalled, whose bytes it
// passes through: the hot path of Check writes bytes and does no protobuf
// reflection.
type codec struct{ proto encoding.CodecV2 }

func newCodec() codec { return codec{proto: encoding.GetCodecV2("proto")} }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if p, ok := v.(*preMarshalled); ok {
		return p.wire(), nil // SliceBuffer's Free does nothing: the bytes stay ours
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

func (c codec) Name() string { return c.proto.Name() }

// authorizationDesc registers Check with a handler that may answer a
// *preMarshalled, which the generated handler's typed signature cannot.
// Its name, method and file are the generated ones, so that clients and
// reflection see envoy.service.auth.v3.Authorization as it is.
var authorizationDesc = grpc.ServiceDesc{
	ServiceName: authv3.Authorization_ServiceDesc.ServiceName,
	HandlerType: (*authv3.AuthorizationServer)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Check", Handler: checkHandler}},
	Streams:     []grpc.StreamDesc{},
	Metadata:    authv3.Authorization_ServiceDesc.Metadata,
}

func checkHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(authv3.CheckRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	s := srv.(*authorizationService)
	if interceptor == nil {
		return s.checkWire(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: authv3.Authorization_Check_FullMethodName}
	return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		return s.checkWire(ctx, req.(*authv3.CheckRequest))
	})
}
