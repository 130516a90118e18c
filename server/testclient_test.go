package server

import (
	"context"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// testCallTimeout bounds every call a test makes, so that a server that
// never answers fails the test at that call instead of hanging the run.
const testCallTimeout = 30 * time.Second

var testHTTP = &http.Client{Timeout: testCallTimeout}

func testDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if _, ok := ctx.Deadline(); !ok {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, testCallTimeout)
				defer cancel()
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
	}
}
