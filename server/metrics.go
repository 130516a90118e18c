package server

import (
	"context"
	"errors"
	"math/bits"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/internal/buildinfo"
	"github.com/vakt-dev/vakt/internal/cache"
)

// Metrics are vakt's Prometheus metrics, on a registry of their own.
// Handlers call the engine, then tell Metrics the outcome (observe*), the
// way net/http's server takes a hook; Metrics never runs the engine. A nil
// *Metrics observes nothing.
type Metrics struct {
	registry       *prometheus.Registry
	exchanges      *prometheus.CounterVec
	introspections *prometheus.CounterVec
	reloads        *prometheus.CounterVec

	checks *checkStats

	introspectionDuration, exchangeDuration prometheus.Histogram
	overloaded                              *prometheus.CounterVec
	replayClaims                            *prometheus.CounterVec
}

// NewMetrics registers vakt's metrics and the Go runtime's.
func NewMetrics() *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		exchanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vakt_token_exchanges_total",
			Help: "Token exchanges by result (ok or the OAuth error code) and reason (vakt's reason code).",
		}, []string{"result", "reason"}),
		introspections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vakt_introspections_total",
			Help: "Introspections by whether the token was active, and the reason it was not (none when it was).",
		}, []string{"active", "reason"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vakt_config_reloads_total",
			Help: "Configuration and key reloads by result (ok or refused).",
		}, []string{"result"}),
	}
	m.checks = newCheckStats()
	// Every series from the start, at zero: each reason an exchange or an
	// introspection may end with, and the answer it gets. (The agent counts
	// an upstream's refusal under the OAuth code the upstream gave, one of
	// a fixed few, from when it is first seen.)
	m.exchanges.WithLabelValues("ok", "")
	m.introspections.WithLabelValues("true", authz.ReasonNone.String())
	for _, r := range authz.Reasons() {
		if exchangeReason(r) {
			m.exchanges.WithLabelValues(answerFor(r).code, r.String())
		}
		if inactiveReason(r) {
			m.introspections.WithLabelValues("false", r.String())
		}
	}
	// Introspect and Exchange verify a token or sign one: 10 µs to 10 s.
	buckets := prometheus.ExponentialBuckets(1e-5, 4, 11)
	m.introspectionDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "vakt_introspection_duration_seconds", Help: "Time vakt took to answer an introspection.", Buckets: buckets,
	})
	m.exchangeDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "vakt_token_exchange_duration_seconds", Help: "Time vakt took to answer a token exchange, refusals included.", Buckets: buckets,
	})
	m.overloaded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vakt_requests_refused_overload_total",
		Help: "Requests refused before any work, their budget (limits.check, limits.other) being spent, by service (check, introspect, exchange).",
	}, []string{"service"})
	for _, svc := range []string{"check", "introspect", "exchange"} {
		m.overloaded.WithLabelValues(svc)
	}
	m.replayClaims = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vakt_replay_claims_total",
		Help: "Client assertion ids claimed in the replay store, by result: ok, replayed (used before), quota (the client holds its share), error (the store failed).",
	}, []string{"result"})
	for _, r := range []string{"ok", "replayed", "quota", "error"} {
		m.replayClaims.WithLabelValues(r)
	}
	build := buildinfo.Read()
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "vakt_build_info",
		Help:        "Always 1; the labels say which vakt runs: its version, source revision and Go version.",
		ConstLabels: prometheus.Labels{"version": build.Version, "revision": build.Revision, "goversion": build.GoVersion},
	})
	buildInfo.Set(1)
	m.registry.MustRegister(buildInfo, m.checks, m.introspectionDuration, m.exchangeDuration, m.overloaded, m.replayClaims, m.exchanges, m.introspections, m.reloads,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// Reloaded counts a reload; it fits Reloader.OnResult.
func (m *Metrics) Reloaded(err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.reloads.WithLabelValues("refused").Inc()
	} else {
		m.reloads.WithLabelValues("ok").Inc()
	}
}

// Register adds a collector of another part of vakt (the Kubernetes
// control plane) to the metrics served.
func (m *Metrics) Register(c prometheus.Collector) error {
	if m == nil {
		return nil
	}
	return m.registry.Register(c)
}

// watchConfig reports the configuration in force in cur, read at scrape
// time. The first Current watched is the one reported.
func (m *Metrics) watchConfig(cur *Current) {
	if m == nil {
		return
	}
	_ = m.registry.Register(configCollector{cur: cur,
		info: prometheus.NewDesc("vakt_config_info",
			"Always 1; hash names the configuration in force (the first 16 hex digits of its file's SHA-256).", []string{"hash"}, nil),
		loaded: prometheus.NewDesc("vakt_config_load_timestamp_seconds",
			"When the configuration in force was loaded, in seconds since the epoch.", nil, nil),
		fetches: prometheus.NewDesc("vakt_jwks_fetches_total",
			"Fetches of an identity provider's key set by result (ok or error).", []string{"provider", "result"}, nil),
		lastSuccess: prometheus.NewDesc("vakt_jwks_last_success_timestamp_seconds",
			"When an identity provider's key set was last fetched successfully, in seconds since the epoch; 0 before the first.", []string{"provider"}, nil),
		keys: prometheus.NewDesc("vakt_jwks_keys",
			"Keys in the identity provider's key set in use.", []string{"provider"}, nil),
		clientFetches: prometheus.NewDesc("vakt_client_jwks_fetches_total",
			"Fetches of an application's key set from its jwksUri by result (ok or error).", []string{"application", "result"}, nil),
		clientLastSuccess: prometheus.NewDesc("vakt_client_jwks_last_success_timestamp_seconds",
			"When an application's key set was last fetched from its jwksUri successfully, in seconds since the epoch; 0 before the first.", []string{"application"}, nil),
		tokenCache:  newCacheDescs("vakt_token_cache", "the verified-token cache", "Tokens"),
		answerCache: newCacheDescs("vakt_answer_cache", "the answers cache (Check's answers per token and application)", "Answers"),
	})
}

// cacheDescs describe a cache's metrics.
type cacheDescs struct{ lookups, evictions, entries, bytes *prometheus.Desc }

func newCacheDescs(prefix, what, entries string) cacheDescs {
	return cacheDescs{
		lookups: prometheus.NewDesc(prefix+"_lookups_total",
			"Lookups in "+what+" by result (hit or miss), since the cache was made (at start, or when its bounds changed).", []string{"result"}, nil),
		evictions: prometheus.NewDesc(prefix+"_evictions_total",
			"Entries "+what+" dropped to make room, since the cache was made (at start, or when its bounds changed).", nil, nil),
		entries: prometheus.NewDesc(prefix+"_entries", entries+" in "+what+".", nil, nil),
		bytes:   prometheus.NewDesc(prefix+"_bytes", "Bytes "+what+" counts for its entries.", nil, nil),
	}
}

func (d cacheDescs) collect(ch chan<- prometheus.Metric, st cache.Stats) {
	ch <- prometheus.MustNewConstMetric(d.lookups, prometheus.CounterValue, float64(st.Hits), "hit")
	ch <- prometheus.MustNewConstMetric(d.lookups, prometheus.CounterValue, float64(st.Misses), "miss")
	ch <- prometheus.MustNewConstMetric(d.evictions, prometheus.CounterValue, float64(st.Evictions))
	ch <- prometheus.MustNewConstMetric(d.entries, prometheus.GaugeValue, float64(st.Entries))
	ch <- prometheus.MustNewConstMetric(d.bytes, prometheus.GaugeValue, float64(st.Bytes))
}

// configCollector reports the runtime in force: its configuration and its
// identity providers' key sets.
type configCollector struct {
	cur                                      *Current
	info, loaded, fetches, lastSuccess, keys *prometheus.Desc

	tokenCache, answerCache          cacheDescs
	clientFetches, clientLastSuccess *prometheus.Desc
}

func (c configCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.loaded, c.fetches, c.lastSuccess, c.keys, c.clientFetches, c.clientLastSuccess,
		c.tokenCache.lookups, c.tokenCache.evictions, c.tokenCache.entries, c.tokenCache.bytes,
		c.answerCache.lookups, c.answerCache.evictions, c.answerCache.entries, c.answerCache.bytes} {
		ch <- d
	}
}

func (c configCollector) Collect(ch chan<- prometheus.Metric) {
	rt := c.cur.Load()
	if rt == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, rt.Config.Hash)
	ch <- prometheus.MustNewConstMetric(c.loaded, prometheus.GaugeValue, float64(rt.LoadedAt.UnixNano())/1e9)
	if st, ok := rt.Validator.CacheStats(); ok {
		c.tokenCache.collect(ch, st)
	}
	if rt.answers != nil {
		c.answerCache.collect(ch, rt.answers.Stats())
	}
	for _, k := range rt.remoteKeys {
		s := c.keySet(ch, c.fetches, c.lastSuccess, k)
		ch <- prometheus.MustNewConstMetric(c.keys, prometheus.GaugeValue, float64(s.Keys), k.provider)
	}
	for _, k := range rt.clientKeys {
		c.keySet(ch, c.clientFetches, c.clientLastSuccess, k)
	}
}

// keySet reports a key set's fetches and its last success, and returns
// its stats.
func (c configCollector) keySet(ch chan<- prometheus.Metric, fetches, lastSuccess *prometheus.Desc, k namedKeys) authz.KeyStats {
	s := k.keys.Stats()
	ch <- prometheus.MustNewConstMetric(fetches, prometheus.CounterValue, float64(s.FetchesOK), k.provider, "ok")
	ch <- prometheus.MustNewConstMetric(fetches, prometheus.CounterValue, float64(s.FetchesFailed), k.provider, "error")
	var last float64
	if !s.LastSuccess.IsZero() {
		last = float64(s.LastSuccess.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(lastSuccess, prometheus.GaugeValue, last, k.provider)
	return s
}

// checkStart is when a Check started, for observeCheck.
func (m *Metrics) checkStart() time.Duration { return time.Since(m.checks.epoch) }

// observeCheck counts a Check decided for reason r, started at start.
func (m *Metrics) observeCheck(r authz.Reason, start time.Duration) {
	m.checks.observe(r, time.Since(m.checks.epoch)-start)
}

// checkRefused counts a Check refused for overload before it was worked on.
func (m *Metrics) checkRefused() {
	if m != nil {
		m.checks.decisions[authz.ReasonOverloaded].Add(1)
		m.overloaded.WithLabelValues("check").Inc()
	}
}

// refusedOverload counts an Introspect or Exchange refused past its budget.
func (m *Metrics) refusedOverload(service string) {
	if m != nil {
		m.overloaded.WithLabelValues(service).Inc()
	}
}

func (m *Metrics) observeIntrospection(start time.Time, res introspection) {
	if m == nil {
		return
	}
	m.introspectionDuration.Observe(time.Since(start).Seconds())
	if res.Active {
		m.introspections.WithLabelValues("true", authz.ReasonNone.String()).Inc()
	} else {
		m.introspections.WithLabelValues("false", res.Reason.String()).Inc()
	}
}

// observeExchange counts an exchange's outcome, and returns its error typed
// (nil when the exchange succeeded).
func (m *Metrics) observeExchange(start time.Time, err error) *exchange.Error {
	if m != nil {
		m.exchangeDuration.Observe(time.Since(start).Seconds())
	}
	if err == nil {
		if m != nil {
			m.exchanges.WithLabelValues("ok", "").Inc()
		}
		return nil
	}
	e := exchange.AsError(err)
	if m != nil {
		m.exchanges.WithLabelValues(oauthAnswer(e).code, e.Reason().String()).Inc()
	}
	return e
}

// checkStats counts Checks as the hot path can afford: an atomic add per
// counter, no label lookup, no lock, no allocation, and the histogram's
// bucket found with a bit count rather than a search. It is a
// prometheus.Collector, read at scrape time.
type checkStats struct {
	// epoch is what Check times are measured from: time.Since on it reads
	// only the monotonic clock, cheaper than time.Now.
	epoch time.Time
	// decisions has one counter per reason. Each reason has one result:
	// none is allow, an outage error (Envoy answers it with
	// status_on_error), any other deny.
	decisions []atomic.Uint64
	buckets   [checkBuckets + 1]atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sumNanos  atomic.Uint64

	decisionsDesc, durationDesc *prometheus.Desc
	reasons                     []authz.Reason
}

// checkBuckets are the duration histogram's bounds: 1 µs × 4^i, 1 µs to
// about 1 s, as a cached Check takes about a microsecond and one that waits
// for an identity provider's keys up to limits.keyWait.
const checkBuckets = 11

func newCheckStats() *checkStats {
	reasons := append([]authz.Reason{authz.ReasonNone}, authz.Reasons()...)
	return &checkStats{
		epoch:     time.Now(),
		decisions: make([]atomic.Uint64, len(reasons)),
		reasons:   reasons,
		decisionsDesc: prometheus.NewDesc("vakt_check_decisions_total",
			"Envoy ext_authz Checks by result (allow, deny, or error: an outage answered with a gRPC error) and reason (vakt's reason code; none for an allow).",
			[]string{"result", "reason"}, nil),
		durationDesc: prometheus.NewDesc("vakt_check_duration_seconds",
			"Time vakt took to decide a Check, from its request decoded to its answer ready.", nil, nil),
	}
}

// checkBucket is the index of the first bucket whose bound d is within.
func checkBucket(d time.Duration) int {
	if d <= time.Microsecond {
		return 0
	}
	us := uint64((d + time.Microsecond - 1) / time.Microsecond) // rounded up
	// The first i with 4^i >= us: ceil(log2(us)) / 2, rounded up.
	i := (bits.Len64(us-1) + 1) / 2
	return min(i, checkBuckets)
}

func (c *checkStats) observe(r authz.Reason, d time.Duration) {
	if int(r) < len(c.decisions) {
		c.decisions[r].Add(1)
	}
	c.buckets[checkBucket(d)].Add(1)
	c.sumNanos.Add(uint64(max(d, 0)))
}

// checkResult is the result label of a Check with reason r.
func checkResult(r authz.Reason) string {
	switch {
	case r == authz.ReasonNone:
		return "allow"
	case r.Outage():
		return "error"
	}
	return "deny"
}

func (c *checkStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.decisionsDesc
	ch <- c.durationDesc
}

// Collect reports every series, those at zero too.
func (c *checkStats) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.reasons {
		ch <- prometheus.MustNewConstMetric(c.decisionsDesc, prometheus.CounterValue,
			float64(c.decisions[r].Load()), checkResult(r), r.String())
	}
	cumulative := make(map[float64]uint64, checkBuckets)
	var count uint64
	bound := 1e-6
	for i := range checkBuckets {
		count += c.buckets[i].Load()
		cumulative[bound] = count
		bound *= 4
	}
	count += c.buckets[checkBuckets].Load()
	ch <- prometheus.MustNewConstHistogram(c.durationDesc, count,
		float64(c.sumNanos.Load())/1e9, cumulative)
}

// CountReplay wraps store so that every claim of a client assertion id is
// counted by result: vakt_replay_claims_total{result="ok|replayed|quota|error"}.
func (m *Metrics) CountReplay(store exchange.ReplayStore) exchange.ReplayStore {
	if m == nil {
		return store
	}
	return &countedReplay{ReplayStore: store, claims: m.replayClaims}
}

type countedReplay struct {
	exchange.ReplayStore
	claims *prometheus.CounterVec
}

func (c *countedReplay) Claim(ctx context.Context, client, jti string, expires time.Time) (bool, error) {
	fresh, err := c.ReplayStore.Claim(ctx, client, jti, expires)
	result := "ok"
	switch {
	case errors.Is(err, exchange.ErrReplayQuota):
		result = "quota"
	case err != nil:
		result = "error"
	case !fresh:
		result = "replayed"
	}
	c.claims.WithLabelValues(result).Inc()
	return fresh, err
}

// inactiveReason reports whether an introspection may find a token
// inactive for r: what validating a token refuses, and vakt's own failure.
func inactiveReason(r authz.Reason) bool {
	return r >= authz.ReasonTokenMissing && r <= authz.ReasonKeysUnavailable || r == authz.ReasonInternal
}

// exchangeReason reports whether an exchange may be refused for r: the
// exchange's own reasons, a request it cannot read, and the outages.
// (An upstream's refusal is counted under the upstream's code.)
func exchangeReason(r authz.Reason) bool {
	switch r {
	case authz.ReasonUpstreamRefused:
		return false
	case authz.ReasonRequestInvalid, authz.ReasonKeysUnavailable, authz.ReasonOverloaded, authz.ReasonInternal:
		return true
	}
	return r >= authz.ReasonGrantTypeUnsupported && r <= authz.ReasonUpstreamInvalid
}
