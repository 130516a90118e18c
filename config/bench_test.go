package config_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/vakt-dev/vakt/config"
)

// BenchmarkCheckApplication checks one resource of about 250 KiB (3300
// routes), as a merge does for each new version:
//
//	go test ./config -run XXX -bench CheckApplication
func BenchmarkCheckApplication(b *testing.B) {
	c, err := config.Load([]byte("issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nkubernetes: {enabled: true}\n"), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	routes := make([]any, 0, 3300)
	for i := range 3300 {
		routes = append(routes, map[string]any{"pathPrefix": fmt.Sprintf("/p%05d/", i), "methods": []any{"GET", "POST"}, "scopes": []any{"read", "write"}})
	}
	spec, _ := json.Marshal(map[string]any{"routes": routes})
	b.SetBytes(int64(len(spec)))
	x := c.NewResourceIndex()
	for b.Loop() {
		if _, _, err := x.CheckApplication("a", "team-a", nil, spec); err != nil {
			b.Fatal(err)
		}
	}
}
