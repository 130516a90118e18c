package config

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
)

// ByteSize is an amount of memory: a number of bytes, or one with a
// Kubernetes-style binary suffix ("64Mi", "512Ki", "1Gi"). Zero means "not
// set".
type ByteSize int64

var byteSuffixes = [...]struct {
	suffix string
	factor int64
}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}}

// UnmarshalText parses "67108864" or "64Mi".
func (b *ByteSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	factor := int64(1)
	for _, sf := range byteSuffixes {
		if n, ok := strings.CutSuffix(s, sf.suffix); ok {
			s, factor = n, sf.factor
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<50)/factor {
		return fmt.Errorf("%q is not a size (write e.g. 64Mi, 512Ki or a number of bytes)", text)
	}
	*b = ByteSize(n * factor)
	return nil
}

// UnmarshalYAML decodes a scalar with UnmarshalText, keeping the line.
func (b *ByteSize) UnmarshalYAML(node ast.Node) error {
	var s string
	if err := yaml.NodeToValue(node, &s); err != nil {
		return err
	}
	if err := b.UnmarshalText([]byte(s)); err != nil {
		msg := err.Error()
		if p := strings.TrimPrefix(node.GetPath(), "$."); p != "" && p != "$" {
			msg = p + ": " + msg
		}
		return &yaml.SyntaxError{Message: msg, Token: node.GetToken()}
	}
	return nil
}
