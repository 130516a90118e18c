package server

import (
	"bytes"
	"encoding/json"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

var structWireSeeds = []string{
	`{}`,
	`{"sub":"alice","exp":1700000000,"iat":1.5,"neg":-3e2}`,
	`{"aud":["a","b"],"empty":[],"obj":{},"n":null,"t":true,"f":false}`,
	`{"nested":{"deep":{"list":[1,[2,[3,{"x":null}]],"s"]}},"ünïcode":"ß✓","":"empty key"}`,
	`{"big":12345678901234567890,"tiny":1e-300,"zero":0,"negzero":-0}`,
}

// checkStructWire compares appendDynamicMetadata with what claimsStruct and
// proto.Marshal make of the same claims: the same bytes, so the same
// message.
func checkStructWire(t *testing.T, doc string) {
	d := json.NewDecoder(bytes.NewReader([]byte(doc)))
	d.UseNumber()
	var claims map[string]any
	if err := d.Decode(&claims); err != nil || claims == nil {
		return
	}
	cs, err := claimsStruct(claims)
	if err != nil {
		if _, err2 := appendDynamicMetadata(nil, "vakt", claims); err2 == nil {
			t.Fatalf("%s: claimsStruct refused (%v), the wire encoder did not", doc, err)
		}
		return
	}
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&authv3.CheckResponse{
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"vakt": structpb.NewStructValue(cs)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := appendDynamicMetadata(nil, "vakt", claims)
	if err != nil {
		t.Fatalf("%s: %v", doc, err)
	}
	// The size pass measured exactly what the append pass wrote, and the
	// buffer was made to it.
	var w structWire
	if n, err := w.size("vakt", claims); err != nil || n != len(got) || cap(got) != len(got) {
		t.Fatalf("%s: sized %d (%v), wrote %d into %d", doc, n, err, len(got), cap(got))
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
// however deep they nest: its buffer, and the sizes and keys noted for it.
func TestDynamicMetadataWireAllocations(t *testing.T) {
	d := json.NewDecoder(bytes.NewReader([]byte(`{"iss":"https://idp.example","sub":"user-1","aud":["a","b"],` +
		`"client_id":"dev:ns:app","acr":"high","amr":["pwd"],"pid":"12345678901","scope":"openid read","iat":1,"exp":2,` +
		`"jti":"id","groups":{"g1":[1,2,{"x":null}],"g2":true}}`)))
	d.UseNumber()
	var claims map[string]any
	if err := d.Decode(&claims); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(20, func() {
		if _, err := appendDynamicMetadata(b, "vakt", claims); err != nil {
			t.Fatal(err)
		}
	}); n > 4 {
		t.Fatalf("%.0f allocations for %d claims", n, len(claims))
	}
}

func FuzzDynamicMetadataWire(f *testing.F) {
	for _, doc := range structWireSeeds {
		f.Add(doc)
	}
	f.Fuzz(checkStructWire)
}
