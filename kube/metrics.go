package kube

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// APIHealth is what the informers' requests say of the API server: client-go
// retries a watch refused a connection on its own, telling no one, so the
// requests themselves are watched.
type APIHealth struct {
	failing atomic.Bool
	errors  atomic.Int64
	lastOK  atomic.Int64 // unix nanoseconds of the last answer
}

// InformerClient is a dynamic client for a Source's informers (SourceConfig
// Client and API): its requests tell the Source's metrics whether the API
// server answers, and when it last did.
func InformerClient(rc *rest.Config) (dynamic.Interface, *APIHealth, error) {
	h := &APIHealth{}
	c := rest.CopyConfig(rc)
	c.Wrap(func(rt http.RoundTripper) http.RoundTripper { return healthRoundTripper{rt, h} })
	client, err := dynamic.NewForConfig(c)
	return client, h, err
}

type healthRoundTripper struct {
	rt http.RoundTripper
	h  *APIHealth
}

func (t healthRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(req)
	switch {
	case err != nil && req.Context().Err() == nil, err == nil && resp.StatusCode >= 500:
		t.h.errors.Add(1)
		t.h.failing.Store(true)
	case err == nil:
		t.h.failing.Store(false)
		t.h.lastOK.Store(time.Now().UnixNano())
	}
	return resp, err
}

// watchState is what a replica knows of one informer's watch: when it last
// heard from the API server, and how often it failed.
type watchState struct {
	resource string
	inf      cache.SharedIndexInformer

	errors atomic.Int64
	mu     sync.Mutex
	lastRV string    // the informer's resourceVersion when last looked at
	heard  time.Time // when it last changed, or an event came
}

// event records that the watch delivered something: it works.
func (w *watchState) event(now time.Time) {
	w.mu.Lock()
	w.heard = now
	w.mu.Unlock()
}

// failed records a failed list or watch.
func (w *watchState) failed() { w.errors.Add(1) }

// look brings heard up to date with the informer's resourceVersion (a
// relist after an outage changes it without an event), and returns it.
func (w *watchState) look(now time.Time) time.Time {
	rv := w.inf.LastSyncResourceVersion()
	w.mu.Lock()
	defer w.mu.Unlock()
	if rv != "" && rv != w.lastRV {
		if w.lastRV != "" || w.heard.IsZero() {
			w.heard = now
		}
		w.lastRV = rv
	}
	return w.heard
}

// Collector reports the control plane's state on this replica: whether the
// resources have been read, each watch's health and when it last heard
// from the API server, and what became of the resources in the
// configuration in force, by kind and reason.
func (k *Source) Collector() prometheus.Collector { return sourceCollector{k} }

type sourceCollector struct{ k *Source }

var (
	descSynced = prometheus.NewDesc("vakt_kubernetes_synced",
		"1 once every resource informer has listed its resources; vakt is not ready before.", nil, nil)
	descWatchErrors = prometheus.NewDesc("vakt_kubernetes_watch_errors_total",
		"Lists and watches of a resource that failed other than by the API server being away (vakt_kubernetes_api_failing says that): refused, or unreadable.", []string{"resource"}, nil)
	descLastSync = prometheus.NewDesc("vakt_kubernetes_last_sync_timestamp_seconds",
		"When the watch of a resource last heard from the API server (an event, or a new list), in seconds since the epoch; 0 before.", []string{"resource"}, nil)
	descAPIFailing = prometheus.NewDesc("vakt_kubernetes_api_failing",
		"1 while the informers' requests to the API server fail (it is away): the resources last seen stay in force, and the watches retry with backoff.", nil, nil)
	descAPIErrors = prometheus.NewDesc("vakt_kubernetes_api_errors_total",
		"The informers' requests to the API server that failed.", nil, nil)
	descAPILastOK = prometheus.NewDesc("vakt_kubernetes_api_last_success_timestamp_seconds",
		"When the API server last answered an informer's request, in seconds since the epoch; 0 before.", nil, nil)
	descResources = prometheus.NewDesc("vakt_kubernetes_resources",
		"Resources in the configuration in force, by kind and reason: Serving, Refused, Conflict, Slowed or LimitExceeded (the latest version's).", []string{"kind", "reason"}, nil)
)

func (c sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSynced, descWatchErrors, descLastSync, descResources, descAPIFailing, descAPIErrors, descAPILastOK} {
		ch <- d
	}
}

func (c sourceCollector) Collect(ch chan<- prometheus.Metric) {
	k := c.k
	synced := 0.0
	if k.Synced() {
		synced = 1
	}
	ch <- prometheus.MustNewConstMetric(descSynced, prometheus.GaugeValue, synced)
	if h := k.api; h != nil {
		failing := 0.0
		if h.failing.Load() {
			failing = 1
		}
		var at float64
		if ns := h.lastOK.Load(); ns != 0 {
			at = float64(ns) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(descAPIFailing, prometheus.GaugeValue, failing)
		ch <- prometheus.MustNewConstMetric(descAPIErrors, prometheus.CounterValue, float64(h.errors.Load()))
		ch <- prometheus.MustNewConstMetric(descAPILastOK, prometheus.GaugeValue, at)
	}
	now := time.Now()
	for _, w := range k.watches {
		heard := w.look(now)
		var at float64
		if !heard.IsZero() {
			at = float64(heard.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(descWatchErrors, prometheus.CounterValue, float64(w.errors.Load()), w.resource)
		ch <- prometheus.MustNewConstMetric(descLastSync, prometheus.GaugeValue, at, w.resource)
	}
	counts := map[[2]string]int{}
	for _, kind := range []string{"Application", "Jwker"} {
		for _, r := range []string{ReasonServing, ReasonRefused, ReasonConflict, ReasonSlowed, ReasonLimitExceeded} {
			counts[[2]string{kind, r}] = 0
		}
	}
	if s := k.Served(); s != nil {
		for _, st := range s.States {
			counts[[2]string{st.Resource.Kind, st.Reason}]++
		}
	}
	for kr, n := range counts {
		ch <- prometheus.MustNewConstMetric(descResources, prometheus.GaugeValue, float64(n), kr[0], kr[1])
	}
}
