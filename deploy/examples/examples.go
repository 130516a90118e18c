// Package examples holds vakt's example configurations. Development is the
// configuration `vakt serve` runs on when given none.
package examples

import (
	_ "embed"
	"encoding/json"
)

// Development is the embedded development default.
//
//go:embed vakt.yaml
var Development []byte

// App1Key and App3Key are the demo private keys of app-1 and app-3 (single
// JWKs). They are public: see keys/README.md.
var (
	//go:embed keys/app-1.jwk
	App1Key []byte
	//go:embed keys/app-3.jwk
	App3Key []byte
)

// DemoKeyIDs returns the kids of the public demo keys, so that vakt can warn
// when a configuration file trusts one.
func DemoKeyIDs() []string {
	var ids []string
	for _, k := range [][]byte{App1Key, App3Key} {
		var jwk struct {
			Kid string `json:"kid"`
		}
		if json.Unmarshal(k, &jwk) == nil && jwk.Kid != "" {
			ids = append(ids, jwk.Kid)
		}
	}
	return ids
}
