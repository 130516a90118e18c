package kube

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
)

// Annotations and labels of the client keys vakt makes.
const (
	// AnnotationRotateKey on an Application or Jwker asks for a new client
	// key whenever its value changes (vakt keys rotate sets it to the time).
	AnnotationRotateKey = "vakt.dev/rotate-key"
	// annotationRotation on a Secret vakt made is the rotation request
	// whose key it holds: a rotation interrupted after the Secret was
	// written is not made again.
	annotationRotation = "vakt.dev/rotation"
	// A Jwker's published keys are a ConfigMap of vakt's namespace
	// (recordName), labelled labelRecord=recordKeys, the JSON in data
	// recordKey; annotationOwner names the Jwker (namespace/name). The
	// version of a Jwker that serves is another (servedRecordName),
	// labelled labelRecord=recordServed, its generation and spec in data
	// servedGeneration and servedSpec: what an Application's status.served
	// says, where NAIS's Jwker has no field for it.
	labelRecord      = "vakt.dev/record"
	recordKeys       = "keys"
	recordKey        = "keys.json"
	recordServed     = "served"
	servedGeneration = "generation"
	servedSpec       = "spec.json"
	annotationOwner  = "vakt.dev/owner"
	labelManagedBy   = "app.kubernetes.io/managed-by"
	managedByVakt    = "vakt"
	// clientKeyAlgorithm is NAIS's: jwker makes 2048-bit RSA keys, and
	// applications' token libraries expect them.
	clientKeyAlgorithm = "RS256"
	// maxRetiredKeys bounds the replaced keys kept valid: rotations asked
	// for in a burst do not grow the key set without end.
	maxRetiredKeys = 4
	// keyResync is how often, about, the elected replica checks a key
	// whose inputs did not change: a Secret deleted by hand is made again.
	keyResync = 10 * time.Minute
	// keyEvery is the least time between two rotations of one resource's
	// key: rotations asked in a burst cost one key a minute.
	keyEvery = time.Minute
	// maxPublished bounds a published record vakt reads.
	maxPublished = 64 << 10
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

var (
	secretsGVR    = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
	configMapsGVR = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
)

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

// parsePublishedKeys reads published keys for the merge: the key set, the
// kids in force, and when each replaced key stops being accepted (every
// replica refuses it from then on by its own clock: authz.ExpiringKeys).
func parsePublishedKeys(b []byte) (*authz.KeySet, []string, map[string]time.Time, error) {
	if len(b) > maxPublished {
		return nil, nil, nil, fmt.Errorf("%d bytes, more than the %d published keys may have", len(b), maxPublished)
	}
	var p publishedKeys
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, nil, nil, fmt.Errorf("not published keys: %w", err)
	}
	set, skipped, err := authz.ParseKeySet(p.Keys)
	if err != nil {
		return nil, nil, nil, err
	}
	if len(skipped) > 0 {
		return nil, nil, nil, errors.Join(skipped...)
	}
	kids := kidsOf(jwks(p.Keys))
	// The current key, the retired ones, and one on its way to the Secret.
	if len(kids) > 2+maxRetiredKeys {
		return nil, nil, nil, fmt.Errorf("%d keys, more than the %d vakt publishes", len(kids), 2+maxRetiredKeys)
	}
	var until map[string]time.Time
	for _, rk := range p.RetiredKeys {
		if until == nil {
			until = make(map[string]time.Time, len(p.RetiredKeys))
		}
		if t, ok := until[rk.Kid]; !ok || rk.Until.Before(t) {
			until[rk.Kid] = rk.Until
		}
	}
	return set, kids, until, nil
}

// ClientEnv is what vakt writes into the Secret of an application's
// client key but the key itself, for client id: vakt's issuer, and its key
// set, token endpoint and RFC 8414 metadata where the application's pods
// reach them (config.Config.ClientEndpoints).
func ClientEnv(cfg *config.Config, clientID string) map[string]string {
	ep := cfg.ClientEndpoints()
	return map[string]string{
		envClientID:      clientID,
		envIssuer:        cfg.Issuer,
		envJWKSURI:       ep.JWKS,
		envTokenEndpoint: ep.Token,
		envWellKnownURL:  ep.Metadata,
	}
}

// errSecretNotVakts is a secretName naming a Secret vakt did not make for
// this resource: it is never read or overwritten.
type errSecretNotVakts struct{ name, why string }

func (e errSecretNotVakts) Error() string {
	return fmt.Sprintf("Secret %s %s: vakt does not touch it; name another in spec.secretName, or delete it", e.name, e.why)
}

// stepError is a failed request to the API server: its step, and the
// error. A problem reported in status names the step and the API server's
// reason only: an error's text may echo the object (a webhook's), and a
// Secret's object is a private key.
type stepError struct {
	step string
	err  error
}

func (e stepError) Error() string { return e.step + ": " + apiReason(e.err) }
func (e stepError) Unwrap() error { return e.err }

// apiReason is what may be said of an API server's error: its reason and
// code, or a transport error's text.
func apiReason(err error) string {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		s := st.Status()
		return fmt.Sprintf("%s (HTTP %d)", cmp.Or(string(s.Reason), "Failure"), s.Code)
	}
	return truncate(err.Error(), 256)
}

// describe is what a problem says, in the log and in status.
func describe(err error) string {
	var nv errSecretNotVakts
	var se stepError
	switch {
	case errors.As(err, &nv):
		return nv.Error()
	case errors.As(err, &se):
		return se.Error()
	default:
		return "vakt could not make the key: " + truncate(err.Error(), 256)
	}
}

// keyProvisioner makes, rotates and publishes the client keys of the
// resources with a secretName. Only the elected replica runs one (run):
// a queue of resource keys and one worker, whose bookkeeping (done,
// pending, made) is that goroutine's alone; the status writer reads its
// problems.
type keyProvisioner struct {
	client    dynamic.Interface
	src       *Source
	log       *slog.Logger
	now       func() time.Time
	recordsNS string // vakt's namespace, where Jwkers' keys are published
	// onProblem, when set, is told of the resource whose problem changed
	// (the status writer enqueues it).
	onProblem func(key string)
	// enqueue adds to run's queue: servedChanged's.
	enqueue func(key string)
	// done remembers, per resource, the inputs of its last reconciliation
	// and when it is due again (a retired key's expiry, or keyResync).
	done map[string]provisioned
	// logged is the problem last logged per resource: logged when it
	// changes, not on every try.
	logged map[string]string
	// pending is a key made and published but not yet in its Secret, kept
	// across retries of the same request; made is when the last key that
	// replaced another was made, per object.
	pending map[string]*pendingKey
	made    map[string]time.Time
	// last is the Served whose changes were enqueued last (servedKey's).
	last  *Served
	index servedIndex

	mu sync.Mutex
	// problems says, per resource, why its key could not be made. The
	// status writer reads it.
	problems map[string]string
}

type provisioned struct {
	fingerprint string
	due         time.Time
}

// pendingKey is a key made for a Secret and a rotation request.
type pendingKey struct {
	key                  *exchange.SigningKey
	secretName, rotation string
}

// keyBackoff is a failed key's first wait (a conflict's, most often: read
// again soon), doubling to maxBackoff.
const keyBackoff = 200 * time.Millisecond

func newKeyProvisioner(client dynamic.Interface, src *Source, recordsNS string, log *slog.Logger) *keyProvisioner {
	return &keyProvisioner{client: client, src: src, log: log, now: time.Now, recordsNS: recordsNS,
		done: map[string]provisioned{}, logged: map[string]string{}, pending: map[string]*pendingKey{},
		made: map[string]time.Time{}, problems: map[string]string{}}
}

// run reconciles, until ctx ends (leadership lost, or stopping), the keys
// of the resources that may need work: those with a secretName (or keys
// published) in each Served committed whose inputs changed, and every one
// on a newly elected replica; those whose rotation annotation or published
// keys changed (informer events); each again when it is due (syncKey); and
// collectKey every collectEvery.
func (p *keyProvisioner) run(ctx context.Context, observe observer) {
	q := newQueue("vakt-keys", keyBackoff)
	stopServed := p.src.onServed.add(func() { q.Add(servedKey) })
	defer stopServed()
	removeHandlers := p.src.addHandlers(cache.ResourceEventHandlerFuncs{
		// An addition or a deletion is a reload, and a new Served, away.
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*unstructured.Unstructured)
			n, ok2 := cur.(*unstructured.Unstructured)
			if ok1 && ok2 && (o.GetUID() != n.GetUID() || o.GetAnnotations()[AnnotationRotateKey] != n.GetAnnotations()[AnnotationRotateKey] ||
				string(applicationPublished(o)) != string(applicationPublished(n))) {
				q.Add(resourceKey(n))
			}
		},
	}, cache.ResourceEventHandlerFuncs{
		// A Jwker's record: its owner's key.
		AddFunc:    func(obj any) { p.enqueueOwner(q, obj) },
		UpdateFunc: func(_, cur any) { p.enqueueOwner(q, cur) },
		DeleteFunc: func(obj any) { p.enqueueOwner(q, obj) },
	})
	defer removeHandlers()
	p.enqueue = q.Add
	q.Add(servedKey)
	q.Add(collectKey)
	runWorkers(ctx, q, 1, p.syncKey, observe)
}

// enqueueOwner enqueues the Jwker a record of published keys is for.
func (p *keyProvisioner) enqueueOwner(q controllerQueue, obj any) {
	u, ok := objectOf(obj)
	if !ok {
		return
	}
	if ns, name, ok := strings.Cut(u.GetAnnotations()[annotationOwner], "/"); ok && ns != "" && name != "" {
		q.Add(config.KindJwker + "/" + ns + "/" + name)
	}
}

// problem is why a resource's key could not be made, "" when it was.
func (p *keyProvisioner) problem(key string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.problems[key]
}

func (p *keyProvisioner) setProblem(key, msg string) {
	p.mu.Lock()
	if p.problems[key] == msg {
		p.mu.Unlock()
		return
	}
	if msg == "" {
		delete(p.problems, key)
	} else {
		p.problems[key] = msg
	}
	p.mu.Unlock()
	if p.onProblem != nil {
		p.onProblem(key)
	}
}

// keyTarget is what a resource asks of its key.
type keyTarget struct {
	r          Resource // the object as the informer has it now
	secretName string
	env        map[string]string
	overlap    time.Duration
}

// wantsKey reports whether the provisioner has work for a state: a served
// resource with a secretName, or with keys published to clear.
func wantsKey(st State) bool {
	return st.Served != 0 && (st.SecretName != "" || len(st.Resource.Published) > 0)
}

// syncKey reconciles one resource's key (reconcile, or unpublish when its
// secretName is gone) when its inputs changed or it is due, and returns
// how long until it is due again; an error is retried after the queue's
// backoff (a conflict, read again soon, without a word; another is logged
// when it changes, and is the resource's problem until it is made).
// servedKey and collectKey are the queue's own items.
func (p *keyProvisioner) syncKey(ctx context.Context, key string) (time.Duration, error) {
	switch key {
	case servedKey:
		p.servedChanged()
		return 0, nil
	case collectKey:
		p.collectRecords(ctx)
		p.prune()
		return collectEvery, nil
	}
	now := p.now()
	rt := p.src.Served()
	st, ok := p.index.state(rt, key)
	if !ok || rt.Config == nil || !wantsKey(st) {
		p.forget(key)
		return 0, nil
	}
	r, ok := p.src.lookup(st.Resource.Kind, st.Resource.Namespace, st.Resource.Name)
	if !ok || r.UID != st.Resource.UID {
		return 0, nil // deleted, or recreated: the next Served says
	}
	cfg := rt.Config
	t := keyTarget{r: r, secretName: st.SecretName, overlap: cfg.Kubernetes.KeyOverlap.Std(),
		env: ClientEnv(cfg, authz.AppID{Cluster: cfg.Cluster, Namespace: r.Namespace, Name: r.Name}.String())}
	fp := t.fingerprint()
	if _, seen := p.done[key]; !seen {
		if due, ok := t.settled(now); ok {
			// A replica newly elected takes what it finds published as
			// done, to be checked within keyResync: its first pass is
			// for what needs work, not thousands of reads at once.
			p.done[key] = provisioned{fingerprint: fp, due: due}
		}
	}
	if d, ok := p.done[key]; ok && d.fingerprint == fp && now.Before(d.due) {
		return d.due.Sub(now), nil
	}
	var due time.Time
	var err error
	if t.secretName == "" {
		due, err = p.unpublish(ctx, t)
	} else {
		due, err = p.reconcile(ctx, t)
	}
	switch {
	case err == nil:
		delete(p.logged, key)
		p.setProblem(key, "")
		// The next check comes a little early or late, so that
		// resources checked together do not stay together.
		if d := due.Sub(now); d > time.Minute {
			due = now.Add(d - time.Duration(rand.Int64N(int64(d/10))))
		}
		p.done[key] = provisioned{fingerprint: fp, due: due}
		return max(due.Sub(now), time.Second), nil
	case ctx.Err() != nil, apierrors.IsConflict(err):
		// Stopping; or written by another since read (the status writer,
		// or a team): read again, soon, without a word.
		return 0, err
	default:
		msg := describe(err)
		if msg != p.logged[key] {
			p.logged[key] = msg
			p.log.Warn("kubernetes: a client key could not be made or published; trying again, less and less often", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "secret", t.secretName, "error", msg)
		}
		p.setProblem(key, msg)
		return 0, err
	}
}

// forget drops what the provisioner remembers of a resource it has no
// work for (gone, not served, no secretName and nothing published).
func (p *keyProvisioner) forget(key string) {
	delete(p.done, key)
	delete(p.logged, key)
	for k := range p.pending {
		if strings.HasPrefix(k, key+"#") {
			delete(p.pending, k)
		}
	}
	for k := range p.made {
		if strings.HasPrefix(k, key+"#") {
			delete(p.made, k)
		}
	}
	p.setProblem(key, "")
}

// prune drops the keys pending for an object no longer served (its
// resource recreated) and the times of rotations older than keyEvery.
func (p *keyProvisioner) prune() {
	now := p.now()
	rt := p.src.Served()
	current := func(objKey string) bool {
		key, uid, _ := strings.Cut(objKey, "#")
		st, ok := p.index.state(rt, key)
		return ok && st.Resource.UID == uid && wantsKey(st)
	}
	for k := range p.pending {
		if !current(k) {
			delete(p.pending, k)
		}
	}
	for k, at := range p.made {
		if !current(k) || now.Sub(at) > keyEvery {
			delete(p.made, k)
		}
	}
}

// servedChanged enqueues the resources whose key a new Served may change:
// those the provisioner has work for whose inputs in it are new or
// changed (all of them when the configuration's inputs to the Secret
// changed), and those it had work for that are gone.
func (p *keyProvisioner) servedChanged() {
	cur := p.src.Served()
	prev := p.last
	p.last = cur
	if cur == prev || cur == nil {
		return
	}
	before := map[string]State{}
	all := prev == nil || keyConfig(prev.Config) != keyConfig(cur.Config)
	if prev != nil {
		for _, st := range prev.States {
			if wantsKey(st) {
				before[st.Resource.key()] = st
			}
		}
	}
	for _, st := range cur.States {
		if !wantsKey(st) {
			continue
		}
		key := st.Resource.key()
		old, ok := before[key]
		delete(before, key)
		if all || !ok || keyState(old) != keyState(st) {
			p.enqueue(key)
		}
	}
	for key := range before {
		p.enqueue(key) // forgotten
	}
}

// keyConfig is what of a configuration goes into its keys' Secrets and
// records.
func keyConfig(cfg *config.Config) string {
	if cfg == nil {
		return ""
	}
	return fmt.Sprint(ClientEnv(cfg, ""), "\n", cfg.Cluster, "\n", cfg.Kubernetes.KeyOverlap.Std())
}

// keyState is what of a state goes into its key.
func keyState(st State) string {
	r := st.Resource
	return fmt.Sprintf("%s\n%s\n%s\n%s", r.UID, st.SecretName, r.RotateKey, r.Published)
}

// fingerprint names a target's inputs: a change reconciles it at once.
// What vakt published is not one: its own writes would reconcile again, and
// a Secret deleted in a loop would make keys in a loop (the next check, at
// the latest keyResync later, repairs a record someone else changed).
func (t keyTarget) fingerprint() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n", t.r.UID, t.secretName, t.r.RotateKey, t.overlap)
	for _, k := range slices.Sorted(maps.Keys(t.env)) {
		fmt.Fprintf(h, "%s=%s\n", k, t.env[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// settled reports whether what the informer holds as published for the
// target is complete (its Secret, the rotation asked for, a key), and when
// to check it: at a random moment within keyResync, or when a retired key
// expires.
func (t keyTarget) settled(now time.Time) (time.Time, bool) {
	if t.secretName == "" || len(t.r.Published) == 0 {
		return time.Time{}, false
	}
	var pub publishedKeys
	if json.Unmarshal(t.r.Published, &pub) != nil || pub.SecretName != t.secretName ||
		(t.r.RotateKey != "" && t.r.RotateKey != pub.Rotation) || len(jwks(pub.Keys)) == 0 {
		return time.Time{}, false
	}
	due := now.Add(time.Duration(rand.Int64N(int64(keyResync))))
	for _, rk := range pub.RetiredKeys {
		if rk.Until.Before(due) {
			due = rk.Until
		}
	}
	return due, true
}

// live is a resource as the API server has it now, not as a cache does:
// nil when it is gone (or another object has its name).
func (p *keyProvisioner) live(ctx context.Context, r Resource) (*unstructured.Unstructured, error) {
	gvr := applicationsGVR
	if r.Kind == config.KindJwker {
		gvr = jwkersGVR
	}
	u, err := p.client.Resource(gvr).Namespace(r.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, stepError{"reading the " + r.Kind, err}
	case string(u.GetUID()) != r.UID:
		return nil, nil
	}
	return u, nil
}

// record is what vakt published for a live resource, and the
// resourceVersion a write of it is conditional on.
func (p *keyProvisioner) record(ctx context.Context, live *unstructured.Unstructured) (publishedKeys, string, error) {
	var pub publishedKeys
	if live.GetKind() != config.KindJwker {
		if b := applicationPublished(live); b != nil {
			_ = json.Unmarshal(b, &pub) // what does not parse is published anew
		}
		return pub, live.GetResourceVersion(), nil
	}
	cm, err := p.client.Resource(configMapsGVR).Namespace(p.recordsNS).Get(ctx, recordName(string(live.GetUID())), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return pub, "", nil
	case err != nil:
		return pub, "", stepError{"reading the published keys", err}
	}
	if v, _, _ := unstructured.NestedString(cm.Object, "data", recordKey); v != "" {
		_ = json.Unmarshal([]byte(v), &pub)
	}
	return pub, cm.GetResourceVersion(), nil
}

// ownSecret reads the Secret a target names: nil when there is none; an
// errSecretNotVakts when it is not one vakt made for this object (its
// label and its controller, this object's uid).
func (p *keyProvisioner) ownSecret(ctx context.Context, t keyTarget, name string) (*unstructured.Unstructured, error) {
	sec, err := p.client.Resource(secretsGVR).Namespace(t.r.Namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, stepError{"reading Secret " + name, err}
	case sec.GetLabels()[labelManagedBy] != managedByVakt:
		return nil, errSecretNotVakts{name, fmt.Sprintf("exists and was not made by vakt (no label %s=%s)", labelManagedBy, managedByVakt)}
	}
	if c := metav1.GetControllerOf(sec); c == nil || string(c.UID) != t.r.UID {
		return nil, errSecretNotVakts{name, "was made by vakt for another resource (its controller is not this one)"}
	}
	return sec, nil
}

// reconcile makes the target's Secret hold its current key and the
// variables, and publishes the public keys: the current one, and the
// replaced ones until their overlap ends. A key is made when the Secret
// has none (new, a Jwker's new secretName, deleted by hand) or a rotation
// asked for is not yet honoured; it is published before it is written to
// the Secret, so that no pod can hold a key a replica refuses. It returns
// when the target is due again.
func (p *keyProvisioner) reconcile(ctx context.Context, t keyTarget) (time.Time, error) {
	r := t.r
	now := p.now()
	live, err := p.live(ctx, r)
	if err != nil || live == nil {
		return now.Add(keyResync), err
	}
	rotateReq := live.GetAnnotations()[AnnotationRotateKey]
	pub, rv, err := p.record(ctx, live)
	if err != nil {
		return time.Time{}, err
	}
	sec, err := p.ownSecret(ctx, t, t.secretName)
	if err != nil {
		return time.Time{}, err
	}
	var cur *exchange.SigningKey
	secRotation := ""
	if sec != nil {
		if v, ok, _ := unstructured.NestedString(sec.Object, "data", envPrivateJWK); ok {
			if b, err := base64.StdEncoding.DecodeString(v); err == nil {
				cur, _ = exchange.ParsePrivateJWK(b) // vakt's own Secret: a key it cannot read is made again
			}
		}
		secRotation = sec.GetAnnotations()[annotationRotation]
	}
	published := jwks(pub.Keys)
	if cur != nil && !inForce(cur, published, pub.RetiredKeys) {
		// The Secret's key is not one vakt published and has not replaced:
		// a key written back after a rotation (one leaked, perhaps), or a
		// secretName pointed back at a Secret whose key was replaced, or a
		// key vakt never made. It is never published as current: the
		// Secret gets a new key, and a replaced one keeps its until.
		p.log.Warn("kubernetes: a client key's Secret holds a key vakt did not publish as current; a new key replaces it", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "secret", t.secretName, "kid", cur.ID)
		cur, secRotation = nil, ""
	}
	rotation := pub.Rotation
	if rotateReq != "" && secRotation == rotateReq {
		rotation = rotateReq // the Secret holds its key: only the publishing was left
	}
	objKey := r.key() + "#" + r.UID
	if cur == nil || (rotateReq != "" && rotateReq != rotation) {
		// A key replacing one (a rotation, a Secret deleted or renamed) is
		// made at most once a minute, whatever a team asks or deletes.
		replacing := cur != nil || len(published) > 0
		if last, ok := p.made[objKey]; ok && replacing && now.Sub(last) < keyEvery {
			return last.Add(keyEvery), nil
		}
		pk := p.pending[objKey]
		if pk == nil || pk.secretName != t.secretName || pk.rotation != rotateReq || (cur != nil && pk.key.ID == cur.ID) {
			k, err := exchange.GenerateSigningKey(clientKeyAlgorithm)
			if err != nil {
				return time.Time{}, err
			}
			pk = &pendingKey{key: k, secretName: t.secretName, rotation: rotateReq}
			p.pending[objKey] = pk
		}
		nk := pk.key
		nkPub, err := exchange.PublicJWK(nk)
		if err != nil {
			return time.Time{}, err
		}
		if !slices.Contains(kidsOf(published), nk.ID) {
			// Every replica takes the new key before any pod can hold it.
			// Published keys that are neither the record's current one
			// (first), nor the Secret's, nor retired were made for a try
			// that never reached a Secret: they make way for it.
			inForce := map[string]bool{}
			for _, rk := range pub.RetiredKeys {
				inForce[rk.Kid] = true
			}
			if kids := kidsOf(published); len(kids) > 0 {
				inForce[kids[0]] = true
			}
			if cur != nil {
				inForce[cur.ID] = true
			}
			kept := slices.DeleteFunc(slices.Clone(published), func(raw json.RawMessage) bool {
				return !inForce[kidsOf([]json.RawMessage{raw})[0]]
			})
			published = append(kept, nkPub)
			pre := pub
			if pre.Keys, err = json.Marshal(map[string]any{"keys": published}); err != nil {
				return time.Time{}, err
			}
			if rv, err = p.publish(ctx, live, pre, rv); err != nil {
				return time.Time{}, err
			}
		}
		if rotateReq != "" {
			rotation = rotateReq
		}
		if err := p.writeSecret(ctx, t, sec, nk, rotation); err != nil {
			return time.Time{}, err
		}
		delete(p.pending, objKey)
		if replacing {
			p.made[objKey] = now
		}
		cur = nk
		p.log.Info("kubernetes: made a client key", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "secret", t.secretName, "kid", cur.ID, "rotation", rotation)
	} else {
		// Nothing to make: a key left pending (its Secret written, the
		// answer lost) is not one to reuse.
		delete(p.pending, objKey)
		if rotateReq != "" && pub.Rotation != rotateReq {
			p.made[objKey] = now // a rotation the Secret honoured before the answer was lost
		}
		if err := p.writeSecret(ctx, t, sec, cur, secRotation); err != nil {
			return time.Time{}, err
		}
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
		kid := kidsOf([]json.RawMessage{raw})[0]
		if kid == "" || kid == cur.ID {
			continue
		}
		rk, ok := retired[kid]
		if !ok {
			rk = retiredKey{Kid: kid, Until: now.Add(t.overlap).UTC().Truncate(time.Second)}
			if pub.SecretName != "" && pub.SecretName != t.secretName {
				rk.SecretName = pub.SecretName
			}
		}
		if limit := now.Add(t.overlap).UTC(); rk.Until.After(limit) {
			rk.Until = limit.Truncate(time.Second) // a shorter keyOverlap applies to keys retired before
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
			keys = slices.DeleteFunc(keys, func(raw json.RawMessage) bool { return kidsOf([]json.RawMessage{raw})[0] == rk.Kid })
		}
		keep = keep[:maxRetiredKeys]
	}
	set, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		return time.Time{}, err
	}
	want := publishedKeys{Keys: set, RetiredKeys: keep, Rotation: rotation, SecretName: t.secretName}
	if !samePublished(pub, want) {
		if _, err := p.publish(ctx, live, want, rv); err != nil {
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

// unpublish clears what vakt published for a resource whose secretName is
// gone: its record, and the Secrets it made for it.
func (p *keyProvisioner) unpublish(ctx context.Context, t keyTarget) (time.Time, error) {
	now := p.now()
	live, err := p.live(ctx, t.r)
	if err != nil || live == nil {
		return now.Add(keyResync), err
	}
	pub, rv, err := p.record(ctx, live)
	if err != nil {
		return time.Time{}, err
	}
	p.dropSecret(ctx, t, pub.SecretName)
	for _, rk := range pub.RetiredKeys {
		p.dropSecret(ctx, t, rk.SecretName)
	}
	if live.GetKind() == config.KindJwker {
		if rv != "" {
			err = p.client.Resource(configMapsGVR).Namespace(p.recordsNS).Delete(ctx, recordName(t.r.UID), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
			if err != nil && !apierrors.IsNotFound(err) {
				return time.Time{}, stepError{"deleting the published keys", err}
			}
		}
	} else if applicationPublished(live) != nil {
		// Applied empty, vakt-keys's fields go.
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": config.ResourceGroup + "/" + config.ResourceVersion, "kind": config.KindApplication,
			"metadata": map[string]any{"name": t.r.Name, "namespace": t.r.Namespace, "uid": t.r.UID},
		}}
		if _, err := p.client.Resource(applicationsGVR).Namespace(t.r.Namespace).ApplyStatus(ctx, t.r.Name, obj, metav1.ApplyOptions{FieldManager: "vakt-keys", Force: true}); err != nil {
			return time.Time{}, stepError{"clearing the published keys", err}
		}
	}
	p.log.Info("kubernetes: no longer makes a client key for the resource (its secretName is gone)", "kind", t.r.Kind, "namespace", t.r.Namespace, "name", t.r.Name)
	return now.Add(keyResync), nil
}

// collectRecords deletes the published keys, and the records of the
// version serving, of Jwkers that are gone (collectKey's, every
// collectEvery).
func (p *keyProvisioner) collectRecords(ctx context.Context) {
	if p.src.records == nil || !p.src.Synced() {
		return
	}
	for _, obj := range p.src.records.GetStore().List() {
		rec, ok := obj.(*unstructured.Unstructured)
		if !ok || ctx.Err() != nil {
			continue
		}
		uid, ok := strings.CutPrefix(rec.GetName(), recordName(""))
		if !ok {
			uid = strings.TrimPrefix(rec.GetName(), servedRecordName(""))
		}
		ns, name, _ := strings.Cut(rec.GetAnnotations()[annotationOwner], "/")
		if j, ok := p.src.object(config.KindJwker, ns, name); ok && string(j.GetUID()) == uid {
			continue
		}
		if ns == "" || name == "" {
			continue // not as vakt writes them: left alone
		}
		// Not in this replica's view: asked of the API server, as another
		// vakt may watch other namespaces.
		j, err := p.client.Resource(jwkersGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if (err == nil && string(j.GetUID()) == uid) || (err != nil && !apierrors.IsNotFound(err)) {
			continue
		}
		rv := rec.GetResourceVersion()
		err = p.client.Resource(configMapsGVR).Namespace(p.recordsNS).Delete(ctx, rec.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			p.log.Warn("kubernetes: the published keys of a Jwker that is gone could not be deleted", "configmap", rec.GetName(), "error", apiReason(err))
		}
	}
}

// inForce reports whether key is one vakt published and has not replaced:
// its kid among the published keys with the same public key, and not
// among the retired ones.
func inForce(key *exchange.SigningKey, published []json.RawMessage, retired []retiredKey) bool {
	for _, rk := range retired {
		if rk.Kid == key.ID {
			return false
		}
	}
	mine, err := exchange.PublicJWK(key)
	if err != nil {
		return false
	}
	want := publicMaterial(mine)
	for _, raw := range published {
		if m := publicMaterial(raw); m != "" && m == want {
			return true
		}
	}
	return false
}

// publicMaterial is what identifies a public JWK: its kid, type and the
// key itself; "" when it is not one.
func publicMaterial(raw json.RawMessage) string {
	var k struct {
		Kid, Kty, N, E, Crv, X, Y string
	}
	if json.Unmarshal(raw, &k) != nil || k.Kid == "" || k.Kty == "" {
		return ""
	}
	return strings.Join([]string{k.Kid, k.Kty, k.N, k.E, k.Crv, k.X, k.Y}, "\x00")
}

// jwks is a JWK Set's keys; none when it is not one.
func jwks(set json.RawMessage) []json.RawMessage {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if len(set) == 0 || json.Unmarshal(set, &doc) != nil {
		return nil
	}
	return doc.Keys
}

// kidsOf are the kids of keys ("" for one without).
func kidsOf(keys []json.RawMessage) []string {
	out := make([]string, len(keys))
	for i, raw := range keys {
		var k struct {
			Kid string `json:"kid"`
		}
		_ = json.Unmarshal(raw, &k)
		out[i] = k.Kid
	}
	return out
}

// samePublished compares two publications as JSON: what was read from
// the API server against what would be written.
func samePublished(a, b publishedKeys) bool {
	norm := func(p publishedKeys) string {
		var keys any
		_ = json.Unmarshal(p.Keys, &keys)
		retired := make([]retiredKey, len(p.RetiredKeys))
		for i, rk := range p.RetiredKeys {
			rk.Until = rk.Until.UTC()
			retired[i] = rk
		}
		b, _ := json.Marshal(map[string]any{"keys": keys, "retired": retired, "rotation": p.Rotation, "secret": p.SecretName})
		return string(b)
	}
	return norm(a) == norm(b)
}

// writeSecret makes the Secret hold key and the variables, owned by the
// resource (garbage-collected with it), labelled as NAIS labels it, and
// marked with the rotation whose key it holds.
func (p *keyProvisioner) writeSecret(ctx context.Context, t keyTarget, sec *unstructured.Unstructured, key *exchange.SigningKey, rotation string) error {
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
	// An existing Secret is vakt's only if this object controls it
	// (ownSecret): its owners stay as they are.
	owner := map[string]any{"apiVersion": apiVersion, "kind": r.Kind, "name": r.Name, "uid": r.UID, "controller": true}
	labels := map[string]any{"app": r.Name, "type": "jwker.nais.io", labelManagedBy: managedByVakt}
	if sec != nil && sameSecret(sec, data, labels) && sec.GetAnnotations()[annotationRotation] == rotation {
		return nil
	}
	secrets := p.client.Resource(secretsGVR).Namespace(r.Namespace)
	if sec == nil {
		meta := map[string]any{"name": t.secretName, "namespace": r.Namespace, "labels": labels, "ownerReferences": []any{owner}}
		if rotation != "" {
			meta["annotations"] = map[string]any{annotationRotation: rotation}
		}
		obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta, "data": data}}
		_, err = secrets.Create(ctx, obj, metav1.CreateOptions{FieldManager: "vakt"})
	} else {
		// The Secret as read, with vakt's parts replaced: what others put
		// on it (labels, annotations, finalizers) stays. Its uid and
		// resourceVersion make the write conditional: never a Secret
		// someone put in its place since it was read.
		obj := sec.DeepCopy()
		obj.Object["data"] = data
		obj.Object["type"] = "Opaque"
		delete(obj.Object, "stringData")
		l := obj.GetLabels()
		if l == nil {
			l = map[string]string{}
		}
		for k, v := range labels {
			l[k] = v.(string)
		}
		obj.SetLabels(l)
		a := obj.GetAnnotations()
		if a == nil {
			a = map[string]string{}
		}
		if rotation != "" {
			a[annotationRotation] = rotation
		} else {
			delete(a, annotationRotation)
		}
		obj.SetAnnotations(a)
		_, err = secrets.Update(ctx, obj, metav1.UpdateOptions{FieldManager: "vakt"})
	}
	if err != nil {
		return stepError{"writing Secret " + t.secretName, err}
	}
	return nil
}

// sameSecret reports whether sec holds data and is labelled.
func sameSecret(sec *unstructured.Unstructured, data map[string]any, labels map[string]any) bool {
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
	return true
}

// dropSecret deletes a Secret that held a key no longer valid, when vakt
// made it for this object and it is not the current one.
func (p *keyProvisioner) dropSecret(ctx context.Context, t keyTarget, name string) {
	if name == "" || name == t.secretName {
		return
	}
	sec, err := p.ownSecret(ctx, t, name)
	if err != nil || sec == nil {
		return
	}
	uid := sec.GetUID()
	if err := p.client.Resource(secretsGVR).Namespace(t.r.Namespace).Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
		p.log.Warn("kubernetes: a Secret whose key expired could not be deleted", "namespace", t.r.Namespace, "secret", name, "error", apiReason(err))
	}
}

// publish writes the keys where every replica reads them, on condition
// that nothing changed since rv was read: an Application's status (field
// manager vakt-keys, beside the conditions the status writer owns), a
// Jwker's record in vakt's namespace. It returns the new resourceVersion.
func (p *keyProvisioner) publish(ctx context.Context, live *unstructured.Unstructured, want publishedKeys, rv string) (string, error) {
	if live.GetKind() == config.KindJwker {
		b, err := json.Marshal(want)
		if err != nil {
			return "", err
		}
		meta := map[string]any{
			"name": recordName(string(live.GetUID())), "namespace": p.recordsNS,
			"labels":      map[string]any{labelRecord: recordKeys, labelManagedBy: managedByVakt},
			"annotations": map[string]any{annotationOwner: live.GetNamespace() + "/" + live.GetName()},
		}
		obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": map[string]any{recordKey: string(b)}}}
		cms := p.client.Resource(configMapsGVR).Namespace(p.recordsNS)
		var out *unstructured.Unstructured
		if rv == "" {
			out, err = cms.Create(ctx, obj, metav1.CreateOptions{FieldManager: "vakt-keys"})
		} else {
			meta["resourceVersion"] = rv
			out, err = cms.Update(ctx, obj, metav1.UpdateOptions{FieldManager: "vakt-keys"})
		}
		if err != nil {
			if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
				return "", apierrors.NewConflict(configMapsGVR.GroupResource(), recordName(string(live.GetUID())), err)
			}
			return "", stepError{"publishing the keys", err}
		}
		return out.GetResourceVersion(), nil
	}
	var keys map[string]any
	if err := json.Unmarshal(want.Keys, &keys); err != nil {
		return "", err
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
		"metadata":   map[string]any{"name": live.GetName(), "namespace": live.GetNamespace(), "uid": string(live.GetUID()), "resourceVersion": rv},
		"status":     status,
	}}
	out, err := p.client.Resource(applicationsGVR).Namespace(live.GetNamespace()).ApplyStatus(ctx, live.GetName(), obj, metav1.ApplyOptions{FieldManager: "vakt-keys", Force: true})
	if err != nil {
		if apierrors.IsConflict(err) {
			return "", err
		}
		return "", stepError{"publishing the keys", err}
	}
	return out.GetResourceVersion(), nil
}
