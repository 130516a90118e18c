// Package deploy_test checks the deployment configurations against the
// schemas of the software that reads them.
package deploy_test

import (
	"encoding/json"
	"os"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/goccy/go-yaml"
	"google.golang.org/protobuf/encoding/protojson"

	// Register every typed_config type the bootstrap names.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	securityv1beta1 "istio.io/api/security/v1beta1"

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
	// The settings vakt's identity guarantees lean on (README, Security):
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
