package kube

import (
	"fmt"
	"testing"
	"time"

	"github.com/vakt-dev/vakt/config"
)

func jwkerRes(ns, name string, created time.Time) Resource {
	return Resource{Kind: config.KindJwker, Namespace: ns, Name: name, UID: "u-" + ns + "-" + name, Generation: 1,
		Created: created, Spec: []byte(`{"accessPolicy":{},"secretName":"` + name + `-tokenx"}`)}
}

// A replica that starts (a restart, a rollout, a scale-up) serves every
// resource there is at once, as the replicas serving all along do: the
// resources as first read take no change from their namespaces' rates
// (25 Jwkers of one namespace, past its burst of 10).
func TestMergeColdStartServesAll(t *testing.T) {
	load := mergeConfig(t, "") // default namespaceLimits: 60 a minute, bursts of 10
	created := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var rs []Resource
	for i := range 25 {
		rs = append(rs, jwkerRes("team-a", fmt.Sprintf("app-%02d", i), created.Add(time.Duration(i)*time.Hour)))
	}
	// The replica that served all along: the Jwkers came one a minute.
	now := created
	old := resourceMerger{now: func() time.Time { return now }}
	for i := range rs {
		now = rs[i].Created.Add(time.Minute)
		_, commit := old.merge(load(), rs[:i+1], quiet, false)
		commit()
		old.prime() // as Source.Merge does once the resources were read
	}
	states, _ := old.merge(load(), rs, quiet, false)
	servedOld := 0
	for _, st := range states {
		if st.Served != 0 {
			servedOld++
		}
	}
	// A replica started now, with the same resources in its informers.
	fresh := resourceMerger{now: func() time.Time { return now }}
	states, _ = fresh.merge(load(), rs, quiet, false)
	servedNew, slowed := 0, 0
	for _, st := range states {
		if st.Served != 0 {
			servedNew++
		}
		if st.Reason == ReasonSlowed {
			slowed++
		}
	}
	t.Logf("serving replica: %d of %d Jwkers served; a replica started now: %d served, %d Slowed", servedOld, len(rs), servedNew, slowed)
	if servedNew != servedOld {
		t.Errorf("a new replica serves %d of the %d Jwkers every other replica serves (%d Slowed by the namespace's change limit at start)", servedNew, servedOld, slowed)
	}
}

// Nor does the rate decide who holds a name on a new replica: team-b
// (11 Applications, the owner's the 11th, past its burst) has held
// app-b.example for a year; team-a's newer Application claims it too.
// Every replica, one started now too, gives it to team-b.
func TestMergeColdStartOwnership(t *testing.T) {
	load := mergeConfig(t, "  grants: [{namespaceSelector: {}, hosts: ['*.example']}]\n")
	year := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var rs []Resource
	for i := range 11 {
		spec := `{}`
		if i == 10 {
			spec = `{"hosts":["app-b.example"]}`
		}
		r := app("team-b", fmt.Sprintf("b-%02d", i), 1, spec)
		r.Created = year.Add(time.Duration(i) * time.Hour)
		rs = append(rs, r)
	}
	squat := app("team-a", "squat", 1, `{"hosts":["app-b.example"],"routes":[{"pathPrefix":"/","public":true}]}`)
	squat.Created = year.Add(300 * 24 * time.Hour)
	now := year
	old := resourceMerger{now: func() time.Time { return now }}
	for i := range rs {
		now = rs[i].Created.Add(time.Minute)
		_, commit := old.merge(load(), rs[:i+1], quiet, false)
		commit()
		old.prime() // as Source.Merge does once the resources were read
	}
	now = squat.Created.Add(time.Minute)
	all := append(append([]Resource{}, rs...), squat)
	states, commit := old.merge(load(), all, quiet, false)
	commit()
	owner := func(states []State) string {
		for _, st := range states {
			if st.Served != 0 && string(st.Resource.Spec) != `{}` {
				return st.Resource.Namespace + "/" + st.Resource.Name
			}
		}
		return ""
	}
	if got := owner(states); got != "team-b/b-10" {
		t.Fatalf("the replica serving all along gives app-b.example to %s", got)
	}
	fresh := resourceMerger{now: func() time.Time { return now }}
	states, _ = fresh.merge(load(), all, quiet, false)
	if got := owner(states); got != "team-b/b-10" {
		t.Errorf("a replica started now gives app-b.example to %s (team-b/b-10 is %s: %v)", got,
			stateOf(states, "team-b", "b-10").Reason, stateOf(states, "team-b", "b-10").Refused)
	}
}

// Of two resources created within the same second, the one recorded as
// serving (its status.served) keeps the names it holds, whatever the
// other's name: a squatter created within that second under a namespace
// that sorts first takes nothing, on a replica serving all along or a new
// one.
func TestMergeSameSecondRecordedKeeps(t *testing.T) {
	load := mergeConfig(t, "  grants: [{namespaceSelector: {}, hosts: ['*.example']}]\n")
	sec := time.Date(2026, 3, 1, 12, 0, 7, 0, time.UTC) // what both creationTimestamps say
	owner := app("team-b", "app-b", 1, `{"hosts":["app-b.example"]}`)
	owner.Created = sec
	squat := app("team-a", "squat", 1, `{"hosts":["app-b.example"],"routes":[{"pathPrefix":"/","public":true}]}`)
	squat.Created = sec
	var m resourceMerger
	states, commit := m.merge(load(), []Resource{owner}, quiet, false)
	commit()
	if st := stateOf(states, "team-b", "app-b"); st.Served != 1 {
		t.Fatalf("owner: %+v", st)
	}
	owner.Recorded = &Recorded{Generation: 1, Spec: owner.Spec} // the elected replica's record
	for name, mm := range map[string]*resourceMerger{"serving all along": &m, "new": {}} {
		states, _ := mm.merge(load(), []Resource{squat, owner}, quiet, false)
		if st := stateOf(states, "team-b", "app-b"); st.Served != 1 {
			t.Errorf("%s: the owner is refused once a squatter created within its second appears: %s: %v", name, st.Reason, st.Refused)
		}
		if st := stateOf(states, "team-a", "squat"); st.Reason != ReasonConflict {
			t.Errorf("%s: the squatter: %+v", name, st)
		}
	}
}
