package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/vakt-dev/vakt/config"
)

func TestDurationUnmarshalText(t *testing.T) {
	tests := []struct {
		text    string
		want    time.Duration
		wantErr bool
	}{
		{"30s", 30 * time.Second, false},
		{"15m", 15 * time.Minute, false},
		{"1h30m", 90 * time.Minute, false},
		{"-1s", -time.Second, false}, // the range is validate's to check
		{"", 0, false},
		{"30", 0, true},
		{"soon", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			var d config.Duration
			err := d.UnmarshalText([]byte(tt.text))
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "is not a duration") {
					t.Fatalf("got %v, %v; want an error about a duration", d, err)
				}
				return
			}
			if err != nil || d.Std() != tt.want {
				t.Fatalf("got %v, %v; want %v", d, err, tt.want)
			}
		})
	}
}

// TestDurationDecodesFromYAML checks that goccy/go-yaml, in strict mode,
// decodes a Duration through it and that a bad one fails at its line.
func TestDurationDecodesFromYAML(t *testing.T) {
	type doc struct {
		Name string          `yaml:"name"`
		D    config.Duration `yaml:"d"`
	}
	tests := []struct {
		name, yaml string
		want       time.Duration
		wantLine   int // 0: no error
		wantMsg    string
	}{
		{"block", "name: x\nd: 30s\n", 30 * time.Second, 0, ""},
		{"quoted", "name: x\nd: '15m'\n", 15 * time.Minute, 0, ""},
		{"flow", "{name: x, d: 2m}\n", 2 * time.Minute, 0, ""},
		{"null is not set", "name: x\nd:\n", 0, 0, ""},
		{"absent is not set", "name: x\n", 0, 0, ""},
		{"bare number", "name: x\n\nd: 30\n", 0, 3, `d: "30" is not a duration`},
		{"bare number in flow", "{name: x,\n d: 30}\n", 0, 2, `d: "30" is not a duration`},
		{"mapping", "name: x\nd: {s: 30}\n", 0, 2, "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got doc
			err := yaml.UnmarshalWithOptions([]byte(tt.yaml), &got, yaml.Strict())
			if tt.wantLine == 0 {
				if err != nil || got.D.Std() != tt.want {
					t.Fatalf("got %v, %v; want %v", got.D, err, tt.want)
				}
				return
			}
			var ye yaml.Error
			if !errors.As(err, &ye) || ye.GetToken() == nil {
				t.Fatalf("error %v carries no position", err)
			}
			if line := ye.GetToken().Position.Line; line != tt.wantLine || !strings.Contains(ye.GetMessage(), tt.wantMsg) {
				t.Fatalf("line %d: %s; want line %d: %s", line, ye.GetMessage(), tt.wantLine, tt.wantMsg)
			}
		})
	}
}

func TestDurationsInConfig(t *testing.T) {
	tests := []struct {
		name, yaml       string
		leeway, lifetime time.Duration
	}{
		{"defaults", base, 0, 15 * time.Minute},
		{"given", base + provider + "    leeway: 2m\nsigning:\n  tokenLifetime: 1h\n", 2 * time.Minute, time.Hour},
		{"zero leeway", base + provider + "    leeway: 0s\n", 0, 15 * time.Minute},
		{"empty is not set", base + provider + "    leeway: \"\"\nsigning:\n  tokenLifetime: \"\"\n", 0, 15 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Load([]byte(tt.yaml), t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var leeway time.Duration
			if len(c.IdentityProviders) > 0 {
				leeway = c.IdentityProviders[0].Leeway.Std()
			}
			if leeway != tt.leeway || c.Signing.TokenLifetime.Std() != tt.lifetime {
				t.Fatalf("leeway %v, token lifetime %v; want %v, %v", leeway, c.Signing.TokenLifetime, tt.leeway, tt.lifetime)
			}
		})
	}
}

const provider = "identityProviders:\n  - name: a\n    issuer: https://a.example/\n    jwksUri: https://a.example/jwks\n"

func TestByteSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want config.ByteSize
		err  bool
	}{
		{"67108864", 64 << 20, false},
		{"64Mi", 64 << 20, false},
		{"512Ki", 512 << 10, false},
		{"1Gi", 1 << 30, false},
		{"0", 0, false},
		{"64MB", 0, true},
		{"-1", 0, true},
		{"Mi", 0, true},
		{"99999999999Gi", 0, true},
	} {
		var b config.ByteSize
		err := b.UnmarshalText([]byte(tt.in))
		if (err != nil) != tt.err || (!tt.err && b != tt.want) {
			t.Errorf("%q: %d, %v", tt.in, b, err)
		}
	}
	c, err := config.Load([]byte("issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nvalidation:\n  cacheMemory: 32Mi\n"), t.TempDir())
	if err != nil || c.Validation.CacheMemory != 32<<20 {
		t.Fatalf("%v %v", c, err)
	}
	_, err = config.Load([]byte("issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nvalidation:\n  cacheMemory: lots\n"), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "line 4") || !strings.Contains(err.Error(), "not a size") {
		t.Fatalf("bad size: %v", err)
	}
}
