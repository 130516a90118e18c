package server

import (
	"context"
	"fmt"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
)

// A cached allow is written as the bytes marshalled when the token was
// first verified: they decode to the same answer as the message, over a
// real gRPC connection too, and the codec marshals anything else as the
// proto codec does.
func TestPreMarshalledAnswer(t *testing.T) {
	svc, tok := benchCheckAlg(t, 0, "ES256")
	req := checkRequest("/read", "Bearer "+tok)
	ctx := context.Background()
	first, err := svc.checkWire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := svc.checkWire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := again.(*preMarshalled)
	if !ok || first != again {
		t.Fatalf("the second Check is not the shared pre-marshalled answer: %T", again)
	}
	c := newCodec()
	wire, err := c.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var decoded authv3.CheckResponse
	if err := c.Unmarshal(wire, &decoded); err != nil {
		t.Fatal(err)
	}
	want, err := svc.Check(ctx, checkRequest("/read", "Bearer "+tok))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&decoded, want) || decoded.GetOkResponse() == nil || len(decoded.GetOkResponse().GetHeaders()) == 0 || decoded.GetDynamicMetadata() == nil {
		t.Fatalf("decoded %v, want %v", &decoded, want)
	}
	// A request whose answer must change (a spoofed header to remove) gets
	// a message of its own, marshalled as usual.
	spoofed := checkRequest("/read", "Bearer "+tok)
	spoofed.Attributes.Request.Http.Headers["x-vakt-role"] = "admin"
	res, err := svc.checkWire(ctx, spoofed)
	if err != nil {
		t.Fatal(err)
	}
	msg, ok := res.(*authv3.CheckResponse)
	if !ok || len(msg.GetOkResponse().GetHeadersToRemove()) != 1 || msg.GetOkResponse().GetHeadersToRemove()[0] != "x-vakt-role" {
		t.Fatalf("spoofed: %T %v", res, res)
	}
	if _, err := c.Marshal(msg); err != nil {
		t.Fatal(err)
	}
}

// A CheckRequest with thousands of headers, which no proxy sends, is
// refused before any work on them; hundreds of spoofed ones are removed in
// O(n log n), each once.
func TestCheckManyHeaders(t *testing.T) {
	svc, tok := benchCheckAlg(t, 0, "ES256")
	req := checkRequest("/read", "Bearer "+tok)
	h := req.Attributes.Request.Http.Headers
	for i := range 500 {
		h[fmt.Sprintf("x_vakt_%04d", i)] = "x"
	}
	res, err := svc.Check(context.Background(), req)
	if err != nil || len(res.GetOkResponse().GetHeadersToRemove()) != 500 {
		t.Fatalf("500 spoofed headers: %v", err)
	}
	for i := 500; i < 1100; i++ {
		h[fmt.Sprintf("x_vakt_%04d", i)] = "x"
	}
	res, err = svc.Check(context.Background(), req)
	if err != nil || res.GetDeniedResponse().GetStatus().GetCode() != 400 {
		t.Fatalf("1100 headers: %v %v", res, err)
	}
}
