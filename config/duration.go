package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
)

// Duration is a length of time written in Go syntax ("30s", "15m"). Its zero
// value means "not set", which differs from an explicit "0s": a token
// lifetime of 0s is an error, not the default.
type Duration struct {
	d   time.Duration
	set bool
}

// Std returns the duration; zero when not set.
func (d Duration) Std() time.Duration { return d.d }

func (d Duration) String() string { return d.d.String() }

// UnmarshalText parses Go duration syntax. Empty text leaves d unset, as an
// empty string did before durations had a type.
func (d *Duration) UnmarshalText(text []byte) error {
	if len(text) == 0 {
		*d = Duration{}
		return nil
	}
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write e.g. 90s or 5m)", text)
	}
	*d = Duration{d: v, set: true}
	return nil
}

// UnmarshalYAML decodes a scalar with UnmarshalText. goccy/go-yaml would call
// UnmarshalText itself, but without the node, so the error would lose its
// line and field.
func (d *Duration) UnmarshalYAML(node ast.Node) error {
	// Decoding into a string first accepts what a string field did: a bare
	// 30 becomes "30", which UnmarshalText then rejects for lack of a unit.
	var s string
	if err := yaml.NodeToValue(node, &s); err != nil {
		return err
	}
	if err := d.UnmarshalText([]byte(s)); err != nil {
		msg := err.Error()
		if p := strings.TrimPrefix(node.GetPath(), "$."); p != "" && p != "$" {
			msg = p + ": " + msg
		}
		return &yaml.SyntaxError{Message: msg, Token: node.GetToken()}
	}
	return nil
}
