package server

import (
	"context"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	// The proto codec registers itself; codec delegates to it.
	_ "google.golang.org/grpc/encoding/proto"
)

// preMarshalled is a response already in its wire form: Check's allow
// answer for a token and an application, marshalled once when the token is
// first verified and written as it is on every Check after. It is shared
// and never modified.
//
// It keeps the bytes only, not the message they came from (a tree of
// pointers the garbage collector would trace for every cached token), and
// the names of the headers the answer sets.
type preMarshalled struct {
	wire mem.BufferSlice
	sets []string
}

func newPreMarshalled(m *authv3.CheckResponse) (*preMarshalled, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	return newPreMarshalledBytes(b, m), nil
}

// newPreMarshalledBytes keeps b, m's wire form with perhaps more appended,
// and the names of the headers m sets.
func newPreMarshalledBytes(b []byte, m *authv3.CheckResponse) *preMarshalled {
	p := &preMarshalled{wire: mem.BufferSlice{mem.SliceBuffer(b)}}
	for _, h := range m.GetOkResponse().GetHeaders() {
		p.sets = append(p.sets, h.GetHeader().GetKey())
	}
	return p
}

// message decodes the answer, into a message of the caller's own: for the
// rare answer that needs a change, and for callers that want a message.
func (p *preMarshalled) message() *authv3.CheckResponse {
	var m authv3.CheckResponse
	if err := proto.Unmarshal(p.wire.Materialize(), &m); err != nil {
		panic(err) // bytes proto.Marshal made; cannot fail
	}
	return &m
}

// codec is gRPC's proto codec, but for a *preMarshalled, whose bytes it
// passes through: the hot path of Check writes bytes and does no protobuf
// reflection.
type codec struct{ proto encoding.CodecV2 }

func newCodec() codec { return codec{proto: encoding.GetCodecV2("proto")} }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if p, ok := v.(*preMarshalled); ok {
		return p.wire, nil // SliceBuffer's Free does nothing: the bytes stay ours
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
