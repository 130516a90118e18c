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
type preMarshalled struct {
	wire mem.BufferSlice
	msg  proto.Message // the same answer, for callers that want a message
}

func newPreMarshalled(m proto.Message) (*preMarshalled, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &preMarshalled{wire: mem.BufferSlice{mem.SliceBuffer(b)}, msg: m}, nil
}

// codec is gRPC's proto codec, but for a *preMarshalled, whose bytes it
// passes through: the hot path of Check writes bytes and does no protobuf
// reflection.
type codec struct{ proto encoding.CodecV2 }

func newCodec() codec { return codec{proto: encoding.GetCodecV2("proto")} }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if p, ok := v.(*preMarshalled); ok {
		if p.wire == nil {
			return c.proto.Marshal(p.msg)
		}
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
