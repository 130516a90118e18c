package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	grpcmd "google.golang.org/grpc/metadata"

	"github.com/vakt-dev/vakt/internal/buildinfo"
)

// Tracing is vakt's OpenTelemetry tracing: spans for Check, Introspect,
// Exchange, key set fetches and Redis calls, exported with OTLP. A nil
// *Tracing traces nothing, and costs Check one comparison.
type Tracing struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
}

// tracingEnabled reports whether the OTEL_* environment asks for traces:
// an OTLP endpoint, or OTEL_TRACES_EXPORTER=otlp, and neither
// OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none. It refuses an
// exporter vakt does not have rather than run without the traces asked for.
func tracingEnabled(getenv func(string) string) (bool, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	switch e := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER"))); e {
	case "none":
		return false, nil
	case "otlp":
		return true, nil
	case "":
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: vakt exports traces with otlp (or none)", e)
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
}

// NewTracing sets tracing up from the standard OTEL_* environment
// variables: off (nil, nil) unless an OTLP endpoint or
// OTEL_TRACES_EXPORTER=otlp is set. OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL
// picks http/protobuf (the default) or grpc; the exporters read their
// endpoint, headers, TLS and timeout variables themselves.
// OTEL_SERVICE_NAME (default "vakt") and OTEL_RESOURCE_ATTRIBUTES name the
// service, OTEL_TRACES_SAMPLER(_ARG) samples (default parentbased_always_on:
// a Check is traced when Envoy's request is), OTEL_BSP_* batch. A setting
// vakt cannot honour is an error, not a silent default.
func NewTracing(ctx context.Context) (*Tracing, error) {
	on, err := tracingEnabled(os.Getenv)
	if err != nil || !on {
		return nil, err
	}
	sampler, err := samplerFrom(os.Getenv)
	if err != nil {
		return nil, err
	}
	var exporter sdktrace.SpanExporter
	protocol := cmpEnv(os.Getenv, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
	switch protocol {
	case "", "http/protobuf":
		exporter, err = otlptracehttp.New(ctx)
	case "grpc":
		exporter, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTLP protocol %q: vakt exports with http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("OTLP exporter: %w", err)
	}
	build := buildinfo.Read()
	// Later options win: the environment names the service over vakt's
	// default.
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", "vakt"), attribute.String("service.version", build.Version)),
		resource.WithFromEnv(),
	)
	if err != nil {
		// OTEL_RESOURCE_ATTRIBUTES that cannot be read, say: refused, as
		// every setting vakt cannot honour.
		_ = exporter.Shutdown(ctx)
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res), sdktrace.WithSampler(sampler))
	return &Tracing{provider: tp, tracer: tp.Tracer("github.com/vakt-dev/vakt")}, nil
}

func cmpEnv(getenv func(string) string, names ...string) string {
	for _, n := range names {
		if v := strings.TrimSpace(getenv(n)); v != "" {
			return v
		}
	}
	return ""
}

// samplerFrom reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG as the
// specification has them; the SDK would log an unknown sampler and sample
// everything, vakt refuses to start.
func samplerFrom(getenv func(string) string) (sdktrace.Sampler, error) {
	name := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER")))
	arg := strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER_ARG"))
	ratio := func() (sdktrace.Sampler, error) {
		if arg == "" {
			return sdktrace.TraceIDRatioBased(1), nil
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return nil, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: not a ratio between 0 and 1", arg)
		}
		return sdktrace.TraceIDRatioBased(r), nil
	}
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio":
		return ratio()
	case "parentbased_traceidratio":
		s, err := ratio()
		if err != nil {
			return nil, err
		}
		return sdktrace.ParentBased(s), nil
	}
	return nil, fmt.Errorf("OTEL_TRACES_SAMPLER=%q: not always_on, always_off, traceidratio or their parentbased_ forms", name)
}

// Shutdown exports the spans still buffered and stops tracing.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.provider.Shutdown(ctx)
}

// HTTPClient returns client with its requests traced: a client span per
// request, named name (a key set fetch, "jwks fetch"), with attrs. Without
// tracing it returns client as it is.
func (t *Tracing) HTTPClient(client *http.Client, name string, attrs ...attribute.KeyValue) *http.Client {
	if t == nil {
		return client
	}
	c := *client
	next := c.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	c.Transport = &tracedTransport{tracer: t.tracer, next: next, name: name, attrs: attrs}
	return &c
}

// PropagatingHTTPClient is HTTPClient whose requests also carry their
// trace (traceparent), for a server that joins it: an upstream vakt.
// Third parties (identity providers) are not told vakt's traces.
func (t *Tracing) PropagatingHTTPClient(client *http.Client, name string, attrs ...attribute.KeyValue) *http.Client {
	c := t.HTTPClient(client, name, attrs...)
	if tt, ok := c.Transport.(*tracedTransport); ok {
		tt.propagate = true
	}
	return c
}

type tracedTransport struct {
	tracer    trace.Tracer
	next      http.RoundTripper
	name      string
	attrs     []attribute.KeyValue
	propagate bool
}

func (t *tracedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, span := t.tracer.Start(r.Context(), t.name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(t.attrs...),
		// Scheme, host and path: a query or user info may hold a secret.
		trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.full", r.URL.Scheme+"://"+r.URL.Host+r.URL.Path), attribute.String("server.address", r.URL.Host)))
	defer span.End()
	r = r.WithContext(ctx)
	if t.propagate {
		// The request is cloned: a RoundTripper must not change the one
		// it was given.
		r = r.Clone(ctx)
		propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(r.Header))
	}
	resp, err := t.next.RoundTrip(r)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
	if resp.StatusCode >= 400 {
		span.SetStatus(codes.Error, resp.Status)
	}
	return resp, nil
}

// RedisHook returns a go-redis hook that traces each command (a client
// span per Redis call), or nil without tracing.
func (t *Tracing) RedisHook(address string) redis.Hook {
	if t == nil {
		return nil
	}
	return redisHook{tracer: t.tracer, address: address}
}

type redisHook struct {
	tracer  trace.Tracer
	address string
}

func (h redisHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h redisHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		ctx, span := h.tracer.Start(ctx, "redis "+cmd.Name(), trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
			attribute.String("db.system.name", "redis"), attribute.String("db.operation.name", cmd.Name()), attribute.String("server.address", h.address)))
		defer span.End()
		err := next(ctx, cmd)
		if err != nil && !errors.Is(err, redis.Nil) {
			span.SetStatus(codes.Error, err.Error())
		}
		return err
	}
}

func (h redisHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		ctx, span := h.tracer.Start(ctx, "redis pipeline", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
			attribute.String("db.system.name", "redis"), attribute.Int("db.operation.batch.size", len(cmds)), attribute.String("server.address", h.address)))
		defer span.End()
		err := next(ctx, cmds)
		if err != nil && !errors.Is(err, redis.Nil) {
			span.SetStatus(codes.Error, err.Error())
		}
		return err
	}
}

// newPropagator reads the caller's trace context: W3C traceparent (which
// wins when both are sent) and Zipkin's B3, single and multi-header, as
// Envoy and Istio forward them.
func newPropagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(b3.New(), propagation.TraceContext{})
}

// headerCarrier reads a Check's request headers for the propagator.
type headerCarrier struct{ h checkHeaders }

func (c headerCarrier) Get(key string) string { return c.h.get(key) }
func (headerCarrier) Set(string, string)      {}
func (c headerCarrier) Keys() []string {
	var keys []string
	c.h.each(func(n string) { keys = append(keys, n) })
	return keys
}

// mdCarrier reads gRPC metadata for the propagator.
type mdCarrier grpcmd.MD

func (c mdCarrier) Get(key string) string {
	if v := grpcmd.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (mdCarrier) Set(string, string) {}
func (c mdCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
