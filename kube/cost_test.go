package kube

// What one namespace can make every replica's merges cost.

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynfake "k8s.io/client-go/dynamic/fake"
)

func fakeDynamic() *dynfake.FakeDynamicClient {
	return dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		applicationsGVR: "ApplicationList",
		jwkersGVR:       "JwkerList",
		namespacesGVR:   "NamespaceList",
		configMapsGVR:   "ConfigMapList",
	})
}

func appObject(ns, name string, created time.Time, gen int64, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "vakt.dev/v1alpha1", "kind": "Application", "spec": spec}}
	u.SetNamespace(ns)
	u.SetName(name)
	u.SetUID(types.UID("uid-" + ns + "-" + name))
	u.SetGeneration(gen)
	u.SetCreationTimestamp(metav1.NewTime(created))
	u.SetResourceVersion(fmt.Sprint(gen)) // as the API server gives every object one
	return u
}

// bigSpec is a spec the API server stores (jwks preserves unknown fields,
// and nothing bounds the spec's size but etcd's request limit, about
// 1.5 MiB) and vakt refuses (more than 256 KiB): ~n KiB of small objects.
func bigSpec(kib int) map[string]any {
	keys := make([]any, 0, kib*1024/24)
	for i := 0; i < kib*1024/24; i++ {
		keys = append(keys, map[string]any{"k": fmt.Sprint(i), "x": "abcdefgh"})
	}
	return map[string]any{"jwks": map[string]any{"keys": keys}}
}

// A merge costs what changed, not what every namespace declares: one
// namespace's 20 refused Applications of over 800 KiB each (the API server
// stores them; vakt refuses past 256 KiB) are checked once per version and
// written as JSON once per version, never again at a later merge. Counted,
// not timed: the times are logged (a reload with them, against one
// without), for a reader.
func TestMergeCostOfRefusedBytes(t *testing.T) {
	k := NewSource(SourceConfig{Client: fakeDynamic(), Logger: quiet})
	store := k.informers[0].GetStore()
	created := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 500 {
		_ = store.Add(appObject(fmt.Sprintf("team-%d", i%50), fmt.Sprintf("app-%d", i), created, 1, map[string]any{
			"routes": []any{map[string]any{"pathPrefix": "/", "scopes": []any{"read"}}}}))
	}
	load := mergeConfig(t, "")
	reload := func() time.Duration {
		start := time.Now()
		_, commit := k.merger.merge(load(), k.Resources(), quiet, false)
		commit()
		return time.Since(start)
	}
	reload()
	base := reload()
	for i := range 20 {
		_ = store.Add(appObject("attacker", fmt.Sprintf("big-%d", i), created, 1, bigSpec(700)))
	}
	checks := k.merger.checks
	reload() // the checks of the new versions (refused: too big), once
	if n := k.merger.checks - checks; n != 20 {
		t.Fatalf("%d versions checked for 20 new ones", n)
	}
	// The JSON of each big spec, as written once.
	specs := func() map[string]*byte {
		k.specs.mu.Lock()
		defer k.specs.mu.Unlock()
		out := map[string]*byte{}
		for uid, c := range k.specs.m {
			if strings.Contains(uid, "attacker") {
				out[uid] = &c.spec[0]
			}
		}
		return out
	}
	written := specs()
	if len(written) != 20 {
		t.Fatalf("%d big specs written", len(written))
	}
	checks = k.merger.checks
	var total time.Duration
	for range 5 {
		total += reload()
	}
	if n := k.merger.checks - checks; n != 0 {
		t.Errorf("5 merges with nothing new checked %d versions again", n)
	}
	if again := specs(); !maps.Equal(again, written) {
		t.Error("a merge with nothing new wrote the big specs as JSON again")
	}
	per := total / 5
	b, _ := json.Marshal(bigSpec(700))
	t.Logf("a reload's merge with 500 small Applications: %v; with one namespace's 20 refused %d KiB specs besides: %v",
		base, len(b)>>10, per)
}

// A resource created or deleted in a namespace that must wait for its
// rate asks no merge (one comes when the rate allows): creating and
// deleting in a loop is held to the namespace's rate as updating is. The
// informers and the fake API server run in a bubble of testing/synctest:
// synctest.Wait returns once each event has been handled, so that the
// reloads asked are counted after every one of them.
func TestCreateDeleteHeldToRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := fakeDynamic()
		var changes atomic.Int64
		k := NewSource(SourceConfig{Client: client, Logger: quiet, OnChange: func() { changes.Add(1) }})
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan struct{})
		go func() { defer close(ran); k.Run(ctx) }()
		defer func() { cancel(); <-ran }()
		synctest.Wait()
		if !k.Synced() {
			t.Fatal("never synced")
		}
		// The namespace has spent its changes: the merger says it waits.
		now := time.Now()
		k.merger.now = func() time.Time { return now }
		k.merger.retry = func(time.Duration) {}
		var rs []Resource
		for i := range 12 {
			rs = append(rs, app("attacker", fmt.Sprintf("a-%d", i), 1, `{}`))
		}
		k.merger.prime() // the resources as first read were merged
		_, commit := k.merger.merge(mergeConfig(t, "")(), rs, quiet, false)
		commit()
		k.merger.mu.Lock()
		k.merger.retryAt = now.Add(time.Hour)
		k.merger.mu.Unlock()
		if !k.merger.waiting("attacker") {
			t.Fatal("the namespace is not waiting")
		}
		apps := client.Resource(applicationsGVR).Namespace("attacker")
		before := changes.Load()
		const loops = 20
		for i := range loops {
			u := appObject("attacker", "churn", now, 1, map[string]any{})
			u.SetUID(types.UID(fmt.Sprint("churn-", i)))
			if _, err := apps.Create(ctx, u, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			synctest.Wait() // the creation seen and handled
			if err := apps.Delete(ctx, "churn", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			synctest.Wait() // the deletion too
		}
		got := changes.Load() - before
		t.Logf("%d create/delete pairs in a namespace that must wait: %d reloads asked", loops, got)
		if got > 2 {
			t.Errorf("a namespace past its rate asked %d reloads by creating and deleting", got)
		}
	})
}
