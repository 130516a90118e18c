package kube

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// A namespace's new labels, when no grant selects by labels, check none
// of its resources again (here 30 Applications of about 250 KiB each).
func TestMergeLabelFlipChecksNothing(t *testing.T) {
	load := mergeConfig(t, "  grants: [{namespaces: [team-a], hosts: ['*.team-a.example']}]\n  namespaceLimits: {resources: 100, changeBurst: 100}\n")
	routes := make([]any, 0, 3300)
	for i := range 3300 {
		routes = append(routes, map[string]any{"pathPrefix": fmt.Sprintf("/p%05d/", i), "methods": []any{"GET", "POST"}, "scopes": []any{"read", "write"}})
	}
	spec, _ := json.Marshal(map[string]any{"routes": routes}) // past namespaceLimits.routes: LimitExceeded, but checked all the same
	var rs []Resource
	for i := range 30 {
		rs = append(rs, app("team-a", fmt.Sprintf("a-%03d", i), 1, string(spec)))
	}
	var m resourceMerger
	_, commit := m.merge(load(), rs, quiet, false)
	commit()
	checks := m.checks
	for i := range rs {
		rs[i].NamespaceLabels = map[string]string{"flip": "1"}
	}
	start := time.Now()
	_, commit = m.merge(load(), rs, quiet, false)
	commit()
	d := time.Since(start)
	t.Logf("spec %d KiB; one label flip: %d checks again, %v", len(spec)>>10, m.checks-checks, d)
	if m.checks != checks {
		t.Errorf("no grant selects namespaces by labels, yet a label change checked %d resources again (%v)", m.checks-checks, d)
	}
}
