package kube

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/config"
)

// mergeConfig loads a configuration for the merger's tests; extra is YAML
// inside kubernetes.
func mergeConfig(t *testing.T, extra string) func() *config.Config {
	return func() *config.Config {
		t.Helper()
		c, err := config.Load([]byte("issuer: http://127.0.0.1:8080\ncluster: dev-gcp\nkubernetes:\n  enabled: true\n"+extra), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}

func app(ns, name string, gen int64, spec string) Resource {
	return Resource{Kind: config.KindApplication, Namespace: ns, Name: name, UID: "u-" + ns + "-" + name, Generation: gen,
		Created: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), Spec: []byte(spec)}
}

func stateOf(states []State, ns, name string) State {
	for _, st := range states {
		if st.Resource.Namespace == ns && st.Resource.Name == name {
			return st
		}
	}
	return State{}
}

// A change costs the check of the changed resource alone; a change of the
// configuration checks every resource again, and a change of a namespace's
// labels that changes which grants apply to it checks its resources again.
func TestMergeChecksTheChangedOnly(t *testing.T) {
	load := mergeConfig(t, "")
	var m resourceMerger
	var rs []Resource
	for i := range 20 {
		rs = append(rs, app(fmt.Sprintf("team-%d", i%4), fmt.Sprintf("app-%d", i), 1, `{"routes":[{"pathPrefix":"/","scopes":["read"]}]}`))
	}
	merge := func(c *config.Config, rs []Resource) []State {
		states, commit := m.merge(c, rs, quiet, false)
		commit()
		return states
	}
	merge(load(), rs)
	if m.checks != 20 {
		t.Fatalf("the first merge checked %d, want 20", m.checks)
	}
	merge(load(), rs)
	if m.checks != 20 {
		t.Fatalf("a merge with nothing changed checked %d more", m.checks-20)
	}
	rs[7].Generation, rs[7].Spec = 2, []byte(`{"routes":[{"pathPrefix":"/","scopes":["write"]}]}`)
	states := merge(load(), rs)
	if m.checks != 21 || stateOf(states, rs[7].Namespace, rs[7].Name).Served != 2 {
		t.Fatalf("one change: %d checks, want 21; %+v", m.checks, stateOf(states, rs[7].Namespace, rs[7].Name))
	}
	// New labels that change no grant's say check nothing again.
	rs[2].NamespaceLabels = map[string]string{"tier": "gold"} // team-2
	rs[6].NamespaceLabels = map[string]string{"tier": "gold"}
	merge(load(), rs)
	if m.checks != 21 {
		t.Fatalf("a namespace's new labels, no grant selecting by them: %d checks, want 21", m.checks)
	}
	// A new configuration checks everything again; then labels that
	// change which grants apply check that namespace's resources again.
	byLabel := mergeConfig(t, "  grants: [{namespaceSelector: {matchLabels: {tier: gold}}, hosts: ['*.example']}]\n")
	merge(byLabel(), rs)
	if m.checks != 41 {
		t.Fatalf("a new configuration: %d checks, want 41", m.checks)
	}
	rs[2].NamespaceLabels = map[string]string{"tier": "silver"}
	rs[6].NamespaceLabels = map[string]string{"tier": "silver"}
	merge(byLabel(), rs)
	if m.checks != 43 {
		t.Fatalf("labels that change the grants of a namespace: %d checks, want 43", m.checks)
	}
}

// A namespace that changes faster than kubernetes.namespaceLimits allows
// is slowed: its change waits, the version before it serves, and a merge
// is asked for when it may apply; another namespace's change applies at
// once.
func TestMergeSlowed(t *testing.T) {
	load := mergeConfig(t, "  namespaceLimits: {changesPerMinute: 60, changeBurst: 2}\n")
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	var retries []time.Duration
	m := resourceMerger{now: func() time.Time { return now }, retry: func(d time.Duration) { retries = append(retries, d) }, primed: true}
	merge := func(rs ...Resource) []State {
		states, commit := m.merge(load(), rs, quiet, false)
		commit()
		return states
	}
	a1, a2, a3 := app("team-a", "a1", 1, `{}`), app("team-a", "a2", 1, `{}`), app("team-a", "a3", 1, `{}`)
	b1 := app("team-b", "b1", 1, `{}`)
	states := merge(a1, a2, a3, b1)
	for _, want := range []struct {
		name   string
		served int64
		reason string
	}{{"a1", 1, ReasonServing}, {"a2", 1, ReasonServing}, {"a3", 0, ReasonSlowed}, {"b1", 1, ReasonServing}} {
		ns := "team-a"
		if want.name == "b1" {
			ns = "team-b"
		}
		if st := stateOf(states, ns, want.name); st.Served != want.served || st.Reason != want.reason {
			t.Errorf("%s: %+v, want served %d, %s", want.name, st, want.served, want.reason)
		}
	}
	if st := stateOf(states, "team-a", "a3"); !strings.Contains(st.Refused.Error(), "namespace team-a changes faster than kubernetes.namespaceLimits allows") {
		t.Errorf("a3: %v", st.Refused)
	}
	if len(retries) != 1 || retries[0] <= 0 || retries[0] > time.Second {
		t.Fatalf("retries asked %v, want one within a second", retries)
	}
	// The same merge again takes nothing more: the waiting change still
	// waits, the others stay.
	if st := stateOf(merge(a1, a2, a3, b1), "team-a", "a3"); st.Reason != ReasonSlowed {
		t.Fatalf("a3 again: %+v", st)
	}
	now = now.Add(time.Second)
	if st := stateOf(merge(a1, a2, a3, b1), "team-a", "a3"); st.Served != 1 || st.Reason != ReasonServing {
		t.Fatalf("a second later, a3: %+v", st)
	}
	// A changed version that must wait leaves the one before serving.
	a1.Generation, a1.Spec = 2, []byte(`{"routes":[{"pathPrefix":"/","public":true}]}`)
	a2.Generation = 2
	states = merge(a1, a2, a3, b1)
	if st := stateOf(states, "team-a", "a2"); st.Served != 1 || st.Reason != ReasonSlowed {
		t.Fatalf("a2's second version, the bucket empty: %+v", st)
	}
}

// kubernetes.namespaceLimits bound a namespace's resources, routes and
// rules: the newest past a bound are refused (LimitExceeded), an older one's
// new version past it keeps its previous version serving, and another
// namespace is not counted with it.
func TestMergeLimits(t *testing.T) {
	load := mergeConfig(t, "  namespaceLimits: {resources: 2, routes: 3, rules: 2}\n")
	var m resourceMerger
	merge := func(rs ...Resource) []State {
		states, commit := m.merge(load(), rs, quiet, false)
		commit()
		return states
	}
	route := `{"pathPrefix":"/","scopes":["read"]}`
	a1 := app("team-a", "a1", 1, `{"routes":[`+route+`,`+route+`]}`)
	a2 := app("team-a", "a2", 1, `{"routes":[`+route+`]}`)
	a2.Created = a2.Created.Add(time.Second)
	a3 := app("team-a", "a3", 1, `{}`)
	a3.Created = a3.Created.Add(2 * time.Second)
	b1 := app("team-b", "b1", 1, `{"routes":[`+route+`,`+route+`,`+route+`]}`)
	states := merge(a1, a2, a3, b1)
	if st := stateOf(states, "team-a", "a3"); st.Reason != ReasonLimitExceeded || !strings.Contains(st.Refused.Error(), "kubernetes.namespaceLimits.resources allows 2") {
		t.Errorf("a3: %+v", st)
	}
	for _, name := range []string{"a1", "a2"} {
		if st := stateOf(states, "team-a", name); st.Served != 1 {
			t.Errorf("%s: %+v", name, st)
		}
	}
	if st := stateOf(states, "team-b", "b1"); st.Served != 1 {
		t.Errorf("b1, another namespace: %+v", st)
	}
	// a2 asks for one route more than its namespace may have: its first
	// version goes on serving.
	a2.Generation, a2.Spec = 2, []byte(`{"routes":[`+route+`,`+route+`]}`)
	states = merge(a1, a2, b1)
	if st := stateOf(states, "team-a", "a2"); st.Served != 1 || st.Reason != ReasonLimitExceeded || !strings.Contains(st.Refused.Error(), "kubernetes.namespaceLimits.routes allows (3)") {
		t.Errorf("a2 past the routes: %+v", st)
	}
	rule := `{"application":"x","namespace":"team-c"}`
	a3.Generation, a3.Spec = 2, []byte(`{"accessPolicy":{"inbound":{"rules":[`+rule+`,`+rule[:len(rule)-1]+`,"cluster":"dev-gcp"}`+`,{"application":"y"}]}}}`)
	states = merge(a1, a3)
	if st := stateOf(states, "team-a", "a3"); st.Reason != ReasonLimitExceeded || !strings.Contains(st.Refused.Error(), "kubernetes.namespaceLimits.rules allows (2)") {
		t.Errorf("a3 past the rules: %+v", st)
	}
}
