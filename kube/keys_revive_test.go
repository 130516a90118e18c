package kube

import (
	"context"
	"encoding/base64"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vakt-dev/vakt/config"
)

// A team that writes a replaced key back into its Secret after a rotation
// (one that leaked, say) does not bring it back: vakt publishes as
// current only a key it published and did not replace, so the Secret gets
// a new key and the replaced one still stops at its until. (Nor is a key
// vakt never made adopted.)
func TestKubeReplacedKeyNotRevived(t *testing.T) {
	e := newKeysEnv(t, "")
	r := e.replicas[""]
	clock := time.Now()
	p := newKeyProvisioner(e.client, r.src, "vakt", quiet)
	p.now = func() time.Time { return clock }
	ctx := context.Background()
	const secret = "tokenx-app-x"
	key := config.KindJwker + "/team-a/app-x"
	e.apply(jwkersGVR, "team-a", `{"apiVersion":"nais.io/v1","kind":"Jwker","metadata":{"name":"app-x","namespace":"team-a"},"spec":{"accessPolicy":{},"secretName":"`+secret+`"}}`)
	e.until(10*time.Second, "the Jwker never served", func() bool { return r.src.Served() != nil && len(r.src.Served().States) > 0 })
	provision := func(n int) []string {
		t.Helper()
		var kids []string
		e.until(10*time.Second, "keys never served as published", func() bool {
			_, _ = p.syncKey(ctx, key)
			kids, _ = e.published(jwkersGVR, "team-a", "app-x")
			return len(kids) == n && slices.Equal(r.served(config.KindJwker, "team-a", "app-x"), kids)
		})
		return kids
	}
	k1 := provision(1)
	data, _ := e.secret("team-a", secret)
	oldJWK := data["TOKEN_X_PRIVATE_JWK"]

	// The cluster administrator rotates the key (vakt keys rotate).
	patch := `{"metadata":{"annotations":{"` + AnnotationRotateKey + `":"leaked"}}}`
	if _, err := e.client.Resource(jwkersGVR).Namespace("team-a").Patch(ctx, "app-x", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	e.until(10*time.Second, "the informer never saw the rotation", func() bool {
		got, ok := r.src.lookup(config.KindJwker, "team-a", "app-x")
		return ok && got.RotateKey == "leaked"
	})
	k2 := provision(2)
	if k2[0] == k1[0] || k2[1] != k1[0] {
		t.Fatalf("after the rotation: %v", k2)
	}
	_, rec := e.published(jwkersGVR, "team-a", "app-x")
	t.Logf("rotated: current %s, %s retired until %v", k2[0], rec.RetiredKeys[0].Kid, rec.RetiredKeys[0].Until)

	// The team writes the replaced key back into its Secret.
	_, sec := e.secret("team-a", secret)
	if err := unstructured.SetNestedField(sec.Object, base64.StdEncoding.EncodeToString([]byte(oldJWK)), "data", "TOKEN_X_PRIVATE_JWK"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Resource(secretsGVR).Namespace("team-a").Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The next check (within keyResync), then well past the overlap.
	clock = clock.Add(keyResync + time.Minute)
	_, _ = p.syncKey(ctx, key)
	clock = clock.Add(2 * time.Hour)
	kids := provision(1)
	t.Logf("after the overlap (1h) and more: published %v", kids)
	if slices.Contains(kids, k1[0]) {
		t.Errorf("key %s, replaced by %s an overlap ago, is again the application's current key and never expires; the rotation's key is gone", k1[0], k2[0])
	}
}

// The same with no Secret written at all: naming the earlier Secret again
// in spec.secretName (within the overlap) does not make its replaced key
// current again.
func TestKubeReplacedKeyNotRevivedBySecretName(t *testing.T) {
	e := newKeysEnv(t, "")
	r := e.replicas[""]
	clock := time.Now()
	p := newKeyProvisioner(e.client, r.src, "vakt", quiet)
	p.now = func() time.Time { return clock }
	ctx := context.Background()
	key := config.KindJwker + "/team-a/app-x"
	jwker := func(secret string) {
		e.apply(jwkersGVR, "team-a", `{"apiVersion":"nais.io/v1","kind":"Jwker","metadata":{"name":"app-x","namespace":"team-a"},"spec":{"accessPolicy":{},"secretName":"`+secret+`"}}`)
		e.until(10*time.Second, "never served with "+secret, func() bool {
			for _, st := range r.src.Served().States {
				if st.Resource.Name == "app-x" && st.SecretName == secret {
					return true
				}
			}
			return false
		})
	}
	provision := func(n int) []string {
		t.Helper()
		var kids []string
		e.until(10*time.Second, "keys never served as published", func() bool {
			_, _ = p.syncKey(ctx, key)
			kids, _ = e.published(jwkersGVR, "team-a", "app-x")
			return len(kids) == n && slices.Equal(r.served(config.KindJwker, "team-a", "app-x"), kids)
		})
		return kids
	}
	jwker("tokenx-1")
	k1 := provision(1)
	jwker("tokenx-2")
	k2 := provision(2)
	if k2[1] != k1[0] {
		t.Fatalf("%v %v", k1, k2)
	}
	clock = clock.Add(2 * time.Minute)
	jwker("tokenx-1") // back to the earlier Secret, within the overlap
	_, _ = p.syncKey(ctx, key)
	clock = clock.Add(3 * time.Hour)
	kids := provision(1)
	t.Logf("replaced %s by %s; after naming tokenx-1 again and 3h (overlap 1h): published %v", k1[0], k2[0], kids)
	if slices.Contains(kids, k1[0]) {
		t.Errorf("the replaced key %s is the current key again, hours past its until", k1[0])
	}
}
