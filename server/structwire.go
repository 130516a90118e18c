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

// appendDynamicMetadata appends CheckResponse.dynamic_metadata to a
// marshalled CheckResponse: {namespace: claims}, the field byte for byte
// as proto.Marshal writes it (TestDynamicMetadataWire), keys in order. The
// whole response is the same message as proto.Marshal's, not the same
// bytes: it writes field 4 before the ok_response oneof (3), this after. It is what claimsStruct and a reflective Marshal make, at a
// fraction of their cost, paid on every cache miss.
func appendDynamicMetadata(b []byte, namespace string, claims map[string]any) ([]byte, error) {
	inner, err := appendStruct(nil, claims)
	if err != nil {
		return b, err
	}
	// {namespace: Value{struct_value: inner}}
	value := protowire.AppendTag(nil, valueStruct, protowire.BytesType)
	value = protowire.AppendBytes(value, inner)
	entry := appendEntry(nil, namespace, value)
	outer := protowire.AppendTag(nil, structFields, protowire.BytesType)
	outer = protowire.AppendBytes(outer, entry)
	b = protowire.AppendTag(b, checkDynamicMetadata, protowire.BytesType)
	return protowire.AppendBytes(b, outer), nil
}

// appendStruct appends the fields of a Struct (not its length).
func appendStruct(b []byte, m map[string]any) ([]byte, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		value, err := appendValue(nil, m[k])
		if err != nil {
			return b, err
		}
		b = protowire.AppendTag(b, structFields, protowire.BytesType)
		b = protowire.AppendBytes(b, appendEntry(nil, k, value))
	}
	return b, nil
}

func appendEntry(b []byte, key string, value []byte) []byte {
	b = protowire.AppendTag(b, mapEntryKey, protowire.BytesType)
	b = protowire.AppendString(b, key)
	b = protowire.AppendTag(b, mapEntryValue, protowire.BytesType)
	return protowire.AppendBytes(b, value)
}

// appendValue appends the fields of a Value (not its length). Numbers
// become doubles, as Struct holds no other kind of number.
func appendValue(b []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		b = protowire.AppendTag(b, valueNull, protowire.VarintType)
		return protowire.AppendVarint(b, 0), nil
	case bool:
		b = protowire.AppendTag(b, valueBool, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeBool(x)), nil
	case string:
		b = protowire.AppendTag(b, valueString, protowire.BytesType)
		return protowire.AppendString(b, x), nil
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return b, err
		}
		b = protowire.AppendTag(b, valueNumber, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(f)), nil
	case map[string]any:
		inner, err := appendStruct(nil, x)
		if err != nil {
			return b, err
		}
		b = protowire.AppendTag(b, valueStruct, protowire.BytesType)
		return protowire.AppendBytes(b, inner), nil
	case []any:
		var list []byte
		for _, e := range x {
			ev, err := appendValue(nil, e)
			if err != nil {
				return b, err
			}
			list = protowire.AppendTag(list, listValues, protowire.BytesType)
			list = protowire.AppendBytes(list, ev)
		}
		b = protowire.AppendTag(b, valueList, protowire.BytesType)
		return protowire.AppendBytes(b, list), nil
	default:
		return b, fmt.Errorf("unexpected claim type %T", v)
	}
}
