package config_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vakt-dev/vakt/config"
)

// naisDocsJwker is the Jwker naiserator makes (pkg/resourcecreator/tokenx,
// accesspolicy.WithDefaults: namespace and cluster filled in, outbound
// external dropped, permissions kept) from the accessPolicy of NAIS's
// example application, myapplication in namespace myteam, in cluster
// dev-gcp: https://docs.nais.io/workloads/application/reference/application-spec
// (generated from github.com/nais/liberator,
// pkg/apis/nais.io/v1alpha1/application_doc_example.go). As the API server
// serves it: JSON, in testdata (the server's tests apply it too).
var naisDocsJwker = func() string {
	b, err := os.ReadFile("testdata/nais-docs-jwker.json")
	if err != nil {
		panic(err)
	}
	return string(b)
}()

// A Jwker is read as the Application resource it stands for: strictly, and
// validated by the same code, with the same words, naming its own fields.
func TestJwkerApplication(t *testing.T) {
	c, err := config.Load([]byte(base+`applications:
  - name: app-1
    namespace: team-a
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc, name, ns, spec string
		rules                []string // the application's inbound rules, as ids
		secret               string
	}{
		{"NAIS's documented example, as naiserator makes it", "myapplication", "myteam", naisDocsJwker,
			[]string{"dev-gcp:myteam:app1", "dev-gcp:q1:app2", "dev-gcp:q2:app3", "dev-gcp:myteam:app4", "dev-gcp:myteam:app5", "dev-gcp:myteam:app6"},
			"tokenx-myapplication-8b3f6a2c"},
		{"rules as nais.yaml writes them, defaults left to vakt", "app-b", "team-b", `accessPolicy:
  inbound:
    rules:
      - application: app-a
      - application: app-1
        namespace: team-a
      - application: app-c
        namespace: team-c
        cluster: prod-gcp
secretName: tokenx-app-b-1234abcd
`, []string{"dev-gcp:team-b:app-a", "dev-gcp:team-a:app-1", "prod-gcp:team-c:app-c"}, "tokenx-app-b-1234abcd"},
		{"no inbound rule", "app-b", "team-b", `{"accessPolicy":{"outbound":{"external":[{"host":"x.example","ports":[{"port":443}]}]}},"secretName":"s"}`, nil, "s"},
	} {
		a, secret, err := c.JwkerApplication(tc.name, tc.ns, []byte(tc.spec))
		if err != nil {
			t.Errorf("%s: %v", tc.desc, err)
			continue
		}
		var rules []string
		for _, r := range a.AccessPolicy.Inbound.Rules {
			rules = append(rules, r.ID())
		}
		if a.ID() != "dev-gcp:"+tc.ns+":"+tc.name || !slices.Equal(rules, tc.rules) || secret != tc.secret || a.JWKS != nil || a.JWKSURI != "" {
			t.Errorf("%s: %s rules %v secret %q, want rules %v secret %q", tc.desc, a.ID(), rules, secret, tc.rules, tc.secret)
		}
	}

	for _, tc := range []struct {
		name, spec string
		want       []string
	}{
		// Decoding: a field the Jwker CRD does not have.
		{"app-b", "accessPolicy:\n  inbound:\n    rules:\n      - applicaton: app-a\nsecretName: s\n", []string{`spec: line 4: unknown field "applicaton"`}},
		{"app-b", "tokenx: {enabled: true}\nsecretName: s\n", []string{`spec: line 1: unknown field "tokenx"`}},
		{"app-b", `{"accessPolicy":{},"secretName":"s","hosts":["x.example"]}`, []string{`unknown field "hosts"`}},
		// Validation, in ResourceApplication's words, at the Jwker's own
		// rule indices and lines (a "*" rule before it is not read).
		{"app-b", "accessPolicy:\n  inbound:\n    rules:\n      - application: '*'\n        namespace: q3\n      - application: Bad_Name\nsecretName: s\n",
			[]string{`line 6: spec.accessPolicy.inbound.rules[1].application: "Bad_Name" is not a valid name`}},
		{"app-b", "accessPolicy:\n  inbound:\n    rules:\n      - application: app-a\n        cluster: prod-gcp\nsecretName: s\n",
			[]string{"line 4: spec.accessPolicy.inbound.rules[0].namespace: is required when cluster is given"}},
		{"app-b", "accessPolicy: {}\n", []string{"spec.secretName: is required"}},
		{"app-b", "accessPolicy: {}\nsecretName: Not_A_Name\n", []string{`line 2: spec.secretName: "Not_A_Name" is not a Secret name`}},
		{"app-1", `{"accessPolicy":{},"secretName":"s"}`, []string{"spec: application id dev-gcp:team-a:app-1 is already used by dev-gcp:team-a:app-1"}},
		{"Bad_Name", `{"accessPolicy":{},"secretName":"s"}`, []string{`metadata.name: "Bad_Name" is not a valid name`}},
	} {
		ns := "team-b"
		if tc.name == "app-1" {
			ns = "team-a"
		}
		_, _, err := c.JwkerApplication(tc.name, ns, []byte(tc.spec))
		if err == nil {
			t.Errorf("%s %q: accepted", tc.name, tc.spec)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s %q: %v, want %q", tc.name, tc.spec, err, w)
			}
		}
	}
}
