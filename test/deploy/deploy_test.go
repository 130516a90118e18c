// Package deploy_test checks the deployment configurations against the
// schemas of the software that reads them.
package deploy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/goccy/go-yaml"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	// Register every typed_config type the bootstrap names.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/deploy/examples"
	"github.com/vakt-dev/vakt/server"
)

// yamlToJSON reads a YAML file as JSON, for protojson.
func yamlToJSON(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestEnvoyBootstrap(t *testing.T) {
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(yamlToJSON(t, "envoy/envoy.yaml"), &b); err != nil {
		t.Fatalf("envoy.yaml is not a v3 Bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("envoy.yaml does not validate: %v", err)
	}

	// The contract with Check: every route names, under the key Check reads,
	// an application the development configuration registers; and the
	// filter fails closed.
	dev, err := config.Load(examples.Development, ".")
	if err != nil {
		t.Fatal(err)
	}
	apps := map[string]bool{}
	for i := range dev.Applications {
		apps[dev.Applications[i].ID()] = true
	}
	var hcm hcmv3.HttpConnectionManager
	if err := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	var filter extauthzv3.ExtAuthz
	if err := hcm.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(&filter); err != nil {
		t.Fatal(err)
	}
	if filter.GetFailureModeAllow() || filter.GetStatusOnError().GetCode() != 503 || filter.GetTransportApiVersion().String() != "V3" {
		t.Fatalf("ext_authz must fail closed with 503 over the v3 API: %v", &filter)
	}
	// The settings vakt's identity guarantees lean on (docs/security.md):
	// one path for vakt and the upstream, no x_vakt_* headers, no invalid
	// header mutations.
	if !filter.GetValidateMutations() {
		t.Error("ext_authz: validate_mutations must be true")
	}
	if !hcm.GetNormalizePath().GetValue() || !hcm.GetMergeSlashes() ||
		hcm.GetPathWithEscapedSlashesAction() != hcmv3.HttpConnectionManager_REJECT_REQUEST {
		t.Errorf("paths: normalize_path %v, merge_slashes %v, path_with_escaped_slashes_action %v",
			hcm.GetNormalizePath(), hcm.GetMergeSlashes(), hcm.GetPathWithEscapedSlashesAction())
	}
	if hcm.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction() != corev3.HttpProtocolOptions_REJECT_REQUEST {
		t.Error("headers_with_underscores_action must be REJECT_REQUEST")
	}
	routes := 0
	for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			var per extauthzv3.ExtAuthzPerRoute
			if err := r.GetTypedPerFilterConfig()["envoy.filters.http.ext_authz"].UnmarshalTo(&per); err != nil {
				t.Fatalf("route %v has no ext_authz check_settings: %v", r.GetMatch(), err)
			}
			id := per.GetCheckSettings().GetContextExtensions()[server.ContextExtensionApp]
			if !apps[id] {
				t.Fatalf("route %v names %q under %q, not an application of the development configuration", r.GetMatch(), id, server.ContextExtensionApp)
			}
			routes++
		}
	}
	if routes == 0 {
		t.Fatal("no routes")
	}
}

// The EnvoyFilter is an Istio EnvoyFilter, and its patch an Envoy
// HttpConnectionManager that refuses header names with '_'.
func TestIstioUnderscoreHeaders(t *testing.T) {
	var doc struct {
		Kind string          `json:"kind"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(yamlToJSON(t, "istio/envoyfilter-underscores.yaml"), &doc); err != nil {
		t.Fatal(err)
	}
	var ef networkingv1alpha3.EnvoyFilter
	if err := protojson.Unmarshal(doc.Spec, &ef); err != nil || doc.Kind != "EnvoyFilter" {
		t.Fatalf("not an EnvoyFilter: %v", err)
	}
	patch := ef.GetConfigPatches()[0].GetPatch().GetValue()
	tc, err := protojson.Marshal(patch.GetFields()["typed_config"].GetStructValue())
	if err != nil {
		t.Fatal(err)
	}
	var anyHCM struct {
		Type string `json:"@type"`
	}
	_ = json.Unmarshal(tc, &anyHCM)
	var hcm hcmv3.HttpConnectionManager
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(tc, &fields)
	delete(fields, "@type")
	body, _ := json.Marshal(fields)
	if err := protojson.Unmarshal(body, &hcm); err != nil {
		t.Fatalf("the patch is not an HttpConnectionManager: %v", err)
	}
	if anyHCM.Type != "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" ||
		hcm.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction() != corev3.HttpProtocolOptions_REJECT_REQUEST {
		t.Fatalf("patch %s", tc)
	}
}

func TestIstio(t *testing.T) {
	var mesh meshv1alpha1.MeshConfig
	if err := protojson.Unmarshal(yamlToJSON(t, "istio/mesh-config.yaml"), &mesh); err != nil {
		t.Fatalf("mesh-config.yaml is not Istio MeshConfig: %v", err)
	}
	var provider *meshv1alpha1.MeshConfig_ExtensionProvider
	for _, p := range mesh.GetExtensionProviders() {
		if p.GetName() == "vakt" {
			provider = p
		}
	}
	if mesh.GetPathNormalization().GetNormalization() != meshv1alpha1.MeshConfig_ProxyPathNormalization_MERGE_SLASHES {
		t.Errorf("pathNormalization %v, want MERGE_SLASHES", mesh.GetPathNormalization())
	}
	grpc := provider.GetEnvoyExtAuthzGrpc()
	if grpc == nil || grpc.GetPort() != 9000 || grpc.GetFailOpen() || grpc.GetStatusOnError() != "503" {
		t.Fatalf("vakt provider: %v", provider)
	}

	var doc struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(yamlToJSON(t, "istio/authorization-policy.yaml"), &doc); err != nil {
		t.Fatal(err)
	}
	var policy securityv1beta1.AuthorizationPolicy
	if err := protojson.Unmarshal(doc.Spec, &policy); err != nil {
		t.Fatalf("authorization-policy.yaml spec is not an AuthorizationPolicy: %v", err)
	}
	if doc.Kind != "AuthorizationPolicy" || policy.GetAction() != securityv1beta1.AuthorizationPolicy_CUSTOM || policy.GetProvider().GetName() != provider.GetName() {
		t.Fatalf("policy must be CUSTOM with provider %q: %v", provider.GetName(), &policy)
	}
	// The selected workload is an application vakt knows by the principal
	// Istio sends: namespace and service account (here named like the app).
	dev, err := config.Load(examples.Development, ".")
	if err != nil {
		t.Fatal(err)
	}
	id := dev.Cluster + ":" + doc.Metadata.Namespace + ":" + policy.GetSelector().GetMatchLabels()["app"]
	found := false
	for i := range dev.Applications {
		found = found || dev.Applications[i].ID() == id
	}
	if !found {
		t.Fatalf("the policy selects %s, which the development configuration does not register", id)
	}
}

// The identity headers vakt sets on allow; a client's must never reach an
// upstream.
var envoyHTTPIdentityHeaders = []string{authz.HeaderSubject, authz.HeaderClientID, authz.HeaderIdentityProvider, authz.HeaderScope}

// The headers vakt's HTTP face believes about the original request (the way
// nginx, Caddy and Traefik ask, server/httpauthz.go): a proxy that forwards a
// client's to vakt lets the client say what is being asked.
var envoyHTTPRequestHeaders = []string{"x-original-method", "x-original-uri", "x-forwarded-method", "x-forwarded-uri", "x-forwarded-host"}

// envoyStringMatch reports whether an Envoy StringMatcher matches s.
func envoyStringMatch(t *testing.T, m *matcherv3.StringMatcher, s string) bool {
	t.Helper()
	if m.GetIgnoreCase() {
		s = strings.ToLower(s)
	}
	lower := func(p string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(p)
		}
		return p
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return s == lower(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(s, lower(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(s, lower(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(s, lower(p.Contains))
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile("^(?:" + p.SafeRegex.GetRegex() + ")$")
		if err != nil {
			t.Fatalf("regex %q: %v", p.SafeRegex.GetRegex(), err)
		}
		return re.MatchString(s)
	}
	t.Fatalf("unsupported string matcher %v", m)
	return false
}

// envoyListMatch reports whether any pattern of a ListStringMatcher matches s.
func envoyListMatch(t *testing.T, l *matcherv3.ListStringMatcher, s string) bool {
	t.Helper()
	for _, m := range l.GetPatterns() {
		if envoyStringMatch(t, m, s) {
			return true
		}
	}
	return false
}

// envoyRemovesHeader reports whether a header_mutation filter removes the
// request header name (Envoy keeps header names in lower case).
func envoyRemovesHeader(t *testing.T, hm *headermutationv3.HeaderMutation, name string) bool {
	t.Helper()
	name = strings.ToLower(name)
	for _, m := range hm.GetMutations().GetRequestMutations() {
		if strings.ToLower(m.GetRemove()) == name {
			return true
		}
		if k := m.GetRemoveOnMatch().GetKeyMatcher(); k != nil && envoyStringMatch(t, k, name) {
			return true
		}
	}
	return false
}

// envoyValidateTypedConfigs unpacks every Any below m, which must be of a
// registered type, and runs its ValidateAll: Bootstrap.ValidateAll does not
// look inside typed_config.
func envoyValidateTypedConfigs(t *testing.T, m protoreflect.Message, where string) {
	t.Helper()
	visit := func(v protoreflect.Message, at string) {
		if a, ok := v.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				t.Fatalf("%s: %s is not a registered type: %v", at, a.GetTypeUrl(), err)
			}
			if val, ok := inner.(interface{ ValidateAll() error }); ok {
				if err := val.ValidateAll(); err != nil {
					t.Errorf("%s (%s) does not validate: %v", at, a.GetTypeUrl(), err)
				}
			}
			envoyValidateTypedConfigs(t, inner.ProtoReflect(), at+"<"+a.GetTypeUrl()+">")
			return
		}
		envoyValidateTypedConfigs(t, v, at)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		at := where + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				visit(v.List().Get(i).Message(), at)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				visit(mv.Message(), at+"["+k.String()+"]")
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			visit(v.Message(), at)
		}
		return true
	})
}

// envoyCheckHTTPService checks an ext_authz http_service against vakt's HTTP
// face: it names a cluster of the bootstrap and, in its path_prefix, an
// application the development configuration registers; it sends vakt's
// identity headers, and no other, upstream; and it lets vakt's challenge
// reach the client.
func envoyCheckHTTPService(t *testing.T, where string, svc *extauthzv3.HttpService, clusters, apps map[string]bool) {
	uri := svc.GetServerUri()
	if !clusters[uri.GetCluster()] {
		t.Errorf("%s: server_uri names cluster %q, which the bootstrap does not define", where, uri.GetCluster())
	}
	if d := uri.GetTimeout().AsDuration(); d <= 0 || d > time.Second {
		t.Errorf("%s: timeout %v, want a short one (0.5s)", where, d)
	}
	// /authz/<application id>: vakt reads the application from the first
	// segment; /authz alone would leave it to the client (Host, or a first
	// segment of the original path shaped like an application id).
	id, ok := strings.CutPrefix(svc.GetPathPrefix(), server.AuthzPathPrefix+"/")
	if _, err := authz.ParseAppID(id); !ok || err != nil || strings.ContainsAny(id, "/?") || !apps[id] {
		t.Errorf("%s: path_prefix %q, want %s/<an application id the development configuration registers>", where, svc.GetPathPrefix(), server.AuthzPathPrefix)
	}
	if svc.GetPathOverride() != "" {
		t.Errorf("%s: path_override %q would drop the original path", where, svc.GetPathOverride())
	}
	res := svc.GetAuthorizationResponse()
	for _, h := range envoyHTTPIdentityHeaders {
		if !envoyListMatch(t, res.GetAllowedUpstreamHeaders(), h) {
			t.Errorf("%s: allowed_upstream_headers does not copy %s", where, h)
		}
	}
	// vakt's 200 may set its own headers upstream, and nothing else.
	for _, h := range []string{"authorization", "host", ":authority", ":path", ":method", "cookie", "x-forwarded-for", "content-length"} {
		if envoyListMatch(t, res.GetAllowedUpstreamHeaders(), h) {
			t.Errorf("%s: allowed_upstream_headers copies %s from vakt's answer", where, h)
		}
	}
	if res.GetAllowedUpstreamHeadersToAppend() != nil {
		t.Errorf("%s: allowed_upstream_headers_to_append would add to a header rather than replace it", where)
	}
	for _, h := range []string{"www-authenticate", "content-type"} {
		if !envoyListMatch(t, res.GetAllowedClientHeaders(), h) {
			t.Errorf("%s: allowed_client_headers does not pass %s to the client", where, h)
		}
	}
}

// envoy-http.yaml is envoy.yaml over HTTP: a v3 Bootstrap whose every
// typed_config validates, whose ext_authz asks vakt's HTTP face about the
// application its path_prefix names, fails closed, sends vakt no header that
// could tell it a different request, and lets no x-vakt-* header of a
// client's reach the upstream.
func TestEnvoyHTTPBootstrap(t *testing.T) {
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(yamlToJSON(t, "envoy/envoy-http.yaml"), &b); err != nil {
		t.Fatalf("envoy-http.yaml is not a v3 Bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("envoy-http.yaml does not validate: %v", err)
	}
	envoyValidateTypedConfigs(t, b.ProtoReflect(), "bootstrap")

	dev, err := config.Load(examples.Development, ".")
	if err != nil {
		t.Fatal(err)
	}
	apps := map[string]bool{}
	for i := range dev.Applications {
		apps[dev.Applications[i].ID()] = true
	}
	clusters := map[string]bool{}
	for _, c := range b.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = len(c.GetLoadAssignment().GetEndpoints()) > 0
	}

	hcms := 0
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if f.GetTypedConfig().MessageIs(&hcm) {
					if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
						t.Fatal(err)
					}
					envoyCheckHTTPConnectionManager(t, l.GetName(), &hcm, clusters, apps)
					hcms++
				}
			}
		}
	}
	if hcms == 0 {
		t.Fatal("envoy-http.yaml has no HTTP connection manager")
	}
}

func envoyCheckHTTPConnectionManager(t *testing.T, listener string, hcm *hcmv3.HttpConnectionManager, clusters, apps map[string]bool) {
	// The settings vakt's identity guarantees lean on, as in envoy.yaml: one
	// path for vakt and the upstream, no x_vakt_* header names.
	if hcm.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction() != corev3.HttpProtocolOptions_REJECT_REQUEST {
		t.Errorf("%s: headers_with_underscores_action must be REJECT_REQUEST", listener)
	}
	if !hcm.GetNormalizePath().GetValue() || !hcm.GetMergeSlashes() ||
		hcm.GetPathWithEscapedSlashesAction() != hcmv3.HttpConnectionManager_REJECT_REQUEST {
		t.Errorf("%s: paths: normalize_path %v, merge_slashes %v, path_with_escaped_slashes_action %v", listener,
			hcm.GetNormalizePath(), hcm.GetMergeSlashes(), hcm.GetPathWithEscapedSlashesAction())
	}

	// The filters, in order: the removal of a client's x-vakt-* headers,
	// then ext_authz, the router last.
	extAuthzAt, extAuthzName := -1, ""
	var filter extauthzv3.ExtAuthz
	var strippers []int
	var hms []*headermutationv3.HeaderMutation
	filters := hcm.GetHttpFilters()
	for i, f := range filters {
		var hm headermutationv3.HeaderMutation
		switch {
		case f.GetTypedConfig().MessageIs(&filter):
			if extAuthzAt >= 0 {
				t.Fatalf("%s: two ext_authz filters", listener)
			}
			if err := f.GetTypedConfig().UnmarshalTo(&filter); err != nil {
				t.Fatal(err)
			}
			extAuthzAt, extAuthzName = i, f.GetName()
		case f.GetTypedConfig().MessageIs(&hm):
			if err := f.GetTypedConfig().UnmarshalTo(&hm); err != nil {
				t.Fatal(err)
			}
			strippers = append(strippers, i)
			hms = append(hms, &hm)
		}
	}
	if extAuthzAt < 0 {
		t.Fatalf("%s: no ext_authz filter", listener)
	}
	if last := filters[len(filters)-1]; last.GetName() != "envoy.filters.http.router" {
		t.Errorf("%s: the last filter is %s, not the router", listener, last.GetName())
	}
	// Dots and underscores too: PHP reads x.vakt.subject as X-Vakt-Subject.
	for _, h := range slices.Concat(envoyHTTPIdentityHeaders, []string{"x-vakt-pid", "X-Vakt-Subject", "x.vakt.subject", "x-vakt.client-id", "x_vakt_scope"}) {
		removed := false
		for i, hm := range hms {
			removed = removed || (strippers[i] < extAuthzAt && envoyRemovesHeader(t, hm, h))
		}
		if !removed {
			t.Errorf("%s: no header_mutation filter before ext_authz removes a client's %s", listener, h)
		}
	}

	// ext_authz: over HTTP, failing closed with 503.
	svc := filter.GetHttpService()
	if svc == nil {
		t.Fatalf("%s: ext_authz has no http_service", listener)
	}
	if filter.GetFailureModeAllow() || filter.GetStatusOnError().GetCode() != 503 {
		t.Errorf("%s: ext_authz must fail closed with 503: failure_mode_allow %v, status_on_error %v", listener, filter.GetFailureModeAllow(), filter.GetStatusOnError())
	}
	if !filter.GetValidateMutations() {
		t.Errorf("%s: ext_authz: validate_mutations must be true", listener)
	}
	if filter.GetClearRouteCache() {
		t.Errorf("%s: ext_authz: clear_route_cache would let vakt's answer pick another route", listener)
	}
	envoyCheckHTTPService(t, listener+": ext_authz", svc, clusters, apps)
	// What vakt is sent (the filter-level allowed_headers, or the
	// deprecated one in http_service; Envoy refuses both at once).
	//lint:ignore SA1019 the deprecated field is read to check what it sends, as Envoy still obeys it
	deprecatedAllowed := svc.GetAuthorizationRequest().GetAllowedHeaders()
	allowed := filter.GetAllowedHeaders()
	if allowed == nil {
		allowed = deprecatedAllowed
	}
	if filter.GetAllowedHeaders() != nil && deprecatedAllowed != nil {
		t.Errorf("%s: allowed_headers set twice, which Envoy refuses", listener)
	}
	for _, h := range []string{"authorization", "x-request-id", "traceparent", "x-b3-traceid"} {
		if !envoyListMatch(t, allowed, h) {
			t.Errorf("%s: allowed_headers does not send %s to vakt", listener, h)
		}
	}
	for _, h := range slices.Concat(envoyHTTPRequestHeaders, envoyHTTPIdentityHeaders) {
		if envoyListMatch(t, allowed, h) || envoyListMatch(t, deprecatedAllowed, h) {
			t.Errorf("%s: allowed_headers sends a client's %s to vakt", listener, h)
		}
	}
	for _, h := range svc.GetAuthorizationRequest().GetHeadersToAdd() {
		t.Errorf("%s: headers_to_add %s: the request vakt decides on is the client's", listener, h.GetKey())
	}

	// No route turns either filter off, or names its application in a way
	// HTTP mode ignores; a route with its own http_service names one too.
	perFilter := func(where string, cfgs map[string]*anypb.Any) {
		for name, cfg := range cfgs {
			var per extauthzv3.ExtAuthzPerRoute
			if cfg.MessageIs(&per) {
				if err := cfg.UnmarshalTo(&per); err != nil {
					t.Fatal(err)
				}
				cs := per.GetCheckSettings()
				switch {
				case name != extAuthzName:
					t.Errorf("%s: ExtAuthzPerRoute under %q, which names no ext_authz filter", where, name)
				case per.GetDisabled():
					t.Errorf("%s: ext_authz disabled", where)
				case len(cs.GetContextExtensions()) > 0:
					t.Errorf("%s: context_extensions, which ext_authz does not send over HTTP", where)
				case cs.GetGrpcService() != nil:
					t.Errorf("%s: a gRPC service, which vakt's HTTP face is not", where)
				case cs.GetHttpService() != nil:
					envoyCheckHTTPService(t, where, cs.GetHttpService(), clusters, apps)
				}
				continue
			}
			for _, i := range strippers {
				if name == filters[i].GetName() {
					t.Errorf("%s: overrides %s, which removes a client's x-vakt-* headers", where, name)
				}
			}
		}
	}
	rc := hcm.GetRouteConfig()
	if rc == nil {
		t.Fatalf("%s: no static route_config", listener)
	}
	perFilter(listener, rc.GetTypedPerFilterConfig())
	for _, vh := range rc.GetVirtualHosts() {
		perFilter(listener+": "+vh.GetName(), vh.GetTypedPerFilterConfig())
		for _, r := range vh.GetRoutes() {
			perFilter(listener+": "+vh.GetName()+": route "+r.GetMatch().String(), r.GetTypedPerFilterConfig())
		}
	}
}

// istioHeaderMatch matches Istio's header patterns: exact, "abc*" (prefix)
// and "*abc" (suffix).
func istioHeaderMatch(pattern, name string) bool {
	pattern, name = strings.ToLower(pattern), strings.ToLower(name)
	switch {
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(name, strings.TrimSuffix(pattern, "*"))
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(name, strings.TrimPrefix(pattern, "*"))
	}
	return pattern == name
}

func istioHeadersMatch(patterns []string, name string) bool {
	for _, p := range patterns {
		if istioHeaderMatch(p, name) {
			return true
		}
	}
	return false
}

// mesh-config-http.yaml's providers ask vakt's HTTP face, each about the
// application its pathPrefix names, failing closed; authorization-policy-
// http.yaml puts the provider in front of exactly that application; and
// envoyfilter-strip-identity-headers.yaml removes a client's x-vakt-*
// headers before ext_authz runs.
func TestIstioHTTPProvider(t *testing.T) {
	var mesh, grpcMesh meshv1alpha1.MeshConfig
	if err := protojson.Unmarshal(yamlToJSON(t, "istio/mesh-config-http.yaml"), &mesh); err != nil {
		t.Fatalf("mesh-config-http.yaml is not Istio MeshConfig: %v", err)
	}
	if err := protojson.Unmarshal(yamlToJSON(t, "istio/mesh-config.yaml"), &grpcMesh); err != nil {
		t.Fatal(err)
	}
	if mesh.GetPathNormalization().GetNormalization() != meshv1alpha1.MeshConfig_ProxyPathNormalization_MERGE_SLASHES {
		t.Errorf("pathNormalization %v, want MERGE_SLASHES", mesh.GetPathNormalization())
	}
	// The HTTP face is on the same Service as the gRPC provider's.
	service := ""
	for _, p := range grpcMesh.GetExtensionProviders() {
		if g := p.GetEnvoyExtAuthzGrpc(); g != nil {
			service = g.GetService()
		}
	}
	dev, err := config.Load(examples.Development, ".")
	if err != nil {
		t.Fatal(err)
	}
	apps := map[string]bool{}
	for i := range dev.Applications {
		apps[dev.Applications[i].ID()] = true
	}

	appOf := map[string]string{} // provider name → the application it names
	for _, p := range mesh.GetExtensionProviders() {
		h := p.GetEnvoyExtAuthzHttp()
		if h == nil {
			continue
		}
		name := p.GetName()
		if h.GetService() != service || h.GetPort() != 9191 {
			t.Errorf("provider %s: %s:%d, want vakt's listen.authz on %s:9191", name, h.GetService(), h.GetPort(), service)
		}
		if d := h.GetTimeout().AsDuration(); d <= 0 || d > time.Second {
			t.Errorf("provider %s: timeout %v, want a short one (0.5s)", name, d)
		}
		if h.GetFailOpen() || h.GetStatusOnError() != "503" {
			t.Errorf("provider %s must fail closed with 503: failOpen %v, statusOnError %q", name, h.GetFailOpen(), h.GetStatusOnError())
		}
		if h.GetClearRouteCache() {
			t.Errorf("provider %s: clearRouteCache would let vakt's answer pick another route", name)
		}
		id, ok := strings.CutPrefix(h.GetPathPrefix(), server.AuthzPathPrefix+"/")
		if _, err := authz.ParseAppID(id); !ok || err != nil || strings.ContainsAny(id, "/?") || !apps[id] {
			t.Errorf("provider %s: pathPrefix %q, want %s/<an application id the development configuration registers>", name, h.GetPathPrefix(), server.AuthzPathPrefix)
		}
		appOf[name] = id
		//lint:ignore SA1019 the deprecated field is read to check that it is unset, as Istio still obeys it
		if include := h.GetIncludeHeadersInCheck(); len(include) > 0 || len(h.GetIncludeAdditionalHeadersInCheck()) > 0 {
			t.Errorf("provider %s: includeHeadersInCheck %v, includeAdditionalHeadersInCheck %v: the request vakt decides on is the client's, as sent", name, include, h.GetIncludeAdditionalHeadersInCheck())
		}
		for _, hd := range []string{"authorization", "x-request-id", "traceparent"} {
			if !istioHeadersMatch(h.GetIncludeRequestHeadersInCheck(), hd) {
				t.Errorf("provider %s: includeRequestHeadersInCheck does not send %s", name, hd)
			}
		}
		for _, hd := range slices.Concat(envoyHTTPRequestHeaders, envoyHTTPIdentityHeaders) {
			if istioHeadersMatch(h.GetIncludeRequestHeadersInCheck(), hd) {
				t.Errorf("provider %s: includeRequestHeadersInCheck sends a client's %s to vakt", name, hd)
			}
		}
		for _, hd := range envoyHTTPIdentityHeaders {
			if !istioHeadersMatch(h.GetHeadersToUpstreamOnAllow(), hd) {
				t.Errorf("provider %s: headersToUpstreamOnAllow does not copy %s", name, hd)
			}
		}
		for _, pat := range h.GetHeadersToUpstreamOnAllow() {
			if !strings.HasPrefix(strings.ToLower(pat), authz.IdentityHeaderPrefix) {
				t.Errorf("provider %s: headersToUpstreamOnAllow %q: vakt's answer may set its own headers upstream, and nothing else", name, pat)
			}
		}
		for _, hd := range []string{"www-authenticate", "content-type"} {
			if !istioHeadersMatch(h.GetHeadersToDownstreamOnDeny(), hd) {
				t.Errorf("provider %s: headersToDownstreamOnDeny does not pass %s to the client", name, hd)
			}
		}
	}
	if len(appOf) == 0 {
		t.Fatal("mesh-config-http.yaml has no envoyExtAuthzHttp provider")
	}

	// The policy puts a provider in front of the application it names.
	var doc struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(yamlToJSON(t, "istio/authorization-policy-http.yaml"), &doc); err != nil {
		t.Fatal(err)
	}
	var policy securityv1beta1.AuthorizationPolicy
	if err := protojson.Unmarshal(doc.Spec, &policy); err != nil || doc.Kind != "AuthorizationPolicy" {
		t.Fatalf("authorization-policy-http.yaml is not an AuthorizationPolicy: %v", err)
	}
	id, ok := appOf[policy.GetProvider().GetName()]
	if policy.GetAction() != securityv1beta1.AuthorizationPolicy_CUSTOM || !ok {
		t.Fatalf("authorization-policy-http.yaml must be CUSTOM with an HTTP provider of mesh-config-http.yaml: %v", &policy)
	}
	if selected := dev.Cluster + ":" + doc.Metadata.Namespace + ":" + policy.GetSelector().GetMatchLabels()["app"]; selected != id {
		t.Errorf("authorization-policy-http.yaml selects %s, but its provider %s asks vakt about %s", selected, policy.GetProvider().GetName(), id)
	}

	// The EnvoyFilter inserts, before ext_authz in sidecars and gateways, a
	// header_mutation filter that removes a client's x-vakt-* headers.
	var ef struct {
		Kind string          `json:"kind"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(yamlToJSON(t, "istio/envoyfilter-strip-identity-headers.yaml"), &ef); err != nil {
		t.Fatal(err)
	}
	var filter networkingv1alpha3.EnvoyFilter
	if err := protojson.Unmarshal(ef.Spec, &filter); err != nil || ef.Kind != "EnvoyFilter" {
		t.Fatalf("envoyfilter-strip-identity-headers.yaml is not an EnvoyFilter: %v", err)
	}
	contexts := map[networkingv1alpha3.EnvoyFilter_PatchContext]bool{}
	for i, cp := range filter.GetConfigPatches() {
		sub := cp.GetMatch().GetListener().GetFilterChain().GetFilter()
		if cp.GetApplyTo() != networkingv1alpha3.EnvoyFilter_HTTP_FILTER || cp.GetPatch().GetOperation() != networkingv1alpha3.EnvoyFilter_Patch_INSERT_BEFORE ||
			sub.GetName() != "envoy.filters.network.http_connection_manager" || sub.GetSubFilter().GetName() != "envoy.filters.http.ext_authz" {
			t.Errorf("patch %d must insert an HTTP filter before envoy.filters.http.ext_authz: %v", i, cp)
			continue
		}
		tc, err := protojson.Marshal(cp.GetPatch().GetValue().GetFields()["typed_config"].GetStructValue())
		if err != nil {
			t.Fatal(err)
		}
		var a anypb.Any
		if err := protojson.Unmarshal(tc, &a); err != nil {
			t.Fatalf("patch %d: typed_config: %v", i, err)
		}
		var hm headermutationv3.HeaderMutation
		if err := a.UnmarshalTo(&hm); err != nil {
			t.Fatalf("patch %d: not a header_mutation filter: %v", i, err)
		}
		if err := hm.ValidateAll(); err != nil {
			t.Errorf("patch %d does not validate: %v", i, err)
		}
		for _, h := range slices.Concat(envoyHTTPIdentityHeaders, []string{"x-vakt-pid", "x.vakt.subject", "x-vakt.scope"}) {
			if !envoyRemovesHeader(t, &hm, h) {
				t.Errorf("patch %d does not remove a client's %s", i, h)
			}
		}
		contexts[cp.GetMatch().GetContext()] = true
	}
	if !contexts[networkingv1alpha3.EnvoyFilter_SIDECAR_INBOUND] || !contexts[networkingv1alpha3.EnvoyFilter_GATEWAY] {
		t.Errorf("the EnvoyFilter must apply to sidecars (inbound) and gateways: %v", contexts)
	}
}
