package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
)

// maxGRPCMessage caps a request: a token is at most 16 KiB by default, and
// nothing vakt receives needs more than this.
const maxGRPCMessage = 1 << 20

// maxInFlight bounds the requests vakt works on at once. Past it, requests
// are refused with RESOURCE_EXHAUSTED at once rather than queued without
// end: Envoy turns the error into status_on_error (503), which tells an
// overloaded vakt apart from a refusal.
const maxInFlight = 4096

// Current holds the runtime every request reads; a reload swaps it whole.
type Current struct{ p atomic.Pointer[Runtime] }

// Load returns the runtime in force.
func (c *Current) Load() *Runtime { return c.p.Load() }

// Store puts rt in force for every request that starts after it.
func (c *Current) Store(rt *Runtime) { c.p.Store(rt) }

// NewGRPCServer returns a gRPC server with Introspect, grpc.health.v1 and
// server reflection registered. Panics in handlers become Internal errors.
func NewGRPCServer(cur *Current, m *Metrics, log *slog.Logger) (*grpc.Server, *health.Server) {
	s := grpc.NewServer(
		grpc.MaxRecvMsgSize(maxGRPCMessage),
		grpc.ChainUnaryInterceptor(recoverUnary(log), limitUnary(maxInFlight)),
	)
	vaktv1.RegisterIntrospectionServiceServer(s, &introspectionService{cur: cur, metrics: m})
	vaktv1.RegisterTokenExchangeServiceServer(s, &exchangeService{cur: cur, metrics: m})
	authv3.RegisterAuthorizationServer(s, &authorizationService{cur: cur, log: log})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return s, hs
}

func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in gRPC handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				resp, err = nil, status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(ctx, req)
	}
}

// limitUnary refuses requests beyond n in flight.
func limitUnary(n int) grpc.UnaryServerInterceptor {
	slots := make(chan struct{}, n)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		select {
		case slots <- struct{}{}:
		default:
			return nil, status.Error(codes.ResourceExhausted, "vakt is overloaded")
		}
		defer func() { <-slots }()
		return handler(ctx, req)
	}
}

type introspectionService struct {
	vaktv1.UnimplementedIntrospectionServiceServer
	cur     *Current
	metrics *Metrics
}

func (s *introspectionService) Introspect(ctx context.Context, req *vaktv1.IntrospectRequest) (*vaktv1.IntrospectResponse, error) {
	res, err := s.cur.Load().introspect(ctx, req.GetIdentityProvider(), req.GetToken())
	if err != nil {
		return nil, grpcRequestError(err)
	}
	s.metrics.introspected(res.Active)
	out := &vaktv1.IntrospectResponse{Active: res.Active, Error: res.Error}
	if res.Active {
		claims, err := claimsStruct(res.Claims)
		if err != nil {
			// The claims came out of a JSON decoder, so this cannot happen;
			// if it does, fail closed rather than answer half.
			return nil, status.Error(codes.Internal, "claims cannot be represented")
		}
		out.Claims = claims
	}
	return out, nil
}

// grpcRequestError maps an unusable request to InvalidArgument.
func grpcRequestError(err error) error {
	if errors.Is(err, errNoToken) || errors.Is(err, errNoProvider) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return status.Error(codes.Internal, "internal error")
}

// claimsStruct converts decoded JSON claims to a Struct. Numbers become
// doubles, as Struct holds no other kind of number.
func claimsStruct(m map[string]any) (*structpb.Struct, error) {
	fields := make(map[string]*structpb.Value, len(m))
	for k, v := range m {
		pv, err := protoValue(v)
		if err != nil {
			return nil, err
		}
		fields[k] = pv
	}
	return &structpb.Struct{Fields: fields}, nil
}

func protoValue(v any) (*structpb.Value, error) {
	switch x := v.(type) {
	case nil:
		return structpb.NewNullValue(), nil
	case bool:
		return structpb.NewBoolValue(x), nil
	case string:
		return structpb.NewStringValue(x), nil
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return nil, err
		}
		return structpb.NewNumberValue(f), nil
	case map[string]any:
		s, err := claimsStruct(x)
		if err != nil {
			return nil, err
		}
		return structpb.NewStructValue(s), nil
	case []any:
		vals := make([]*structpb.Value, len(x))
		for i, e := range x {
			pv, err := protoValue(e)
			if err != nil {
				return nil, err
			}
			vals[i] = pv
		}
		return structpb.NewListValue(&structpb.ListValue{Values: vals}), nil
	default:
		return nil, fmt.Errorf("unexpected claim type %T", v)
	}
}
