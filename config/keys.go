package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/vakt-dev/vakt/authz"
)

// loadKeys parses each application's inline key set or reads its key file
// (relative to dir) into Keys. An application with more than one key source
// is left alone; validate reports it.
func (c *Config) loadKeys(v *validator, dir string) {
	for i := range c.Applications {
		a := &c.Applications[i]
		if keySources(a) != 1 {
			continue
		}
		at := fmt.Sprintf("applications[%d]", i)
		switch {
		case a.JWKS != nil:
			set, err := keySetFromYAML(a.JWKS)
			if err != nil {
				v.fail(at+".jwks", "%v", err)
				continue
			}
			a.Keys = set
		case a.JWKSFile != "":
			// The field keeps the name as written, for errors to quote.
			data, err := os.ReadFile(resolvePath(dir, a.JWKSFile))
			if err != nil {
				v.fail(at+".jwksFile", "%v", errors.Unwrap(err))
				continue
			}
			set, err := strictKeySet(data)
			if err != nil {
				v.fail(at+".jwksFile", "%s: %v", a.JWKSFile, err)
				continue
			}
			a.Keys = set
		}
	}
}

// keySources counts the key sources an application gives: jwks, jwksFile
// and jwksUri.
func keySources(a *Application) int {
	n := 0
	for _, set := range []bool{a.JWKS != nil, a.JWKSFile != "", a.JWKSURI != ""} {
		if set {
			n++
		}
	}
	return n
}

// keySetFromYAML converts an inline key set (a YAML or JSON object) to JSON
// and parses it.
func keySetFromYAML(v any) (*authz.KeySet, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return strictKeySet(b)
}

// strictKeySet parses an application's own key set. A key vakt cannot use
// is an error here, not a warning: an operator wrote it, and a key dropped
// without a word would leave the application unable to authenticate.
func strictKeySet(b []byte) (*authz.KeySet, error) {
	set, skipped, err := authz.ParseKeySet(b)
	if err != nil {
		return nil, err
	}
	if len(skipped) > 0 {
		return nil, errors.Join(skipped...)
	}
	return set, nil
}
