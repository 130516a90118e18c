package server

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of google.protobuf.Struct, Value and ListValue
// (struct.proto), and of CheckResponse.dynamic_metadata.
const (
	structFields         protowire.Number = 1 // Struct.fields, map<string, Value>
	mapEntryKey          protowire.Number = 1
	mapEntryValue        protowire.Number = 2
	valueNull            protowire.Number = 1
	valueNumber          protowire.Number = 2
	valueString          protowire.Number = 3
	valueBool            protowire.Number = 4
	valueStruct          protowire.Number = 5
	valueList            protowire.Number = 6
	listValues           protowire.Number = 1
	checkDynamicMetadata protowire.Number = 4
)

// structWire writes CheckResponse.dynamic_metadata, {namespace: claims},
// after the rest of a marshalled CheckResponse (envoyIdentity): the field
// byte for byte as proto.Marshal writes it, keys in order
// (TestDynamicMetadataWire, FuzzDynamicMetadataWire). The whole response is
// the same message as proto.Marshal's, not the same bytes: it writes field 4
// before the ok_response oneof (3), envoyIdentity after. It is what
// claimsStruct and a reflective Marshal make, at a fraction of their cost,
// paid on every cache miss.
//
// It writes in two passes over the claims: size measures every value (and
// sorts every object's keys), append writes each with its length known,
// into a buffer of the exact size. A length prefix comes before what it
// measures, so one pass would build every nested value apart and copy it up
// (an allocation or two per claim); two keep the work linear and the
// allocations to a few, whatever the nesting.
type structWire struct {
	sizes []int    // the size of each value, then of its fields for an object or a list, in the order written
	keys  []string // each object's keys, sorted, in the order written
	next  int      // append's place in sizes
	key   int      // and in keys
}

// size is the length of the dynamic_metadata field {namespace: claims},
// tag included. An error is a claim no Struct can hold.
func (w *structWire) size(namespace string, claims map[string]any) (int, error) {
	w.sizes = make([]int, 0, 2*len(claims)+2)
	w.keys = make([]string, 0, len(claims))
	inner, err := w.sizeStruct(claims)
	if err != nil {
		return 0, err
	}
	value := lenField(inner)                        // Value{struct_value: inner}
	entry := lenString(namespace) + lenField(value) // {key: namespace, value}
	outer := lenField(entry)                        // Struct{fields: [entry]}
	return lenField(outer), nil                     // CheckResponse.dynamic_metadata
}

// append writes what size measured, in the same order.
func (w *structWire) append(b []byte, namespace string, claims map[string]any) []byte {
	inner := w.sizes[0]
	value := lenField(inner)
	entry := lenString(namespace) + lenField(value)
	b = protowire.AppendTag(b, checkDynamicMetadata, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(lenField(entry)))
	b = protowire.AppendTag(b, structFields, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(entry))
	b = protowire.AppendTag(b, mapEntryKey, protowire.BytesType)
	b = protowire.AppendString(b, namespace)
	b = protowire.AppendTag(b, mapEntryValue, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(value))
	b = protowire.AppendTag(b, valueStruct, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(inner))
	w.next = 1
	return w.appendStruct(b, claims)
}

// lenField is the length of a length-delimited field of n bytes, tag (a
// field number below 16) included; lenString of a string field.
func lenField(n int) int     { return 1 + protowire.SizeVarint(uint64(n)) + n }
func lenString(s string) int { return lenField(len(s)) }

// push notes a size to be filled in, returning its place.
func (w *structWire) push() int {
	w.sizes = append(w.sizes, 0)
	return len(w.sizes) - 1
}

// sizeStruct is the size of a Struct's fields, its keys noted in order.
func (w *structWire) sizeStruct(m map[string]any) (int, error) {
	at := w.push()
	from := len(w.keys)
	for k := range m {
		w.keys = append(w.keys, k)
	}
	keys := w.keys[from:] // stays valid if keys grows: sorted before it can
	slices.Sort(keys)
	n := 0
	for _, k := range keys {
		v, err := w.sizeValue(m[k])
		if err != nil {
			return 0, err
		}
		n += lenField(lenString(k) + lenField(v))
	}
	w.sizes[at] = n
	return n, nil
}

// sizeValue is the size of a Value's fields (its oneof).
func (w *structWire) sizeValue(v any) (int, error) {
	at := w.push()
	var n int
	switch x := v.(type) {
	case nil, bool:
		n = 2 // tag and a one-byte varint
	case string:
		n = lenString(x)
	case json.Number:
		if _, err := strconv.ParseFloat(string(x), 64); err != nil {
			return 0, err
		}
		n = 1 + 8
	case map[string]any:
		inner, err := w.sizeStruct(x)
		if err != nil {
			return 0, err
		}
		n = lenField(inner)
	case []any:
		list := w.push()
		inner := 0
		for _, e := range x {
			en, err := w.sizeValue(e)
			if err != nil {
				return 0, err
			}
			inner += lenField(en)
		}
		w.sizes[list] = inner
		n = lenField(inner)
	default:
		return 0, fmt.Errorf("unexpected claim type %T", v)
	}
	w.sizes[at] = n
	return n, nil
}

// pop is the next size append needs.
func (w *structWire) pop() int {
	n := w.sizes[w.next]
	w.next++
	return n
}

// appendStruct appends a Struct's fields (not its length), whose size was
// popped already.
func (w *structWire) appendStruct(b []byte, m map[string]any) []byte {
	keys := w.keys[w.key : w.key+len(m)]
	w.key += len(m)
	for _, k := range keys {
		v := w.sizes[w.next] // the value's size, popped by appendValue
		b = protowire.AppendTag(b, structFields, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(lenString(k)+lenField(v)))
		b = protowire.AppendTag(b, mapEntryKey, protowire.BytesType)
		b = protowire.AppendString(b, k)
		b = protowire.AppendTag(b, mapEntryValue, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(v))
		b = w.appendValue(b, m[k])
	}
	return b
}

// appendValue appends the fields of a Value (not its length). Numbers
// become doubles, as Struct holds no other kind of number. size checked
// every value already.
func (w *structWire) appendValue(b []byte, v any) []byte {
	w.pop()
	switch x := v.(type) {
	case nil:
		b = protowire.AppendTag(b, valueNull, protowire.VarintType)
		return protowire.AppendVarint(b, 0)
	case bool:
		b = protowire.AppendTag(b, valueBool, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeBool(x))
	case string:
		b = protowire.AppendTag(b, valueString, protowire.BytesType)
		return protowire.AppendString(b, x)
	case json.Number:
		f, _ := strconv.ParseFloat(string(x), 64)
		b = protowire.AppendTag(b, valueNumber, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(f))
	case map[string]any:
		b = protowire.AppendTag(b, valueStruct, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(w.pop()))
		return w.appendStruct(b, x)
	case []any:
		b = protowire.AppendTag(b, valueList, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(w.pop()))
		for _, e := range x {
			b = protowire.AppendTag(b, listValues, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(w.sizes[w.next]))
			b = w.appendValue(b, e)
		}
		return b
	}
	return b // size refused any other type
}
