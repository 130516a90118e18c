package kube

import (
	"testing"
	"time"

	"github.com/vakt-dev/vakt/config"
)

// desiredStatus merges statusOf's conditions into the observed ones as
// meta.SetStatusCondition does: a status that says the same is not written
// again; a condition whose status stands keeps its lastTransitionTime
// while its reason and message change; one whose status changes moves it;
// one statusOf no longer asks for goes, and others' conditions are not
// vakt's to write.
func TestDesiredStatus(t *testing.T) {
	r := Resource{Kind: config.KindApplication, Namespace: "team-a", Name: "app-1", UID: "u", Generation: 2}
	then := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := then.Add(time.Hour)
	stamp := func(t time.Time) string { return t.Format(time.RFC3339) }
	observed := map[string]any{
		"observedGeneration": int64(2),
		"conditions": []any{
			map[string]any{"type": "Ready", "status": "True", "reason": "Serving", "message": "generation 2 serves", "observedGeneration": int64(2), "lastTransitionTime": stamp(then)},
			map[string]any{"type": "ClientKey", "status": "False", "reason": "Pending", "message": "making", "observedGeneration": int64(2), "lastTransitionTime": stamp(then)},
			map[string]any{"type": "Istio", "status": "True", "reason": "Theirs", "message": "", "lastTransitionTime": stamp(then)},
		},
	}
	fields := map[string]any{"observedGeneration": int64(2)}
	ready := condition{typ: "Ready", status: "True", reason: "Serving", message: "generation 2 serves"}
	conds := func(status map[string]any) map[string]map[string]any {
		out := map[string]map[string]any{}
		list, _ := status["conditions"].([]any)
		for _, c := range list {
			m := c.(map[string]any)
			out[m["type"].(string)] = m
		}
		return out
	}

	if _, changed := desiredStatus(r, fields, []condition{ready, {typ: "ClientKey", status: "False", reason: "Pending", message: "making"}}, observed, now); changed {
		t.Error("the status as observed was to be written again")
	}

	// ClientKey: same status, new reason and message; then True.
	st, changed := desiredStatus(r, fields, []condition{ready, {typ: "ClientKey", status: "False", reason: "Failed", message: "forbidden"}}, observed, now)
	c := conds(st)
	if !changed || c["ClientKey"]["reason"] != "Failed" || c["ClientKey"]["lastTransitionTime"] != stamp(then) || c["Ready"]["lastTransitionTime"] != stamp(then) {
		t.Errorf("a new reason, the status standing: changed %v, %v", changed, c)
	}
	if _, ok := c["Istio"]; ok {
		t.Errorf("another's condition in vakt's status: %v", c)
	}
	st, changed = desiredStatus(r, fields, []condition{ready, {typ: "ClientKey", status: "True", reason: "Published", message: "key k"}}, observed, now)
	if c := conds(st); !changed || c["ClientKey"]["lastTransitionTime"] != stamp(now) || c["Ready"]["lastTransitionTime"] != stamp(then) {
		t.Errorf("ClientKey turned True: changed %v, %v", changed, c)
	}

	// secretName removed: ClientKey goes.
	st, changed = desiredStatus(r, fields, []condition{ready}, observed, now)
	if c := conds(st); !changed || len(c) != 1 || c["Ready"] == nil {
		t.Errorf("without ClientKey: changed %v, %v", changed, c)
	}

	// A new generation: observedGeneration changes, on the status and its
	// conditions.
	r3 := r
	r3.Generation = 3
	st, changed = desiredStatus(r3, map[string]any{"observedGeneration": int64(3)}, []condition{ready}, observed, now)
	if c := conds(st); !changed || c["Ready"]["observedGeneration"] != int64(3) || c["Ready"]["lastTransitionTime"] != stamp(then) {
		t.Errorf("generation 3: changed %v, %v", changed, c)
	}

	// Nothing observed (not in the cache): written.
	if _, changed := desiredStatus(r, fields, []condition{ready}, nil, now); !changed {
		t.Error("a status never observed was not to be written")
	}

	// A Jwker: NAIS's fields, a field vakt owns that goes is a change.
	j := Resource{Kind: config.KindJwker, Namespace: "team-a", Name: "jw", UID: "j", Generation: 1}
	jobs := map[string]any{"observedGeneration": int64(1), "synchronizationState": "RolloutComplete", "clientID": "c:team-a:jw", "keyIDs": []any{"k"}, "synchronizationSecretName": "s"}
	if _, changed := desiredStatus(j, map[string]any{"observedGeneration": int64(1), "synchronizationState": "RolloutComplete", "clientID": "c:team-a:jw", "keyIDs": []any{"k"}, "synchronizationSecretName": "s"}, nil, jobs, now); changed {
		t.Error("a Jwker's status as observed was to be written again")
	}
	if _, changed := desiredStatus(j, map[string]any{"observedGeneration": int64(1), "synchronizationState": "FailedPrepare"}, nil, jobs, now); !changed {
		t.Error("a Jwker no longer served: its clientID and keys stayed")
	}
}
