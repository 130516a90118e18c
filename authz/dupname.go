package authz

import (
	"bytes"
	"encoding/json"
)

// duplicateName reports the first member name that an object in data repeats,
// at any depth. data must be valid JSON. RFC 7515 §5.2 and RFC 7519 §4 require
// rejecting duplicates; Go's decoder would silently keep the last one, so two
// parsers could read different claims from one token.
func duplicateName(data []byte) (string, bool) {
	type object struct {
		names [][]byte
		set   map[string]struct{} // built once an object has many members
	}
	var stack []*object // nil entries are arrays
	expectName := false
	for i := 0; i < len(data); {
		switch data[i] {
		case '{':
			stack = append(stack, &object{})
			expectName = true
			i++
		case '[':
			stack = append(stack, nil)
			expectName = false
			i++
		case '}', ']':
			stack = stack[:len(stack)-1]
			expectName = false
			i++
		case ',':
			expectName = len(stack) > 0 && stack[len(stack)-1] != nil
			i++
		case '"':
			end := stringEnd(data, i)
			if expectName {
				name := data[i+1 : end-1]
				if bytes.IndexByte(name, '\\') >= 0 {
					var s string
					if json.Unmarshal(data[i:end], &s) != nil {
						return "", false // not reached for valid JSON
					}
					name = []byte(s)
				}
				obj := stack[len(stack)-1]
				if obj.set != nil {
					if _, ok := obj.set[string(name)]; ok {
						return string(name), true
					}
					obj.set[string(name)] = struct{}{}
				} else {
					for _, n := range obj.names {
						if bytes.Equal(n, name) {
							return string(name), true
						}
					}
					obj.names = append(obj.names, name)
					if len(obj.names) > 16 { // keep hostile objects linear
						obj.set = make(map[string]struct{}, 32)
						for _, n := range obj.names {
							obj.set[string(n)] = struct{}{}
						}
						obj.names = nil
					}
				}
				expectName = false
			}
			i = end
		default:
			i++
		}
	}
	return "", false
}

// stringEnd returns the index just past the string literal starting at i.
func stringEnd(data []byte, i int) int {
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(data)
}
