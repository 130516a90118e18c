package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

// decodeError turns a YAML error decoding a Config into one line: "line 3:
// unknown field ...".
func decodeError(err error, data []byte) error {
	return decodeErrorOf(err, data, reflect.TypeFor[Config]())
}

// decodeErrorOf is decodeError for a document of type t.
func decodeErrorOf(err error, data []byte, t reflect.Type) error {
	var uf *yaml.UnknownFieldError
	if errors.As(err, &uf) {
		if tok := firstUnknownField(data, t); tok != nil {
			return fmt.Errorf(`line %d: unknown field "%s"`, tok.Position.Line, tok.Value)
		}
	}
	var ye yaml.Error
	if errors.As(err, &ye) {
		if tok := ye.GetToken(); tok != nil && tok.Position != nil {
			return fmt.Errorf("line %d: %s", tok.Position.Line, ye.GetMessage())
		}
	}
	msg := yaml.FormatError(err, false, false)
	return errors.New(strings.TrimSpace(msg))
}

// firstUnknownField finds the first key in data, in source order, that names
// no field of t. goccy/go-yaml's strict mode picks the unknown field it
// reports out of a map, so a mapping with two would give either error.
func firstUnknownField(data []byte, t reflect.Type) *token.Token {
	f, err := parser.ParseBytes(data, 0)
	if err != nil || len(f.Docs) == 0 {
		return nil
	}
	return unknownField(f.Docs[0].Body, t)
}

// unknownField walks n as a value of type t. Keys it cannot read plainly
// (merge keys, tags, aliases) end the walk: the decoder's own error stands.
func unknownField(n ast.Node, t reflect.Type) *token.Token {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if a, ok := n.(*ast.AnchorNode); ok {
		n = a.Value
	}
	// A type that decodes itself, such as Duration, has no fields to check.
	if n == nil || reflect.PointerTo(t).Implements(reflect.TypeFor[yaml.NodeUnmarshaler]()) {
		return nil
	}
	switch t.Kind() {
	case reflect.Slice:
		seq, ok := n.(*ast.SequenceNode)
		if !ok {
			return nil
		}
		for _, v := range seq.Values {
			if tok := unknownField(v, t.Elem()); tok != nil {
				return tok
			}
		}
	case reflect.Struct:
		m, ok := n.(ast.MapNode)
		if !ok {
			return nil
		}
		fields := yamlFields(t)
		for it := m.MapRange(); it.Next(); {
			key, ok := it.Key().(*ast.StringNode)
			if !ok {
				return nil
			}
			ft, ok := fields[key.Value]
			if !ok {
				return key.GetToken()
			}
			if tok := unknownField(it.Value(), ft); tok != nil {
				return tok
			}
		}
	}
	return nil
}

// yamlFields maps the YAML names of t's fields to their types, named as
// goccy/go-yaml names them; an inline field's own fields are t's.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || tag == "-" {
			continue
		}
		if opts == "inline" {
			for name, ft := range yamlFields(f.Type) {
				fields[name] = ft
			}
			continue
		}
		if tag == "" {
			tag = strings.ToLower(f.Name)
		}
		fields[tag] = f.Type
	}
	return fields
}
