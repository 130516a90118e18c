package server

import (
	"encoding/json"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/types/known/structpb"
)

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
