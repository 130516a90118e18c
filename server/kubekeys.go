package server

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
)

// Annotations and labels of the client keys vakt makes.
const (
	// AnnotationRotateKey on an Application or Jwker asks for a new client
	// key whenever its value changes (vakt keys rotate sets it to the time).
	AnnotationRotateKey = "vakt.dev/rotate-key"
	annotationRotateKey = AnnotationRotateKey
	// annotationKeys on a Jwker holds what vakt published of its key (an
	// Application has it in its status): NAIS's Jwker status has no room
	// for keys, and its CRD is NAIS's.
	annotationKeys = "vakt.dev/keys"
	labelManagedBy = "app.kubernetes.io/managed-by"
	managedByVakt  = "vakt"
	// clientKeyAlgorithm is NAIS's: jwker makes 2048-bit RSA keys, and
	// applications' token libraries expect them.
	clientKeyAlgorithm = "RS256"
	// maxRetiredKeys bounds the replaced keys kept valid: rotations asked
	// for in a burst do not grow the key set without end.
	maxRetiredKeys = 4
	// keyResync is how often the elected replica checks a key whose inputs
	// did not change: a Secret deleted by hand is made again.
	keyResync = 10 * time.Minute
)

// The variables NAIS puts in an application's Secret (jwker's
// pkg/secret), which vakt makes the same.
const (
	envClientID      = "TOKEN_X_CLIENT_ID"
	envPrivateJWK    = "TOKEN_X_PRIVATE_JWK"
	envWellKnownURL  = "TOKEN_X_WELL_KNOWN_URL"
	envIssuer        = "TOKEN_X_ISSUER"
	envJWKSURI       = "TOKEN_X_JWKS_URI"
	envTokenEndpoint = "TOKEN_X_TOKEN_ENDPOINT"
)

var secretsGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

// publishedKeys is what vakt publishes of an application's client key,
// for every replica to read (readers need no Secret access): the public
// keys in force, the current one first; when each replaced one stops
// being valid; the rotation request last honoured; and the Secret the
// current key is in.
type publishedKeys struct {
	Keys        json.RawMessage `json:"keys"` // a JWK Set
	RetiredKeys []retiredKey    `json:"retiredKeys,omitempty"`
	Rotation    string          `json:"rotation,omitempty"`
	SecretName  string          `json:"secretName,omitempty"`
}

// retiredKey is a replaced key, valid until Until; SecretName is the
// Secret it was in when that is not the current one (a Jwker's earlier
// secretName), deleted when the key expires.
type retiredKey struct {
	Kid        string    `json:"kid"`
	Until      time.Time `json:"until"`
	SecretName string    `json:"secretName,omitempty"`
}

// parsePublishedKeys reads published keys for the merge: the key set, and
// the kids in force.
func parsePublishedKeys(b []byte) (*authz.KeySet, []string, error) {
	var p publishedKeys
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, nil, fmt.Errorf("not published keys: %w", err)
	}
	set, skipped, err := authz.ParseKeySet(p.Keys)
	if err != nil {
		return nil, nil, err
	}
	if len(skipped) > 0 {
		return nil, nil, errors.Join(skipped...)
	}
	kids, err := jwkIDs(p.Keys)
	if err != nil {
		return nil, nil, err
	}
	return set, kids, nil
}

// jwkIDs are the kids of a JWK Set's keys, in order.
func jwkIDs(set json.RawMessage) ([]string, error) {
	var doc struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(set, &doc); err != nil {
		return nil, err
	}
	kids := make([]string, 0, len(doc.Keys))
	for _, k := range doc.Keys {
		kids = append(kids, k.Kid)
	}
	return kids, nil
}

// clientEnv is the Secret's variables but the key, for client id: vakt's
// issuer, its key set, its token endpoint and its RFC 8414 metadata.
func clientEnv(issuer, clientID string) map[string]string {
	wellKnown := issuer
	if u, err := url.Parse(issuer); err == nil {
		wellKnown = u.Scheme + "://" + u.Host + "/.well-known/oauth-authorization-server" + issuerPath(issuer)
	}
	base := strings.TrimRight(issuer, "/")
	return map[string]string{
		envClientID:      clientID,
		envIssuer:        issuer,
		envJWKSURI:       base + "/jwks",
		envTokenEndpoint: base + "/token",
		envWellKnownURL:  wellKnown,
	}
}

// errSecretNotVakts is a secretName naming a Secret vakt did not make: it
// is never overwritten.
type errSecretNotVakts struct{ name string }

func (e errSecretNotVakts) Error() string {
	return fmt.Sprintf("Secret %s exists and was not made by vakt (no label %s=%s): vakt does not overwrite it; name another in spec.secretName, or delete it", e.name, labelManagedBy, managedByVakt)
}

// keyProvisioner makes, rotates and publishes the client keys of the
// resources with a secretName. Only the elected replica runs one.
type keyProvisioner struct {
	client dynamic.Interface
	src    *KubeSource
	log    *slog.Logger
	now    func() time.Time
	// done remembers, per resource, the inputs of its last reconciliation
	// and when it is due again (a retired key's expiry, or keyResync).
	done    map[string]provisioned
	failing map[string]*failure
	// problems says, per resource, why its key could not be made: the
	// status writer reports it.
	problems map[string]string
}

type provisioned struct {
	fingerprint string
	due         time.Time
}

func newKeyProvisioner(client dynamic.Interface, src *KubeSource, log *slog.Logger) *keyProvisioner {
	return &keyProvisioner{client: client, src: src, log: log, now: time.Now,
		done: map[string]provisioned{}, failing: map[string]*failure{}, problems: map[string]string{}}
}

// keyTarget is what a resource asks of its key.
type keyTarget struct {
	r          Resource // the object as the informer has it now
	secretName string
	env        map[string]string
	overlap    time.Duration
}

// provision reconciles the key of every resource with a secretName served
// in rt; it reports whether a problem appeared or cleared.
func (p *keyProvisioner) provision(ctx context.Context, rt *Runtime) (changed bool) {
	if rt.Config == nil {
		return false
	}
	now := p.now()
	present := map[string]bool{}
	for _, st := range rt.Resources {
		if ctx.Err() != nil {
			return changed
		}
		if st.SecretName == "" || st.Served == 0 {
			continue
		}
		key := st.Resource.key()
		present[key] = true
		r, ok := p.src.lookup(st.Resource.Kind, st.Resource.Namespace, st.Resource.Name)
		if !ok || r.UID != st.Resource.UID {
			continue // deleted, or recreated: the next runtime says
		}
		cfg := rt.Config
		t := keyTarget{r: r, secretName: st.SecretName, overlap: cfg.Kubernetes.KeyOverlap.Std(),
			env: clientEnv(cfg.Issuer, authz.AppID{Cluster: cfg.Cluster, Namespace: r.Namespace, Name: r.Name}.String())}
		fp := t.fingerprint()
		if d, ok := p.done[key]; ok && d.fingerprint == fp && now.Before(d.due) {
			continue
		}
		if f := p.failing[key]; f != nil && now.Before(f.next) {
			continue
		}
		due, err := p.reconcile(ctx, t)
		switch {
		case err == nil:
			delete(p.failing, key)
			if _, had := p.problems[key]; had {
				delete(p.problems, key)
				changed = true
			}
			p.done[key] = provisioned{fingerprint: fp, due: due}
		case ctx.Err() != nil:
			return changed
		default:
			f := p.failing[key]
			if f == nil {
				f = &failure{}
				p.failing[key] = f
			}
			f.wait = min(max(2*f.wait, time.Second), 5*time.Minute)
			f.next = now.Add(f.wait)
			msg := truncate(err.Error(), 1024)
			if msg != f.err {
				f.err = msg
				p.log.Warn("kubernetes: a client key could not be made or published; trying again, less and less often", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "secret", t.secretName, "error", msg)
			}
			if p.problems[key] != msg {
				p.problems[key] = msg
				changed = true
			}
		}
	}
	for key := range p.done {
		if !present[key] {
			delete(p.done, key)
			delete(p.failing, key)
		}
	}
	for key := range p.problems {
		if !present[key] {
			delete(p.problems, key)
			changed = true
		}
	}
	return changed
}

// fingerprint names a target's inputs: a change reconciles it at once.
func (t keyTarget) fingerprint() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%s\n", t.r.UID, t.secretName, t.r.RotateKey, t.overlap, t.r.Published)
	for _, k := range slices.Sorted(maps.Keys(t.env)) {
		fmt.Fprintf(h, "%s=%s\n", k, t.env[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// reconcile makes the target's Secret hold its current key and the
// variables, and publishes the public keys: the current one, and the
// replaced ones until their overlap ends. A key is replaced when the
// rotation asked for has not been honoured, and made when the Secret has
// none (new, a Jwker's new secretName, or deleted by hand). It returns
// when the target is due again.
func (p *keyProvisioner) reconcile(ctx context.Context, t keyTarget) (time.Time, error) {
	r := t.r
	now := p.now()
	secrets := p.client.Resource(secretsGVR).Namespace(r.Namespace)
	sec, err := secrets.Get(ctx, t.secretName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		sec = nil
	case err != nil:
		return time.Time{}, fmt.Errorf("reading Secret %s: %w", t.secretName, err)
	case sec.GetLabels()[labelManagedBy] != managedByVakt:
		return time.Time{}, errSecretNotVakts{t.secretName}
	}
	var cur *exchange.SigningKey
	if sec != nil {
		if v, ok, _ := unstructured.NestedString(sec.Object, "data", envPrivateJWK); ok {
			if b, err := base64.StdEncoding.DecodeString(v); err == nil {
				cur, _ = exchange.ParsePrivateJWK(b) // vakt's own Secret: a key it cannot read is made again
			}
		}
	}
	var pub publishedKeys
	if len(r.Published) > 0 {
		_ = json.Unmarshal(r.Published, &pub) // what does not parse is published anew
	}
	var published []json.RawMessage
	if len(pub.Keys) > 0 {
		var doc struct {
			Keys []json.RawMessage `json:"keys"`
		}
		if json.Unmarshal(pub.Keys, &doc) == nil {
			published = doc.Keys
		}
	}
	rotation := pub.Rotation
	if cur == nil || (r.RotateKey != "" && r.RotateKey != pub.Rotation) {
		if cur, err = exchange.GenerateSigningKey(clientKeyAlgorithm); err != nil {
			return time.Time{}, err
		}
		if r.RotateKey != "" {
			rotation = r.RotateKey
		}
		p.log.Info("kubernetes: made a client key", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "secret", t.secretName, "kid", cur.ID)
	}
	if err := p.writeSecret(ctx, t, sec, cur); err != nil {
		return time.Time{}, err
	}

	// Every published key but the current one is retired: valid for the
	// overlap from the moment it was replaced, then dropped (with its
	// Secret, when that was another).
	retired := map[string]retiredKey{}
	for _, rk := range pub.RetiredKeys {
		retired[rk.Kid] = rk
	}
	curPub, err := exchange.PublicJWK(cur)
	if err != nil {
		return time.Time{}, err
	}
	keys := []json.RawMessage{curPub}
	var keep []retiredKey
	for _, raw := range published {
		var k struct {
			Kid string `json:"kid"`
		}
		if json.Unmarshal(raw, &k) != nil || k.Kid == "" || k.Kid == cur.ID {
			continue
		}
		rk, ok := retired[k.Kid]
		if !ok {
			rk = retiredKey{Kid: k.Kid, Until: now.Add(t.overlap).UTC().Truncate(time.Second)}
			if pub.SecretName != "" && pub.SecretName != t.secretName {
				rk.SecretName = pub.SecretName
			}
		}
		if !now.Before(rk.Until) {
			p.dropSecret(ctx, t, rk.SecretName)
			continue
		}
		keys = append(keys, raw)
		keep = append(keep, rk)
	}
	// The newest retired keys are kept, at most maxRetiredKeys.
	slices.SortStableFunc(keep, func(a, b retiredKey) int { return b.Until.Compare(a.Until) })
	if len(keep) > maxRetiredKeys {
		for _, rk := range keep[maxRetiredKeys:] {
			p.dropSecret(ctx, t, rk.SecretName)
			keys = slices.DeleteFunc(keys, func(raw json.RawMessage) bool {
				ids, _ := jwkIDs(json.RawMessage(`{"keys":[` + string(raw) + `]}`))
				return len(ids) == 1 && ids[0] == rk.Kid
			})
		}
		keep = keep[:maxRetiredKeys]
	}
	set, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		return time.Time{}, err
	}
	want := publishedKeys{Keys: set, RetiredKeys: keep, Rotation: rotation, SecretName: t.secretName}
	if !samePublished(pub, want) {
		if err := p.publish(ctx, r, want); err != nil {
			return time.Time{}, err
		}
		p.log.Info("kubernetes: published a client's keys", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "kids", len(keys))
	}
	due := now.Add(keyResync)
	for _, rk := range keep {
		if rk.Until.Before(due) {
			due = rk.Until
		}
	}
	return due, nil
}

// samePublished compares two publications as JSON: what was read from
// the API server against what would be written.
func samePublished(a, b publishedKeys) bool {
	norm := func(p publishedKeys) string {
		var keys any
		_ = json.Unmarshal(p.Keys, &keys)
		for i := range p.RetiredKeys {
			p.RetiredKeys[i].Until = p.RetiredKeys[i].Until.UTC()
		}
		b, _ := json.Marshal(map[string]any{"keys": keys, "retired": p.RetiredKeys, "rotation": p.Rotation, "secret": p.SecretName})
		return string(b)
	}
	return norm(a) == norm(b)
}

// writeSecret makes the Secret hold key and the variables, owned by the
// resource (garbage-collected with it), labelled as NAIS labels it.
func (p *keyProvisioner) writeSecret(ctx context.Context, t keyTarget, sec *unstructured.Unstructured, key *exchange.SigningKey) error {
	r := t.r
	private, err := exchange.MarshalPrivateJWK(key)
	if err != nil {
		return err
	}
	data := map[string]any{envPrivateJWK: base64.StdEncoding.EncodeToString(private)}
	for k, v := range t.env {
		data[k] = base64.StdEncoding.EncodeToString([]byte(v))
	}
	apiVersion := config.ResourceGroup + "/" + config.ResourceVersion
	if r.Kind == config.KindJwker {
		apiVersion = config.JwkerGroup + "/" + config.JwkerVersion
	}
	owner := map[string]any{"apiVersion": apiVersion, "kind": r.Kind, "name": r.Name, "uid": r.UID, "controller": true}
	labels := map[string]any{"app": r.Name, "type": "jwker.nais.io", labelManagedBy: managedByVakt}
	if sec != nil && sameSecret(sec, data, r.UID, labels) {
		return nil
	}
	meta := map[string]any{"name": t.secretName, "namespace": r.Namespace, "labels": labels, "ownerReferences": []any{owner}}
	obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta, "data": data}}
	secrets := p.client.Resource(secretsGVR).Namespace(r.Namespace)
	if sec == nil {
		_, err = secrets.Create(ctx, obj, metav1.CreateOptions{FieldManager: "vakt"})
	} else {
		// The uid and resourceVersion make the write conditional: never a
		// Secret someone put in its place since it was read.
		meta["uid"] = string(sec.GetUID())
		meta["resourceVersion"] = sec.GetResourceVersion()
		_, err = secrets.Update(ctx, obj, metav1.UpdateOptions{FieldManager: "vakt"})
	}
	if err != nil {
		return fmt.Errorf("writing Secret %s: %w", t.secretName, err)
	}
	return nil
}

// sameSecret reports whether sec holds data, is owned by uid and labelled.
func sameSecret(sec *unstructured.Unstructured, data map[string]any, uid string, labels map[string]any) bool {
	have, _, _ := unstructured.NestedMap(sec.Object, "data")
	if len(have) != len(data) {
		return false
	}
	for k, v := range data {
		if have[k] != v {
			return false
		}
	}
	for k, v := range labels {
		if sec.GetLabels()[k] != v {
			return false
		}
	}
	owners := sec.GetOwnerReferences()
	return len(owners) == 1 && string(owners[0].UID) == uid
}

// dropSecret deletes a Secret that held a key no longer valid, when vakt
// made it for this object and it is not the current one.
func (p *keyProvisioner) dropSecret(ctx context.Context, t keyTarget, name string) {
	if name == "" || name == t.secretName {
		return
	}
	secrets := p.client.Resource(secretsGVR).Namespace(t.r.Namespace)
	sec, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return
	}
	owners := sec.GetOwnerReferences()
	if sec.GetLabels()[labelManagedBy] != managedByVakt || len(owners) != 1 || string(owners[0].UID) != t.r.UID {
		return
	}
	uid := sec.GetUID()
	if err := secrets.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
		p.log.Warn("kubernetes: a Secret whose key expired could not be deleted", "namespace", t.r.Namespace, "secret", name, "error", err)
	}
}

// publish writes the keys where every replica reads them: an
// Application's status (field manager vakt-keys, beside the conditions
// the status writer owns), a Jwker's annotation.
func (p *keyProvisioner) publish(ctx context.Context, r Resource, want publishedKeys) error {
	if r.Kind == config.KindJwker {
		b, err := json.Marshal(want)
		if err != nil {
			return err
		}
		patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"uid": r.UID, "annotations": map[string]string{annotationKeys: string(b)}}})
		if err != nil {
			return err
		}
		_, err = p.client.Resource(jwkersGVR).Namespace(r.Namespace).Patch(ctx, r.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "vakt-keys"})
		if err != nil {
			return fmt.Errorf("publishing the keys: %w", err)
		}
		return nil
	}
	var keys map[string]any
	if err := json.Unmarshal(want.Keys, &keys); err != nil {
		return err
	}
	retired := make([]any, 0, len(want.RetiredKeys))
	for _, rk := range want.RetiredKeys {
		m := map[string]any{"kid": rk.Kid, "until": rk.Until.UTC().Format(time.RFC3339)}
		if rk.SecretName != "" {
			m["secretName"] = rk.SecretName
		}
		retired = append(retired, m)
	}
	status := map[string]any{"keys": keys, "secretName": want.SecretName, "retiredKeys": retired}
	if want.Rotation != "" {
		status["rotation"] = want.Rotation
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": config.ResourceGroup + "/" + config.ResourceVersion,
		"kind":       config.KindApplication,
		"metadata":   map[string]any{"name": r.Name, "namespace": r.Namespace, "uid": r.UID},
		"status":     status,
	}}
	_, err := p.client.Resource(applicationsGVR).Namespace(r.Namespace).ApplyStatus(ctx, r.Name, obj, metav1.ApplyOptions{FieldManager: "vakt-keys", Force: true})
	if err != nil {
		return fmt.Errorf("publishing the keys: %w", err)
	}
	return nil
}
