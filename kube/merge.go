package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/vakt-dev/vakt/config"
)

// Why a resource's latest version does not serve: the condition reasons
// of its status.
const (
	ReasonServing       = "Serving"
	ReasonRefused       = "Refused"       // its spec is not one vakt accepts
	ReasonConflict      = "Conflict"      // an older resource, or the file, holds what it claims
	ReasonSlowed        = "Slowed"        // its namespace changes faster than it may
	ReasonLimitExceeded = "LimitExceeded" // its namespace declares more than it may
)

// State is what became of a resource in the configuration in force:
// served as it is, served in an earlier version (its latest was refused,
// or waits), or not served.
type State struct {
	Resource Resource
	// Served is the generation in force, 0 when none is.
	Served int64
	// Reason is ReasonServing when the latest version serves, else why not;
	// Refused says it in words (nil when it serves).
	Reason  string
	Refused error
	// ServedSpec is the served version's spec, as Resource.Spec: the
	// elected replica records it in an Application's status.served, so
	// that a replica that never saw that version (restarted, or new)
	// serves it too.
	ServedSpec []byte
	// SecretName is the served version's spec.secretName: vakt makes the
	// application's client key there.
	SecretName string
	// KeyIDs are the kids of the client keys vakt made that are in force.
	KeyIDs []string
	// JWKSURI is the served version's jwksUri: vakt fetches its keys there.
	JWKSURI string
}

// resourceMerger merges resources into configurations. It remembers the
// last version of each that was accepted, so that a resource whose new
// version is refused keeps its previous one serving; and what it checked,
// so that a change costs the check of the changed resource alone.
type resourceMerger struct {
	mu       sync.Mutex
	lastGood map[string]Resource
	lastKeys map[string]lastKeys
	// checked is each version's check against the configuration, by
	// object and generation; kept while that version is latest or serves.
	checked map[versionKey]checkedVersion
	// admitted are the versions that took a change from their namespace's
	// limiter: a merge done again (a failed build) takes no second one.
	admitted map[versionKey]bool
	limiters map[string]*rate.Limiter // by namespace
	rate     config.NamespaceLimits   // the limiters'
	// logged is what was last logged of each version's refusal: once, not
	// at every merge.
	logged map[versionKey]string
	// retry asks for another merge in d (a slowed change); retryAt is when
	// the one asked for will come.
	retry   func(d time.Duration)
	retryAt time.Time
	now     func() time.Time
	checks  int // versions checked, for tests: a change costs one
	// waitingUntil is, by namespace, until when its new versions wait for
	// its rate (a merge is asked for then), as the last merge found.
	waitingUntil atomic.Pointer[map[string]time.Time]
	// primed is set once a merge of the resources as first read is in
	// force: until then no version takes a change from its namespace, so
	// that a replica new or restarted serves every resource there is at
	// once, as the others do, rather than its namespaces' bursts of them.
	primed bool
}

// prime marks the resources as first read merged: from now on a new
// version is a change.
func (m *resourceMerger) prime() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.primed = true
}

// versionKey names one version of one object.
type versionKey struct {
	key, uid string
	gen      int64
}

func (r *Resource) version() versionKey { return versionKey{r.key(), r.UID, r.Generation} }

// checkedVersion is a version's check, valid for the configuration
// (config.Config.Hash of its file) and the grants of its namespace
// (ResourceIndex.GrantsKey) it was made with.
type checkedVersion struct {
	config, labels string
	app            *config.Application
	secretName     string
	err            error
}

// check checks one version against cfg alone (not against the others'
// claims): from the cache when that version was checked against the same
// configuration and labels. The application returned is the caller's.
func (m *resourceMerger) check(x *config.ResourceIndex, cfgHash string, r Resource, log *slog.Logger) (*config.Application, string, error) {
	lk := x.GrantsKey(r.Namespace, r.NamespaceLabels)
	c, ok := m.checked[r.version()]
	if !ok || c.config != cfgHash || c.labels != lk {
		c = checkedVersion{config: cfgHash, labels: lk}
		m.checks++
		switch r.Kind {
		case config.KindApplication:
			var rs *config.ResourceSpec
			if c.app, rs, c.err = x.CheckApplication(r.Name, r.Namespace, r.NamespaceLabels, r.Spec); c.err == nil {
				c.secretName = rs.SecretName
			}
		case config.KindJwker:
			c.app, c.secretName, c.err = x.CheckJwker(r.Name, r.Namespace, r.NamespaceLabels, r.Spec)
		default:
			c.err = fmt.Errorf("%s is not a kind vakt reads", r.Kind)
		}
		m.checked[r.version()] = c
		if c.err != nil {
			log.Warn("kubernetes: a resource was refused", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "generation", r.Generation, "error", truncate(c.err.Error(), 1024))
		}
	}
	if c.err != nil {
		return nil, "", c.err
	}
	a := *c.app // its keys are set per merge
	return &a, c.secretName, nil
}

// limiter is a namespace's change limiter, as the configuration says.
func (m *resourceMerger) limiter(ns string, nl config.NamespaceLimits) *rate.Limiter {
	if m.rate != nl {
		m.limiters, m.rate = map[string]*rate.Limiter{}, nl // new limits: new buckets
	}
	l := m.limiters[ns]
	if l == nil {
		l = rate.NewLimiter(rate.Limit(float64(nl.ChangesPerMinute)/60), nl.ChangeBurst)
		m.limiters[ns] = l
	}
	return l
}

// waiting reports whether a namespace's new versions must wait for its
// rate, and a merge is asked for when they may apply.
// It takes no lock: the informers' handlers ask it, and must not wait for
// a merge.
func (m *resourceMerger) waiting(ns string) bool {
	w := m.waitingUntil.Load()
	if w == nil {
		return false
	}
	until, ok := (*w)[ns]
	now := time.Now()
	if m.now != nil {
		now = m.now()
	}
	return ok && now.Before(until)
}

// retryIn asks for a merge in d, unless one comes sooner.
func (m *resourceMerger) retryIn(now time.Time, d time.Duration) {
	if m.retry == nil {
		return
	}
	at := now.Add(d)
	if !m.retryAt.IsZero() && m.retryAt.After(now) && !m.retryAt.After(at) {
		return
	}
	m.retryAt = at
	m.retry(d)
}

// usage is what a namespace's served resources declare, against its
// kubernetes.namespaceLimits.
type usage struct{ resources, routes, rules int }

// merge adds the resources' applications to cfg (a fresh configuration,
// not yet in force) and returns what became of each; cfg.Hash comes to
// name the resources in force too. The resources come oldest first: of two
// claiming one id, host or resource URI the older keeps it (the file's
// applications before any), on every replica and after every restart. For
// each, its latest version is tried, then the version that serves now:
//   - a new version (of a resource new or changed) takes one change from
//     its namespace's limiter; when there is none, it waits (Slowed) and
//     another merge comes when there is;
//   - it is checked alone against the configuration (cached: a change
//     costs the check of the changed resource only), then against its
//     namespace's bounds (LimitExceeded), then its claims are taken
//     (Conflict when another holds one).
//
// What it accepted becomes the last good version of each resource only by
// commit, once the runtime built from cfg is in hand. With servingOnly,
// only the resources serving now are merged, in the version that serves
// (newcomers and new versions wait): the configuration to fall back on
// when one with everything could not be built.
func (m *resourceMerger) merge(cfg *config.Config, resources []Resource, log *slog.Logger, servingOnly bool) (states []State, commit func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lastGood == nil {
		m.lastGood, m.checked, m.admitted, m.logged = map[string]Resource{}, map[versionKey]checkedVersion{}, map[versionKey]bool{}, map[versionKey]string{}
	}
	now := time.Now()
	if m.now != nil {
		now = m.now()
	}
	cfgHash := cfg.Hash
	nl := cfg.Kubernetes.NamespaceLimits
	accepted := map[string]Resource{}
	keysSeen := map[string]lastKeys{}
	used := map[string]*usage{}
	index := cfg.NewResourceIndex()
	// keys gives an application with secretName the public keys vakt
	// published for it. Published keys that vanish (an annotation a
	// controller overwrote) leave the last ones of the same object in force
	// until the elected replica publishes them again.
	keys := func(r Resource, a *config.Application) []string {
		pub := r.Published
		if len(pub) == 0 {
			if last, ok := m.lastKeys[r.key()]; ok && last.uid == r.UID {
				pub = last.published
			}
		}
		if len(pub) == 0 {
			return nil
		}
		set, kids, until, err := parsePublishedKeys(pub)
		if err != nil {
			last, ok := m.lastKeys[r.key()]
			if ok && last.uid == r.UID {
				set, kids, until, err = parsePublishedKeys(last.published)
				pub = last.published
			}
			if err != nil {
				log.Warn("kubernetes: the keys published for a resource are unusable; it has none", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "error", err)
				return nil
			}
			log.Warn("kubernetes: the keys published for a resource are unusable; the last usable ones stay in force", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name)
		}
		a.Keys, a.KeysUntil = set, until
		keysSeen[r.key()] = lastKeys{uid: r.UID, published: pub}
		return kids
	}
	// take tries one version: checked, within bounds, its claims free.
	take := func(r Resource) (*config.Application, string, string, error) {
		a, secretName, err := m.check(index, cfgHash, r, log)
		if err != nil {
			return nil, "", ReasonRefused, err
		}
		u := used[r.Namespace]
		if u == nil {
			u = &usage{}
			used[r.Namespace] = u
		}
		var over []string
		if u.resources+1 > nl.Resources {
			over = append(over, fmt.Sprintf("its namespace serves %d resources, kubernetes.namespaceLimits.resources allows %d", u.resources, nl.Resources))
		}
		if n := len(a.Routes); u.routes+n > nl.Routes {
			over = append(over, fmt.Sprintf("its %d routes and the %d its namespace serves are more than kubernetes.namespaceLimits.routes allows (%d)", n, u.routes, nl.Routes))
		}
		if n := len(a.AccessPolicy.Inbound.Rules); u.rules+n > nl.Rules {
			over = append(over, fmt.Sprintf("its %d inbound rules and the %d its namespace serves are more than kubernetes.namespaceLimits.rules allows (%d)", n, u.rules, nl.Rules))
		}
		if len(over) > 0 {
			return nil, "", ReasonLimitExceeded, errors.New(strings.Join(over, "; "))
		}
		if err := index.Claim(a); err != nil {
			return nil, "", ReasonConflict, err
		}
		u.resources++
		u.routes += len(a.Routes)
		u.rules += len(a.AccessPolicy.Inbound.Rules)
		return a, secretName, "", nil
	}
	waitingUntil := map[string]time.Time{}
	defer m.waitingUntil.Store(&waitingUntil)
	resources = slices.Clone(resources)
	slices.SortStableFunc(resources, olderFirst)
	h := sha256.New()
	h.Write([]byte(cfgHash))
	states = make([]State, 0, len(resources))
	for _, r := range resources {
		st := State{Resource: r, Reason: ReasonServing}
		good, incumbent := m.lastGood[r.key()]
		incumbent = incumbent && good.UID == r.UID
		if rec := r.Recorded; rec != nil && rec.Generation <= r.Generation && (!incumbent || rec.Generation > good.Generation) {
			// The version the elected replica recorded as serving, newer
			// than any this replica accepted (it never saw it: restarted,
			// or new), is the one to fall back on: every replica serves
			// the same. It is checked as any version is.
			good, incumbent = r, true
			good.Generation, good.Spec = rec.Generation, rec.Spec
		}
		if incumbent {
			// The keys and the namespace are the object's latest, whichever
			// spec serves.
			good.Published, good.RotateKey, good.NamespaceLabels = r.Published, r.RotateKey, r.NamespaceLabels
		}
		var tries []Resource
		switch {
		case servingOnly && !incumbent:
			st.Reason, st.Refused = ReasonRefused, errors.New("not served yet: the configuration with it could not be built")
		case servingOnly:
			if good.Generation != r.Generation {
				st.Reason, st.Refused = ReasonRefused, errors.New("this version waits: the configuration with it could not be built")
			}
			tries = []Resource{good}
		case incumbent && good.Generation == r.Generation:
			tries = []Resource{r}
		default:
			// A new version: it takes a change from its namespace (none
			// before the resources as first read are merged).
			if !m.primed {
				m.admitted[r.version()] = true
			}
			if !m.admitted[r.version()] {
				lim := m.limiter(r.Namespace, nl)
				if lim.AllowN(now, 1) {
					m.admitted[r.version()] = true
				} else {
					// When the next change comes: asked, then given back.
					res := lim.ReserveN(now, 1)
					d := max(res.DelayFrom(now), 100*time.Millisecond)
					res.CancelAt(now)
					st.Reason = ReasonSlowed
					st.Refused = fmt.Errorf("namespace %s changes faster than kubernetes.namespaceLimits allows (%d new versions a minute, bursts of %d): generation %d waits, about %s",
						r.Namespace, nl.ChangesPerMinute, nl.ChangeBurst, r.Generation, d.Round(time.Second))
					m.retryIn(now, d)
					waitingUntil[r.Namespace] = now.Add(d)
				}
			}
			if m.admitted[r.version()] {
				tries = append(tries, r)
			}
			if incumbent {
				tries = append(tries, good)
			}
		}
		var a *config.Application
		var secretName string
		served := r
		for i, v := range tries {
			va, sn, reason, err := take(v)
			if err == nil {
				a, secretName, served = va, sn, v
				if v.Generation == r.Generation {
					accepted[r.key()] = r
				}
				break
			}
			if i == 0 && v.Generation == r.Generation {
				st.Reason, st.Refused = reason, err
				if reason != ReasonRefused && m.logged[v.version()] != err.Error() {
					m.logged[v.version()] = err.Error()
					log.Warn("kubernetes: a resource was not served", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "generation", r.Generation, "reason", reason, "error", truncate(err.Error(), 1024))
				}
			}
		}
		if a != nil {
			st.SecretName = secretName
			if secretName != "" {
				st.KeyIDs = keys(served, a)
			}
			cfg.Applications = append(cfg.Applications, *a)
			st.Served, st.ServedSpec, st.JWKSURI = served.Generation, served.Spec, a.JWKSURI
			fmt.Fprintf(h, "\n%s %s %d ", served.key(), served.UID, served.Generation)
			h.Write(served.Spec)
			if secretName != "" {
				h.Write([]byte{'\n'})
				h.Write(keysSeen[served.key()].published)
			}
		} else if st.Refused == nil {
			st.Reason, st.Refused = ReasonRefused, errors.New("no version of it could be served")
		}
		states = append(states, st)
	}
	if len(resources) > 0 {
		cfg.Hash = hex.EncodeToString(h.Sum(nil)[:8])
	}
	seen := make(map[string]bool, len(resources))
	latest := make(map[versionKey]bool, len(resources))
	for _, r := range resources {
		seen[r.key()] = true
		latest[r.version()] = true
	}
	return states, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		for key := range m.lastGood {
			if !seen[key] {
				delete(m.lastGood, key) // deleted: no version of it serves
			}
		}
		maps.Copy(m.lastGood, accepted)
		m.lastKeys = keysSeen
		// What is kept of each object: its latest version, and the one
		// that serves.
		keep := func(v versionKey) bool {
			g, ok := m.lastGood[v.key]
			return latest[v] || ok && g.UID == v.uid && g.Generation == v.gen
		}
		maps.DeleteFunc(m.checked, func(v versionKey, _ checkedVersion) bool { return !keep(v) })
		maps.DeleteFunc(m.admitted, func(v versionKey, _ bool) bool { return !keep(v) })
		maps.DeleteFunc(m.logged, func(v versionKey, _ string) bool { return !keep(v) })
		// A namespace whose bucket is full again is forgotten: it would
		// start from a full one anyway.
		maps.DeleteFunc(m.limiters, func(_ string, l *rate.Limiter) bool { return l.TokensAt(now) >= float64(l.Burst()) })
	}
}
