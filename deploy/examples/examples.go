// Package examples holds vakt's example configurations. Development is the
// configuration `vakt serve` runs on when given none.
package examples

import _ "embed"

// Development is the embedded development default.
//
//go:embed vakt.yaml
var Development []byte
