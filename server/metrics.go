package server

import (
	"context"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vakt-dev/vakt/exchange"
)

// Metrics are vakt's Prometheus metrics, on a registry of their own.
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
			Help: "Token exchanges by result (ok or the OAuth error code) and reason.",
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

func (m *Metrics) introspected(active bool) {
	if m == nil {
		return
	}
	if active {
		m.introspections.WithLabelValues("true").Inc()
	} else {
		m.introspections.WithLabelValues("false").Inc()
	}
}

// exchange runs an exchange on the runtime in force and counts it: the one
// path both the gRPC and the HTTP adapter take.
func (m *Metrics) exchange(ctx context.Context, cur *Current, req exchange.Request) (*exchange.Response, *exchange.Error) {
	return m.countExchange(cur.Load().Authority.Exchange(ctx, req))
}

// agentExchange runs an agent exchange and counts it.
func (m *Metrics) agentExchange(ctx context.Context, cur *Current, subjectToken, audience string, skipCache bool) (*exchange.Response, *exchange.Error) {
	return m.countExchange(cur.Load().Agent.Exchange(ctx, subjectToken, audience, skipCache))
}

// countExchange counts an exchange's outcome and types its error.
func (m *Metrics) countExchange(res *exchange.Response, err error) (*exchange.Response, *exchange.Error) {
	if err != nil {
		e := exchange.AsError(err)
		if m != nil {
			m.exchanges.WithLabelValues(e.Code, e.Reason).Inc()
		}
		return nil, e
	}
	if m != nil {
		m.exchanges.WithLabelValues("ok", "").Inc()
	}
	return res, nil
}
