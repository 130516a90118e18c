package config_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vakt-dev/vakt/config"
)

// grantsConfig grants each name to the namespaces of one way of selecting
// them, so that a resource claiming the name tells whether the way
// selects its namespace.
const grantsConfig = base + `applications:
  - name: file-app
    namespace: team-f
    hosts: [file.example.com]
    resources: ["https://api.example.com/file/"]
kubernetes:
  enabled: true
  grants:
    - namespaces: [team-b]
      hosts: ["*.team-b.example.com", app-b.example.com]
      resources: ["https://api.example.com/team-b/", "https://API.example.com:443/b", "urn:team-b:", "urn:b", "https://api.example.com/Case"]
    - namespaces: [team-x, team-y]
      hosts: [shared.example.com, file.example.com]
      resources: ["https://api.example.com/shared", "https://api.example.com/file/"]
    - namespaceSelector:
        matchLabels: {tier: web}
      hosts: [web.example.com]
    - namespaceSelector:
        matchLabels: {tier: web, example.com/team: blue}
      hosts: [blue-web.example.com]
    - namespaceSelector:
        matchExpressions: [{key: env, operator: In, values: [dev, test]}]
      hosts: [dev.example.com]
    - namespaceSelector:
        matchExpressions: [{key: env, operator: NotIn, values: [prod]}]
      hosts: [notprod.example.com]
    - namespaceSelector:
        matchExpressions: [{key: pci, operator: Exists}]
      hosts: [pci.example.com]
    - namespaceSelector:
        matchExpressions: [{key: pci, operator: DoesNotExist}]
      hosts: [nopci.example.com]
    - namespaceSelector:
        matchLabels: {tier: web}
        matchExpressions: [{key: env, operator: In, values: [prod]}]
      hosts: [prod-web.example.com]
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: team-m}
      hosts: [m.example.com]
    - namespaces: [team-k]
      namespaceSelector: {matchLabels: {keys: "yes"}}
      jwksUris: ["https://keys.example.com/team-k/", "https://idp.example.com/jwks"]
`

func loadGrants(t *testing.T) *config.Config {
	t.Helper()
	c, err := config.Load([]byte(grantsConfig), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A resource lists a host, a resource URI or a jwksUri only where a grant
// of its namespace, by name or by labels, grants it; without any, it
// needs none.
func TestGrants(t *testing.T) {
	c := loadGrants(t)
	x := c.NewResourceIndex()
	const notGranted = "is not granted to namespace"
	web := map[string]string{"tier": "web"}
	for _, tc := range []struct {
		desc   string
		ns     string
		labels map[string]string
		spec   string
		want   string // a refusal's words; "" for accepted
	}{
		{"no claim needs no grant", "team-z", nil, `{"routes":[{"pathPrefix":"/","public":true}]}`, ""},
		{"granted by name", "team-b", nil, `hosts: [app-b.example.com]`, ""},
		{"another namespace's name", "team-c", nil, `hosts: [app-b.example.com]`, `line 1: spec.hosts[0]: "app-b.example.com" is not granted to namespace team-c: ask the cluster administrator for a kubernetes.grants entry`},
		{"one grant, several namespaces", "team-y", nil, `hosts: [shared.example.com]`, ""},
		{"labels are not names", "team-b", map[string]string{"team-b": ""}, `hosts: [web.example.com]`, notGranted},

		// Wildcards: one label or more before the suffix, never the
		// suffix itself, nor a host that merely ends in it.
		{"wildcard, one label", "team-b", nil, `hosts: [a.team-b.example.com]`, ""},
		{"wildcard, two labels", "team-b", nil, `hosts: [a.b.team-b.example.com]`, ""},
		{"wildcard, not the suffix", "team-b", nil, `hosts: [team-b.example.com]`, `"team-b.example.com" is not granted`},
		{"wildcard, not a longer label", "team-b", nil, `hosts: [xteam-b.example.com]`, notGranted},
		{"wildcard, other namespace", "team-c", nil, `hosts: [a.team-b.example.com]`, notGranted},
		{"host upper case", "team-b", nil, `hosts: [App-B.example.com]`, "is not a lowercase host name"},

		// matchLabels, and every operator.
		{"matchLabels", "team-w", web, `hosts: [web.example.com]`, ""},
		{"matchLabels, other value", "team-w", map[string]string{"tier": "db"}, `hosts: [web.example.com]`, notGranted},
		{"matchLabels, no labels", "team-w", nil, `hosts: [web.example.com]`, notGranted},
		{"matchLabels, every pair", "team-w", map[string]string{"tier": "web", "example.com/team": "blue"}, `hosts: [blue-web.example.com]`, ""},
		{"matchLabels, one pair of two", "team-w", web, `hosts: [blue-web.example.com]`, notGranted},
		{"In", "team-d", map[string]string{"env": "test"}, `hosts: [dev.example.com]`, ""},
		{"In, other value", "team-d", map[string]string{"env": "prod"}, `hosts: [dev.example.com]`, notGranted},
		{"In, label absent", "team-d", nil, `hosts: [dev.example.com]`, notGranted},
		{"NotIn", "team-d", map[string]string{"env": "dev"}, `hosts: [notprod.example.com]`, ""},
		{"NotIn, label absent", "team-d", nil, `hosts: [notprod.example.com]`, ""},
		{"NotIn, a listed value", "team-d", map[string]string{"env": "prod"}, `hosts: [notprod.example.com]`, notGranted},
		{"Exists", "team-p", map[string]string{"pci": ""}, `hosts: [pci.example.com]`, ""},
		{"Exists, absent", "team-p", nil, `hosts: [pci.example.com]`, notGranted},
		{"DoesNotExist", "team-p", map[string]string{"env": "x"}, `hosts: [nopci.example.com]`, ""},
		{"DoesNotExist, present", "team-p", map[string]string{"pci": "yes"}, `hosts: [nopci.example.com]`, notGranted},
		{"labels and expressions", "team-w", map[string]string{"tier": "web", "env": "prod"}, `hosts: [prod-web.example.com]`, ""},
		{"labels but not expressions", "team-w", map[string]string{"tier": "web", "env": "dev"}, `hosts: [prod-web.example.com]`, notGranted},
		{"the name label, implicit", "team-m", nil, `hosts: [m.example.com]`, ""},
		{"the name label is the name's", "team-n", map[string]string{"kubernetes.io/metadata.name": "team-m"}, `hosts: [m.example.com]`, notGranted},

		// Resource URIs: prefixes in canonical form, at a path segment
		// boundary.
		{"prefix with /", "team-b", nil, `resources: ["https://api.example.com/team-b/v1"]`, ""},
		{"prefix with /, itself", "team-b", nil, `resources: ["https://api.example.com/team-b/"]`, ""},
		{"prefix with /, not its parent", "team-b", nil, `resources: ["https://api.example.com/team-b"]`, `line 1: spec.resources[0]: "https://api.example.com/team-b" is not granted to namespace team-b`},
		{"prefix with /, canonical spelling", "team-b", nil, `resources: ["HTTPS://Api.Example.com:443/team-b/x"]`, ""},
		{"prefix with /, another port", "team-b", nil, `resources: ["https://api.example.com:8443/team-b/x"]`, notGranted},
		{"prefix with /, http", "team-b", nil, `resources: ["http://api.example.com/team-b/x"]`, notGranted},
		{"prefix without /, itself", "team-b", nil, `resources: ["https://api.example.com/b"]`, ""},
		{"prefix without /, below", "team-b", nil, `resources: ["https://api.example.com/b/v1"]`, ""},
		{"prefix without /, a query", "team-b", nil, `resources: ["https://api.example.com/b?v=1"]`, ""},
		{"prefix without /, not a longer segment", "team-b", nil, `resources: ["https://api.example.com/bee"]`, notGranted},
		{"prefix without /, not encoded", "team-b", nil, `resources: ["https://api.example.com/b%2Fx"]`, notGranted},
		{"path case matters", "team-b", nil, `resources: ["https://api.example.com/case"]`, notGranted},
		{"path case as granted", "team-b", nil, `resources: ["https://api.example.com/Case/x"]`, ""},
		{"dot segments match no prefix", "team-b", nil, `resources: ["https://api.example.com/team-b/../team-a/x"]`, `matches no granted prefix`},
		{"encoded dot segments too", "team-b", nil, `resources: ["https://api.example.com/team-b/%2e%2e/team-a"]`, `matches no granted prefix`},
		{"backslash dot segments too", "team-b", nil, `resources: ["https://api.example.com/team-b/..\\team-a"]`, `matches no granted prefix`},
		{"user info names no resource", "team-b", nil, `resources: ["https://u@api.example.com/team-b/x"]`, "has user info"},
		{"opaque prefix with :", "team-b", nil, `resources: ["urn:team-b:api"]`, ""},
		{"opaque prefix without :, below", "team-b", nil, `resources: ["urn:b:api"]`, ""},
		{"opaque prefix without :, longer", "team-b", nil, `resources: ["urn:bee"]`, notGranted},
		{"another namespace's prefix", "team-c", nil, `resources: ["https://api.example.com/team-b/x"]`, notGranted},
		{"a granted host grants its URIs", "team-b", nil, `resources: ["https://x.team-b.example.com:8443/any/path", "http://APP-B.example.com"]`, ""},
		{"a host granted to another", "team-c", nil, `resources: ["https://app-b.example.com/"]`, notGranted},

		// jwksUri: fetched only where granted.
		{"jwksUri granted by name", "team-k", nil, `jwksUri: https://keys.example.com/team-k/jwks.json`, ""},
		{"jwksUri granted by labels", "team-l", map[string]string{"keys": "yes"}, `jwksUri: https://idp.example.com/jwks`, ""},
		{"jwksUri, segment boundary", "team-k", nil, `jwksUri: https://idp.example.com/jwks2`, `spec.jwksUri: "https://idp.example.com/jwks2" is not allowed for namespace team-k`},
		{"jwksUri not granted", "team-b", nil, `jwksUri: https://keys.example.com/team-k/jwks.json`, `line 1: spec.jwksUri: "https://keys.example.com/team-k/jwks.json" is not allowed for namespace team-b: vakt fetches no URL a team chose unless kubernetes.grants allows it (jwksUris); the keys come from secretName, which vakt makes them in, or inline jwks`},
		{"jwksUri in the cluster", "team-b", nil, `jwksUri: https://kubernetes.default.svc/openid/v1/jwks`, "is not allowed for namespace team-b"},
		{"jwksUri dot segments", "team-k", nil, `jwksUri: https://keys.example.com/team-k/../admin/jwks`, "is not allowed for namespace team-k"},
		{"jwksUri over http, still", "team-k", nil, `jwksUri: http://keys.example.com/team-k/jwks`, `spec.jwksUri: "http://keys.example.com/team-k/jwks" is not https`},

		// Every refusal at once, on its line.
		{"every refusal", "team-c", nil, "hosts:\n  - ok.team-c.example.com\nresources:\n  - https://api.example.com/team-b/x\njwksUri: https://keys.example.com/team-k/\n",
			"line 2: spec.hosts[0]: \"ok.team-c.example.com\" is not granted to namespace team-c: ask the cluster administrator for a kubernetes.grants entry\n" +
				"line 4: spec.resources[0]: \"https://api.example.com/team-b/x\" is not granted to namespace team-c: ask the cluster administrator for a kubernetes.grants entry\n" +
				"line 5: spec.jwksUri:"},
	} {
		a, _, err := x.CheckApplication("app", tc.ns, tc.labels, []byte(tc.spec))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.desc, err)
		case tc.want == "" && a == nil:
			t.Errorf("%s: no application", tc.desc)
		case tc.want != "" && err == nil:
			t.Errorf("%s: accepted, want %q", tc.desc, tc.want)
		case tc.want != "" && !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v, want %q", tc.desc, err, tc.want)
		case tc.want != "":
			var errs config.Errors
			if !errors.As(err, &errs) || errors.As(err, new(*config.ConflictError)) {
				t.Errorf("%s: %T, want config.Errors", tc.desc, err)
			}
		}
	}
	// Jwkers are checked in their namespace too; they claim no name.
	if _, _, err := x.CheckJwker("app", "team-w", web, []byte(`{"secretName":"s"}`)); err != nil {
		t.Error(err)
	}
	// CheckApplication took nothing: a check is not a claim.
	if _, _, err := x.AcceptApplication("app", "team-b", nil, []byte(`{"hosts":["app-b.example.com"]}`)); err != nil {
		t.Errorf("after the checks: %v", err)
	}
}

// What the operator reads: grants are validated field by field, with
// lines.
func TestGrantsRejected(t *testing.T) {
	k := base + "kubernetes:\n  enabled: true\n  grants:\n"
	for _, tc := range []struct {
		desc, yaml string
		want       []string
	}{
		{"no namespace", k + "    - hosts: [a.example]\n", []string{"line 6: kubernetes.grants[0]: give namespaces or namespaceSelector (or both)"}},
		{"nothing granted", k + "    - namespaces: [a]\n", []string{"line 6: kubernetes.grants[0]: grants nothing: give hosts, resources or jwksUris"}},
		{"namespace name", k + "    - namespaces: [Team_A]\n      hosts: [a.example]\n", []string{`line 6: kubernetes.grants[0].namespaces[0]: "Team_A" is not a namespace name`}},
		{"unknown field", k + "    - namespaces: [a]\n      host: [a.example]\n", []string{`line 7: unknown field "host"`}},
		{"* alone", k + "    - namespaces: [a]\n      hosts:\n        - '*'\n", []string{`line 8: kubernetes.grants[0].hosts[0]: "*" alone is not a host`}},
		{"wildcard inside", k + "    - namespaces: [a]\n      hosts: [a.example, 'a.*.example']\n", []string{`line 7: kubernetes.grants[0].hosts[1]: "a.*.example": a wildcard is only a whole first label`}},
		{"wildcard in a label", k + "    - namespaces: [a]\n      hosts: ['*a.example']\n", []string{`kubernetes.grants[0].hosts[0]: "*a.example": a wildcard is only a whole first label`}},
		{"two wildcards", k + "    - namespaces: [a]\n      hosts: ['*.*.example']\n", []string{`a wildcard is only a whole first label`}},
		{"wildcard without suffix", k + "    - namespaces: [a]\n      hosts: ['*.']\n", []string{`kubernetes.grants[0].hosts[0]: "*." is not *. and a host name without port`}},
		{"host upper case", k + "    - namespaces: [a]\n      hosts: ['*.Example.com']\n", []string{`"*.Example.com" is not lowercase`}},
		{"host with port", k + "    - namespaces: [a]\n      hosts: [a.example:443]\n", []string{`"a.example:443" is not a lowercase host name without port, nor *. and one`}},
		{"resource relative", k + "    - namespaces: [a]\n      resources: [/api]\n", []string{`line 7: kubernetes.grants[0].resources[0]: "/api" is not an absolute URI without a fragment`}},
		{"resource fragment", k + "    - namespaces: [a]\n      resources: ['https://a.example/#x']\n", []string{`is not an absolute URI without a fragment`}},
		{"resource query", k + "    - namespaces: [a]\n      resources: ['https://a.example/?x']\n", []string{`"https://a.example/?x" has a query; a prefix has none`}},
		{"resource user", k + "    - namespaces: [a]\n      resources: ['https://u@a.example/']\n", []string{`has user info`}},
		{"resource no host", k + "    - namespaces: [a]\n      resources: ['https:///x']\n", []string{`is an http(s) URI without a host`}},
		{"resource dot segment", k + "    - namespaces: [a]\n      resources: ['https://a.example/x/../y']\n", []string{`has a "." or ".." path segment`}},
		{"jwksUri http", k + "    - namespaces: [a]\n      jwksUris: ['http://keys.example/']\n", []string{`line 7: kubernetes.grants[0].jwksUris[0]: "http://keys.example/" is not an https URL: vakt fetches keys over https only`}},
		{"jwksUri urn", k + "    - namespaces: [a]\n      jwksUris: ['urn:x']\n", []string{`is not an https URL`}},
		{"matchLabels key", k + "    - namespaceSelector:\n        matchLabels:\n          ok: x\n          -bad: x\n      hosts: [a.example]\n", []string{`line 9: kubernetes.grants[0].namespaceSelector.matchLabels.'-bad': "-bad" is not a label key`}},
		{"matchLabels key prefix", k + "    - namespaceSelector:\n        matchLabels: {Example.com/x: y}\n      hosts: [a.example]\n", []string{`"Example.com/x" is not a label key: its prefix must be a lowercase DNS subdomain`}},
		{"matchLabels key too long", k + "    - namespaceSelector:\n        matchLabels: {" + strings.Repeat("a", 64) + ": y}\n      hosts: [a.example]\n", []string{`is not a label key`}},
		{"matchLabels value", k + "    - namespaceSelector:\n        matchLabels:\n          example.com/tier: 'we b'\n      hosts: [a.example]\n", []string{`line 8: kubernetes.grants[0].namespaceSelector.matchLabels.'example.com/tier': "we b" is not a label value`}},
		{"operator unknown", k + "    - namespaceSelector:\n        matchExpressions:\n          - {key: env, operator: in, values: [a]}\n      hosts: [a.example]\n", []string{`line 8: kubernetes.grants[0].namespaceSelector.matchExpressions[0].operator: "in" is not In, NotIn, Exists or DoesNotExist`}},
		{"operator missing", k + "    - namespaceSelector:\n        matchExpressions:\n          - key: env\n      hosts: [a.example]\n", []string{`kubernetes.grants[0].namespaceSelector.matchExpressions[0].operator: is required`}},
		{"key missing", k + "    - namespaceSelector:\n        matchExpressions:\n          - operator: Exists\n      hosts: [a.example]\n", []string{`line 8: kubernetes.grants[0].namespaceSelector.matchExpressions[0].key: is required`}},
		{"In without values", k + "    - namespaceSelector:\n        matchExpressions:\n          - {key: env, operator: In}\n      hosts: [a.example]\n", []string{`kubernetes.grants[0].namespaceSelector.matchExpressions[0].values: must be non-empty for operator In`}},
		{"NotIn without values", k + "    - namespaceSelector:\n        matchExpressions:\n          - {key: env, operator: NotIn, values: []}\n      hosts: [a.example]\n", []string{`must be non-empty for operator NotIn`}},
		{"Exists with values", k + "    - namespaceSelector:\n        matchExpressions:\n          - key: env\n            operator: Exists\n            values: [a]\n      hosts: [a.example]\n", []string{`line 10: kubernetes.grants[0].namespaceSelector.matchExpressions[0].values: must be empty for operator Exists`}},
		{"DoesNotExist with values", k + "    - namespaceSelector:\n        matchExpressions:\n          - {key: env, operator: DoesNotExist, values: [a]}\n      hosts: [a.example]\n", []string{`must be empty for operator DoesNotExist`}},
		{"value invalid", k + "    - namespaceSelector:\n        matchExpressions:\n          - key: env\n            operator: In\n            values: [ok, 'not ok']\n      hosts: [a.example]\n", []string{`line 10: kubernetes.grants[0].namespaceSelector.matchExpressions[0].values[1]: "not ok" is not a label value`}},
		{"every error, in order", k + "    - namespaces: [A]\n      hosts: ['*']\n      jwksUris: [http://x/]\n", []string{"line 6: kubernetes.grants[0].namespaces[0]", "line 7: kubernetes.grants[0].hosts[0]", "line 8: kubernetes.grants[0].jwksUris[0]"}},
	} {
		_, err := config.Load([]byte(tc.yaml), t.TempDir())
		if err == nil {
			t.Errorf("%s: accepted", tc.desc)
			continue
		}
		msg := err.Error()
		last := -1
		for _, w := range tc.want {
			i := strings.Index(msg, w)
			if i < 0 || i < last {
				t.Errorf("%s: %v, want %q (in order)", tc.desc, err, w)
			}
			last = i
		}
	}
}

func TestGrantsWarnings(t *testing.T) {
	for _, tc := range []struct {
		desc, yaml, want string
	}{
		{"grants but not enabled", base + "kubernetes:\n  grants: [{namespaces: [a], hosts: [a.example]}]\n", "kubernetes has settings but is not enabled: no resource is read"},
		{"every namespace", base + "kubernetes:\n  enabled: true\n  grants: [{namespaceSelector: {}, hosts: [a.example]}]\n", "kubernetes.grants[0].namespaceSelector is empty: it selects every namespace"},
		{"a namespace not watched", base + "kubernetes:\n  enabled: true\n  namespaces: [a]\n  grants: [{namespaces: [a, b], hosts: [a.example]}]\n", "kubernetes.grants[0].namespaces[1]: namespace b is not in kubernetes.namespaces"},
	} {
		c, err := config.Load([]byte(tc.yaml), t.TempDir())
		if err != nil {
			t.Errorf("%s: %v", tc.desc, err)
			continue
		}
		if !slices.ContainsFunc(c.Warnings, func(w string) bool { return strings.Contains(w, tc.want) }) {
			t.Errorf("%s: warnings %q, want %q", tc.desc, c.Warnings, tc.want)
		}
	}
	// namespaceSelector: {} selects every namespace, as in Kubernetes.
	c, err := config.Load([]byte(base+"kubernetes:\n  enabled: true\n  grants: [{namespaceSelector: {}, hosts: [a.example]}]\n"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.NewResourceIndex().CheckApplication("x", "any-ns", nil, []byte(`hosts: [a.example]`)); err != nil {
		t.Error(err)
	}
	if !c.Kubernetes.UsesNamespaceLabels() || loadGrants(t).Kubernetes.UsesNamespaceLabels() != true {
		t.Error("UsesNamespaceLabels: false with a selector")
	}
	if c, _ := config.Load([]byte(base+"kubernetes:\n  grants: [{namespaces: [a], hosts: [a.example]}]\n"), t.TempDir()); c == nil || c.Kubernetes.UsesNamespaceLabels() {
		t.Error("UsesNamespaceLabels: true without a selector")
	}
}

func TestLabelSelectorMatches(t *testing.T) {
	l := map[string]string{"env": "dev", "tier": "web", "empty": ""}
	for _, tc := range []struct {
		sel  *config.LabelSelector
		want bool
	}{
		{nil, false},
		{&config.LabelSelector{}, true},
		{&config.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}, true},
		{&config.LabelSelector{MatchLabels: map[string]string{"env": "dev", "tier": "db"}}, false},
		{&config.LabelSelector{MatchLabels: map[string]string{"empty": ""}}, true},
		{&config.LabelSelector{MatchLabels: map[string]string{"absent": ""}}, false},
		{&config.LabelSelector{MatchExpressions: []config.LabelSelectorRequirement{{Key: "env", Operator: "In", Values: []string{"prod", "dev"}}}}, true},
		{&config.LabelSelector{MatchExpressions: []config.LabelSelectorRequirement{{Key: "absent", Operator: "NotIn", Values: []string{"x"}}}}, true},
		{&config.LabelSelector{MatchExpressions: []config.LabelSelectorRequirement{{Key: "env", Operator: "NotIn", Values: []string{"dev"}}}}, false},
		{&config.LabelSelector{MatchExpressions: []config.LabelSelectorRequirement{{Key: "empty", Operator: "Exists"}}}, true},
		{&config.LabelSelector{MatchExpressions: []config.LabelSelectorRequirement{{Key: "empty", Operator: "DoesNotExist"}}}, false},
		{&config.LabelSelector{MatchExpressions: []config.LabelSelectorRequirement{{Key: "env", Operator: "Bogus"}}}, false},
		{&config.LabelSelector{MatchLabels: map[string]string{"tier": "web"}, MatchExpressions: []config.LabelSelectorRequirement{{Key: "env", Operator: "In", Values: []string{"prod"}}}}, false},
	} {
		if got := tc.sel.Matches(l); got != tc.want {
			t.Errorf("%+v: %v, want %v", tc.sel, got, tc.want)
		}
	}
}

// Claims go in the order of the calls, after the file's; a clash is a
// ConflictError naming the owner, and leaves no claim behind.
func TestClaim(t *testing.T) {
	c := loadGrants(t)
	type step struct {
		ns, name, spec string
		// want: "" accepted; else the ConflictError's text, and its first
		// owner and whether that is the file's.
		want      string
		owner     string
		ownerFile bool
	}
	for _, tc := range []struct {
		desc  string
		steps []step
	}{
		{"the file's application wins", []step{
			{"team-x", "x", "hosts: [file.example.com]\n", `line 1: spec.hosts[0]: "file.example.com" already belongs to dev-gcp:team-f:file-app (in vakt's configuration file)`, "dev-gcp:team-f:file-app", true},
			{"team-x", "x", "resources:\n  - https://api.example.com/file/\n", `line 2: spec.resources[0]: "https://api.example.com/file/" already belongs to dev-gcp:team-f:file-app (in vakt's configuration file)`, "dev-gcp:team-f:file-app", true},
			{"team-f", "file-app", "{}", `spec: application id dev-gcp:team-f:file-app is already used by dev-gcp:team-f:file-app (in vakt's configuration file)`, "dev-gcp:team-f:file-app", true},
		}},
		{"the first resource wins", []step{
			{"team-x", "first", "hosts: [shared.example.com]\n", "", "", false},
			{"team-y", "second", "hosts: [shared.example.com]\n", `line 1: spec.hosts[0]: "shared.example.com" already belongs to dev-gcp:team-x:first`, "dev-gcp:team-x:first", false},
			{"team-x", "first", "{}", "spec: application id dev-gcp:team-x:first is already used by dev-gcp:team-x:first", "dev-gcp:team-x:first", false},
		}},
		{"canonical spellings are one resource URI", []step{
			{"team-b", "first", "resources: [\"https://api.example.com/b\"]\n", "", "", false},
			{"team-b", "second", "resources: [\"HTTPS://API.EXAMPLE.COM:443/b\"]\n", `line 1: spec.resources[0]: "HTTPS://API.EXAMPLE.COM:443/b" already belongs to dev-gcp:team-b:first`, "dev-gcp:team-b:first", false},
			{"team-b", "third", "resources: [\"https://api.example.com/b/\"]\n", "", "", false}, // another URI
		}},
		{"a resource URI on another's host", []step{
			{"team-b", "first", "hosts: [a.team-b.example.com]\n", "", "", false},
			{"team-b", "second", "resources: [\"https://a.team-b.example.com/x\"]\n", `spec.resources[0]: "https://a.team-b.example.com/x" is on the host of dev-gcp:team-b:first`, "dev-gcp:team-b:first", false},
		}},
		{"a host of another's resource URI", []step{
			{"team-b", "first", "resources: [\"https://a.team-b.example.com/x\"]\n", "", "", false},
			{"team-b", "second", "hosts: [a.team-b.example.com]\n", `spec.hosts[0]: "a.team-b.example.com" is the host of a resource URI of dev-gcp:team-b:first`, "dev-gcp:team-b:first", false},
			// Two applications' resource URIs may share a host.
			{"team-b", "third", "resources: [\"https://a.team-b.example.com/y\"]\n", "", "", false},
		}},
		{"an application's own host and resource URI", []step{
			{"team-b", "one", "hosts: [a.team-b.example.com]\nresources: [\"https://a.team-b.example.com/x\"]\n", "", "", false},
		}},
		{"a conflict leaves no claim behind", []step{
			{"team-x", "first", "hosts: [shared.example.com]\n", "", "", false},
			// second clashes on its host: it takes none of the rest.
			{"team-y", "second", "hosts: [file.example.com, shared.example.com]\nresources: [\"https://api.example.com/shared\"]\n",
				"line 1: spec.hosts[0]: \"file.example.com\" already belongs to dev-gcp:team-f:file-app (in vakt's configuration file)\nline 1: spec.hosts[1]: \"shared.example.com\" already belongs to dev-gcp:team-x:first", "dev-gcp:team-f:file-app", true},
			{"team-y", "third", "resources: [\"https://api.example.com/shared\"]\n", "", "", false},
			{"team-y", "second", "{}", "", "", false}, // its id is free too
		}},
		{"a refused resource leaves no claim behind", []step{
			{"team-x", "first", "hosts: [shared.example.com, not-granted.example.com]\nresources: [\"https://api.example.com/shared\"]\n", "is not granted", "", false},
			{"team-y", "second", "hosts: [shared.example.com]\nresources: [\"https://api.example.com/shared\"]\n", "", "", false},
			{"team-x", "first", "{}", "", "", false},
		}},
	} {
		x := c.NewResourceIndex()
		for i, s := range tc.steps {
			a, _, err := x.AcceptApplication(s.name, s.ns, nil, []byte(s.spec))
			at := fmt.Sprintf("%s, step %d (%s/%s)", tc.desc, i, s.ns, s.name)
			var conflict *config.ConflictError
			switch {
			case s.want == "" && err != nil:
				t.Errorf("%s: %v", at, err)
			case s.want == "" && a == nil:
				t.Errorf("%s: no application", at)
			case s.want != "" && err == nil:
				t.Errorf("%s: accepted, want %q", at, s.want)
			case s.want != "" && !strings.Contains(err.Error(), s.want):
				t.Errorf("%s: %v, want %q", at, err, s.want)
			case s.owner != "" && !errors.As(err, &conflict):
				t.Errorf("%s: %T, want a *config.ConflictError", at, err)
			case s.owner != "" && (conflict.Application != "dev-gcp:"+s.ns+":"+s.name || conflict.Clashes[0].Owner != s.owner || conflict.Clashes[0].OwnerInFile != s.ownerFile):
				t.Errorf("%s: %+v, want owner %s (file %v)", at, conflict, s.owner, s.ownerFile)
			case s.owner == "" && s.want != "" && errors.As(err, &conflict):
				t.Errorf("%s: a conflict, want a refusal", at)
			}
		}
	}
}

// A ConflictError says what clashed, where, and with whom.
func TestConflictError(t *testing.T) {
	c := loadGrants(t)
	x := c.NewResourceIndex()
	if _, _, err := x.AcceptApplication("first", "team-x", nil, []byte(`hosts: [shared.example.com]`)); err != nil {
		t.Fatal(err)
	}
	a, _, err := x.CheckApplication("file-app", "team-f", nil, []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	var conflict *config.ConflictError
	if err := x.Claim(a); !errors.As(err, &conflict) || len(conflict.Clashes) != 1 {
		t.Fatalf("%v", err)
	}
	b, _, err := x.CheckApplication("second", "team-y", nil, []byte("resources:\n  - https://api.example.com/file/\nhosts:\n  - file.example.com\n  - shared.example.com\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = x.Claim(b)
	if !errors.As(err, &conflict) {
		t.Fatalf("%T %v", err, err)
	}
	want := []config.Clash{
		{Kind: config.ClaimHost, Value: "file.example.com", Path: "spec.hosts[0]", Line: 4, Owner: "dev-gcp:team-f:file-app", OwnerInFile: true},
		{Kind: config.ClaimHost, Value: "shared.example.com", Path: "spec.hosts[1]", Line: 5, Owner: "dev-gcp:team-x:first"},
		{Kind: config.ClaimResource, Value: "https://api.example.com/file/", Path: "spec.resources[0]", Line: 2, Owner: "dev-gcp:team-f:file-app", OwnerInFile: true},
	}
	if len(conflict.Clashes) != len(want) {
		t.Fatalf("%v", err)
	}
	for i, w := range want {
		got := conflict.Clashes[i]
		if got.Kind != w.Kind || got.Value != w.Value || got.Path != w.Path || got.Line != w.Line || got.Owner != w.Owner || got.OwnerInFile != w.OwnerInFile {
			t.Errorf("clash %d: %+v, want %+v", i, got, w)
		}
	}
	if owners := conflict.Owners(); !slices.Equal(owners, []string{"dev-gcp:team-f:file-app", "dev-gcp:team-x:first"}) {
		t.Errorf("owners %v", owners)
	}
	if got := err.Error(); got != `line 4: spec.hosts[0]: "file.example.com" already belongs to dev-gcp:team-f:file-app (in vakt's configuration file)`+"\n"+
		`line 5: spec.hosts[1]: "shared.example.com" already belongs to dev-gcp:team-x:first`+"\n"+
		`line 2: spec.resources[0]: "https://api.example.com/file/" already belongs to dev-gcp:team-f:file-app (in vakt's configuration file)` {
		t.Errorf("%s", got)
	}
	if err := x.Claim(&config.Application{Name: "n"}); err == nil || errors.As(err, &conflict) {
		t.Errorf("an application without a namespace: %v", err)
	}
}

// A Jwker claims its id alone; its conflicts are ConflictErrors too.
func TestClaimJwker(t *testing.T) {
	c := loadGrants(t)
	x := c.NewResourceIndex()
	spec := []byte(`{"secretName":"s"}`)
	if _, _, err := x.AcceptJwker("app", "team-j", nil, spec); err != nil {
		t.Fatal(err)
	}
	var conflict *config.ConflictError
	_, _, err := x.AcceptApplication("app", "team-j", nil, []byte("{}"))
	if !errors.As(err, &conflict) || conflict.Clashes[0].Kind != config.ClaimID || conflict.Clashes[0].Path != "spec" || conflict.Clashes[0].Owner != "dev-gcp:team-j:app" {
		t.Fatalf("%v", err)
	}
	if _, _, err := x.AcceptJwker("file-app", "team-f", nil, spec); !errors.As(err, &conflict) || !conflict.Clashes[0].OwnerInFile {
		t.Fatalf("%v", err)
	}
	// The one-shot form of a Config: checked, then claimed against the
	// file's.
	if _, _, err := c.JwkerApplication("file-app", "team-f", spec); !errors.As(err, &conflict) {
		t.Fatalf("%v", err)
	}
	if _, _, err := c.ResourceApplication("x", "team-x", []byte(`hosts: [file.example.com]`)); !errors.As(err, &conflict) {
		t.Fatalf("%v", err)
	}
}

// The checks read the index only: many at once, while nothing claims
// (go test -race).
func TestCheckConcurrent(t *testing.T) {
	c := loadGrants(t)
	x := c.NewResourceIndex()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				ns := fmt.Sprintf("team-%d", (i+j)%3)
				labels := map[string]string{"tier": "web"}
				if _, _, err := x.CheckApplication(fmt.Sprintf("app-%d-%d", i, j), ns, labels, []byte(`{"hosts":["web.example.com"],"resources":["https://web.example.com/x"]}`)); err != nil {
					t.Error(err)
				}
				if _, _, err := x.CheckJwker(fmt.Sprintf("jwk-%d-%d", i, j), ns, labels, []byte(`{"secretName":"s"}`)); err != nil {
					t.Error(err)
				}
				if _, _, err := x.CheckApplication("app", ns, nil, []byte(`{"hosts":["web.example.com"]}`)); err == nil {
					t.Error("accepted without the labels")
				}
			}
		})
	}
	wg.Wait()
}
