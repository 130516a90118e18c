package server

import (
	"bytes"
	"encoding/json"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/vakt-dev/vakt/authz"
)

var structWireSeeds = []string{
	`{}`,
	`{"sub":"alice","exp":1700000000,"iat":1.5,"neg":-3e2}`,
	`{"aud":["a","b"],"empty":[],"obj":{},"n":null,"t":true,"f":false}`,
	`{"nested":{"deep":{"list":[1,[2,[3,{"x":null}]],"s"]}},"ünïcode":"ß✓","":"empty key"}`,
	`{"big":12345678901234567890,"tiny":1e-300,"zero":0,"negzero":-0}`,
}

// metadataWire writes dynamic_metadata as envoyIdentity does: the size
// pass, then the append pass after an answer's identity part, into a buffer
// made to the size of both. It returns what the append pass added, and
// checks that the size pass measured it exactly, that the buffer did not
// grow, and that the identity part is as it was.
func metadataWire(t *testing.T, claims map[string]any) ([]byte, error) {
	t.Helper()
	hs := []answerHeader{{authz.HeaderSubject, "user-1"}}
	identity, _ := appendIdentityWire(nil, hs, nil)
	var w structWire
	n, err := w.size(metadataNamespace, claims)
	if err != nil {
		return nil, err
	}
	head, _ := appendIdentityWire(make([]byte, 0, identityWireSize(hs)+n), hs, nil)
	b := w.append(head, metadataNamespace, claims)
	if len(b) != len(identity)+n || cap(b) != len(identity)+n || !bytes.Equal(b[:len(identity)], identity) {
		t.Fatalf("sized %d after %d bytes of identity headers, wrote %d into %d", n, len(identity), len(b), cap(b))
	}
	return b[len(identity):], nil
}

// checkStructWire compares the metadata structWire writes with what
// claimsStruct and proto.Marshal make of the same claims: the same bytes,
// so the same message.
func checkStructWire(t *testing.T, doc string) {
	d := json.NewDecoder(bytes.NewReader([]byte(doc)))
	d.UseNumber()
	var claims map[string]any
	if err := d.Decode(&claims); err != nil || claims == nil {
		return
	}
	cs, err := claimsStruct(claims)
	if err != nil {
		if _, err2 := metadataWire(t, claims); err2 == nil {
			t.Fatalf("%s: claimsStruct refused (%v), the wire encoder did not", doc, err)
		}
		return
	}
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&authv3.CheckResponse{
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{metadataNamespace: structpb.NewStructValue(cs)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := metadataWire(t, claims)
	if err != nil {
		t.Fatalf("%s: %v", doc, err)
	}
	if !bytes.Equal(got, want) {
		var g, w authv3.CheckResponse
		if err := proto.Unmarshal(got, &g); err != nil {
			t.Fatalf("%s: the wire form does not decode: %v", doc, err)
		}
		_ = proto.Unmarshal(want, &w)
		if !proto.Equal(&g, &w) {
			t.Fatalf("%s:\n got %v\nwant %v", doc, &g, &w)
		}
		t.Fatalf("%s: equal messages, different bytes:\n got %x\nwant %x", doc, got, want)
	}
}

func TestDynamicMetadataWire(t *testing.T) {
	for _, doc := range structWireSeeds {
		checkStructWire(t, doc)
	}
}

// The metadata costs a few allocations however many claims there are, and
// however deep they nest, written as envoyIdentity writes it: the answer's
// one buffer (identity headers and metadata), and the sizes and keys noted
// for it (grown once each here, past the first guess at their length).
func TestDynamicMetadataWireAllocations(t *testing.T) {
	d := json.NewDecoder(bytes.NewReader([]byte(`{"iss":"https://idp.example","sub":"user-1","aud":["a","b"],` +
		`"client_id":"dev:ns:app","acr":"high","amr":["pwd"],"pid":"12345678901","scope":"openid read","iat":1,"exp":2,` +
		`"jti":"id","groups":{"g1":[1,2,{"x":null}],"g2":true}}`)))
	d.UseNumber()
	var claims map[string]any
	if err := d.Decode(&claims); err != nil {
		t.Fatal(err)
	}
	hs := []answerHeader{{authz.HeaderSubject, "user-1"}}
	if n := testing.AllocsPerRun(20, func() {
		var w structWire
		n, err := w.size(metadataNamespace, claims)
		if err != nil {
			t.Fatal(err)
		}
		var spans [1]headerSpan
		head, _ := appendIdentityWire(make([]byte, 0, identityWireSize(hs)+n), hs, spans[:0])
		w.append(head, metadataNamespace, claims)
	}); n > 5 {
		t.Fatalf("%.0f allocations for %d claims", n, len(claims))
	}
}

func FuzzDynamicMetadataWire(f *testing.F) {
	for _, doc := range structWireSeeds {
		f.Add(doc)
	}
	f.Fuzz(checkStructWire)
}
