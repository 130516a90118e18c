package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vakt-dev/vakt/exchange"
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
			Help: "Introspections by whether the token was active.",
		}, []string{"active"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vakt_config_reloads_total",
			Help: "Configuration and key reloads by result (ok or refused).",
		}, []string{"result"}),
	}
	m.registry.MustRegister(m.exchanges, m.introspections, m.reloads,
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

func (m *Metrics) observeIntrospection(res introspection) {
	if m == nil {
		return
	}
	if res.Active {
		m.introspections.WithLabelValues("true").Inc()
	} else {
		m.introspections.WithLabelValues("false").Inc()
	}
}

// observeExchange counts an exchange's outcome, and returns its error typed
// (nil when the exchange succeeded).
func (m *Metrics) observeExchange(err error) *exchange.Error {
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
