package server

import (
	"context"
	"errors"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	// The proto codec registers itself; codec delegates to it.
	_ "google.golang.org/grpc/encoding/proto"
)

// preMarshalled is a response already in its wire form: Envoy's face's
// allow answer for a token and an application, marshalled once when the
// token is first allowed to the application and written as it is on every
// Check after. It is shared and never modified.
//
// It is one object and its bytes, kept in the answers cache (identity): no
// message (a tree of pointers the garbage collector would trace for every
// cached token), and the one-element BufferSlice the codec returns in the
// object itself.
type preMarshalled struct {
	bytes mem.SliceBuffer
	buf   [1]mem.Buffer // &bytes: a pointer in an interface, not a copy
}

// newPreMarshalled marshals an answer that sets no header: one that does
// is an identity's (envoyIdentity), whose headers the other faces read.
func newPreMarshalled(m *authv3.CheckResponse) (*preMarshalled, error) {
	if len(m.GetOkResponse().GetHeaders()) > 0 {
		return nil, errors.New("newPreMarshalled: an answer with headers is an identity's (envoyIdentity)")
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	return newPreMarshalledBytes(b), nil
}

// newPreMarshalledBytes keeps b, an answer's wire form.
func newPreMarshalledBytes(b []byte) *preMarshalled {
	p := &preMarshalled{bytes: b}
	p.buf[0] = &p.bytes
	return p
}

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

// asciiEqualFoldBytes is asciiEqualFold of a name in its wire form.
func asciiEqualFoldBytes(a []byte, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
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

// checkWire is Check for gRPC's handler: the pre-marshalled answer as it
// is, for the codec to write, or the message.
func (s *authorizationService) checkWire(ctx context.Context, req *authv3.CheckRequest) (any, error) {
	r, err := s.checkEnvoy(ctx, req)
	if r.wire != nil {
		return r.wire, err
	}
	if r.msg == nil {
		return nil, err
	}
	return r.msg, err
}
