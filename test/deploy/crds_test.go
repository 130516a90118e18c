package deploy_test

import (
	"bytes"
	"encoding"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	goyaml "github.com/goccy/go-yaml"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/vakt-dev/vakt/config"
)

// The CustomResourceDefinitions vakt reads (deploy/kubernetes/crds):
// applications.vakt.dev, whose spec schema is generated here from the Go
// type ResourceApplication decodes (config.ResourceSpec), so that the API
// server and vakt agree on the fields; and NAIS's jwkers.nais.io, as NAIS
// publishes it.
//
// TestCRDs fails when the committed applications.vakt.dev.yaml is not what
// the Go types generate; with -update (or VAKT_UPDATE_CRDS=1) it writes it.

var updateCRDs = flag.Bool("update", false, "write deploy/kubernetes/crds/applications.vakt.dev.yaml from config.ResourceSpec")

const (
	crdsDir        = "kubernetes/crds"
	applicationCRD = crdsDir + "/applications.vakt.dev.yaml"
	jwkerCRD       = crdsDir + "/jwkers.nais.io.yaml"
	configSource   = "../config"
)

func TestCRDs(t *testing.T) {
	want := generateApplicationCRD(t)
	got, err := os.ReadFile(applicationCRD)
	switch {
	case *updateCRDs || os.Getenv("VAKT_UPDATE_CRDS") == "1":
		if !bytes.Equal(got, want) {
			if err := os.WriteFile(applicationCRD, want, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s", applicationCRD)
		}
	case err != nil:
		t.Fatalf("%v: run go -C test/deploy test -run TestCRDs -update", err)
	case !bytes.Equal(got, want):
		t.Errorf("%s: the CRD drifted from config.ResourceSpec: run go -C test/deploy test -run TestCRDs -update\n%s", applicationCRD, firstDifference(got, want))
	}

	// The Jwker CRD is NAIS's: what vakt reads of it is there.
	var jwker crdFile
	if err := yaml.Unmarshal(mustReadBytes(t, jwkerCRD), &jwker); err != nil {
		t.Fatalf("%s: %v", jwkerCRD, err)
	}
	if jwker.Metadata.Name != "jwkers.nais.io" || jwker.Spec.Group != config.JwkerGroup || jwker.Spec.Names.Kind != config.KindJwker ||
		jwker.Spec.Scope != "Namespaced" || len(jwker.Spec.Versions) != 1 || jwker.Spec.Versions[0].Name != config.JwkerVersion ||
		!jwker.Spec.Versions[0].Served || !jwker.Spec.Versions[0].Storage || jwker.Spec.Versions[0].Subresources["status"] == nil {
		t.Errorf("%s is not nais.io/v1 Jwker, namespaced, with a status subresource: %+v", jwkerCRD, jwker.Spec)
	}
	spec := jwker.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"]
	if _, ok := spec.Properties["accessPolicy"].Properties["inbound"].Properties["rules"]; !ok || spec.Properties["secretName"].Type != "string" {
		t.Errorf("%s: no spec.accessPolicy.inbound.rules or spec.secretName", jwkerCRD)
	}

	// crds/ is a kustomization of the two, apart from the base (CRDs are
	// cluster-scoped: a cluster administrator installs them once).
	docs := renderJSON(t, crdsDir)
	var names []string
	for _, d := range docs {
		kind, name := kindName(d)
		names = append(names, kind+"/"+name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"CustomResourceDefinition/applications.vakt.dev", "CustomResourceDefinition/jwkers.nais.io"}) {
		t.Errorf("%s renders %v", crdsDir, names)
	}
}

// crdFile is what TestCRDs reads of a CRD file.
type crdFile struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Group string `json:"group"`
		Names struct {
			Kind     string `json:"kind"`
			ListKind string `json:"listKind"`
			Plural   string `json:"plural"`
			Singular string `json:"singular"`
		} `json:"names"`
		Scope    string `json:"scope"`
		Versions []struct {
			Name                     string           `json:"name"`
			Served                   bool             `json:"served"`
			Storage                  bool             `json:"storage"`
			Subresources             map[string]any   `json:"subresources"`
			AdditionalPrinterColumns []map[string]any `json:"additionalPrinterColumns"`
			Schema                   struct {
				OpenAPIV3Schema jsonSchema `json:"openAPIV3Schema"`
			} `json:"schema"`
		} `json:"versions"`
	} `json:"spec"`
}

// jsonSchema is the part of a CRD's schema TestCRDs reads.
type jsonSchema struct {
	Type       string                `json:"type"`
	Properties map[string]jsonSchema `json:"properties"`
}

// generateApplicationCRD returns applications.vakt.dev.yaml as the Go
// types make it.
func generateApplicationCRD(t *testing.T) []byte {
	t.Helper()
	g := &schemaGen{t: t, docs: fieldDocs(t, configSource)}
	spec := g.schema(reflect.TypeFor[config.ResourceSpec](), "spec")
	spec["description"] = "What the application's team declares: an application entry of vakt's configuration file " +
		"(its name and namespace are the resource's), and secretName. vakt checks it with the same code as the file's " +
		"entries, and says what is wrong in status.conditions (Ready, False)."
	kind := config.KindApplication
	plural := strings.ToLower(kind) + "s"
	crd := map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata": map[string]any{
			"name":   plural + "." + config.ResourceGroup,
			"labels": map[string]any{"app.kubernetes.io/name": "vakt"},
		},
		"spec": map[string]any{
			"group": config.ResourceGroup,
			"names": map[string]any{
				"kind":       kind,
				"listKind":   kind + "List",
				"plural":     plural,
				"singular":   strings.ToLower(kind),
				"shortNames": []any{"vaktapp"},
				"categories": []any{"vakt"},
			},
			"scope": "Namespaced",
			"versions": []any{map[string]any{
				"name":         config.ResourceVersion,
				"served":       true,
				"storage":      true,
				"subresources": map[string]any{"status": map[string]any{}},
				"additionalPrinterColumns": []any{
					map[string]any{"name": "Ready", "type": "string", "jsonPath": `.status.conditions[?(@.type=="Ready")].status`},
					map[string]any{"name": "Reason", "type": "string", "jsonPath": `.status.conditions[?(@.type=="Ready")].reason`},
					map[string]any{"name": "Secret", "type": "string", "jsonPath": ".spec.secretName", "priority": 1},
					map[string]any{"name": "Key", "type": "string", "jsonPath": `.status.conditions[?(@.type=="ClientKey")].reason`, "priority": 1},
					map[string]any{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
				},
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"type": "object",
					"description": "An application vakt authorizes calls to and issues tokens for, declared in its team's namespace: " +
						"the id cluster:namespace:name of vakt's configuration file, with the resource's namespace and name.",
					"properties": map[string]any{
						"apiVersion": map[string]any{"type": "string"},
						"kind":       map[string]any{"type": "string"},
						"metadata":   map[string]any{"type": "object"},
						"spec":       spec,
						"status":     statusSchema(t),
					},
				}},
			}},
		},
	}
	out, err := yaml.Marshal(crd)
	if err != nil {
		t.Fatal(err)
	}
	header := "# Code generated by `go -C test/deploy test -run TestCRDs -update` from config.ResourceSpec\n" +
		"# (its yaml tags and doc comments); DO NOT EDIT. TestCRDs fails when it drifts.\n" +
		"#\n" +
		"# The spec schema has the fields, and their types, of an application entry of\n" +
		"# vakt's configuration file: what else is wrong with a spec, vakt says in its\n" +
		"# own words, in status.conditions, as it would of the file.\n"
	return append([]byte(header), out...)
}

// schemaGen makes OpenAPI v3 schemas of Go types by their yaml tags, as
// goccy/go-yaml (which config decodes with) reads them.
type schemaGen struct {
	t    *testing.T
	docs map[string]string // "Type.Field" → its doc comment
}

// Constraints vakt's validator has that the schema states as well: the API
// server refuses the value before vakt sees it. Others (names, URLs, paths,
// one of path and pathPrefix) are vakt's alone, in its words.
var schemaEnums = map[string][]any{
	"spec.pathParameters": {config.PathParametersReject, config.PathParametersStrip},
}

// Descriptions of what a resource's field means, where its Go comment
// is written of the file or is a trailing fragment.
var resourceDescriptions = map[string]string{
	"spec.cluster":             "The application's cluster; vakt's own (its configuration's cluster) when empty.",
	"spec.jwks":                "The application's public keys, inline: a JWK Set. At most one of jwks and jwksUri, and neither with secretName.",
	"spec.jwksUri":             "The URL of the application's public JWK Set.",
	"spec.jwksFile":            "Refused in a resource, which has no file beside it: give jwks or jwksUri, or secretName for vakt to make the key.",
	"spec.routes[].methods":    "Upper-case HTTP methods; any when empty.",
	"spec.routes[].path":       "The request path, exactly. Give path or pathPrefix.",
	"spec.routes[].pathPrefix": "A prefix of the request path. Give path or pathPrefix.",
	"spec.routes[].scopes":     "Scopes the token must have, every one.",
	"spec.routes[].public":     "No token is needed.",
}

func (g *schemaGen) schema(t reflect.Type, path string) map[string]any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	// A type that decodes itself (config.Duration, config.ByteSize) has
	// a syntax of its own, which its kind does not tell.
	p := reflect.PointerTo(t)
	for _, i := range []reflect.Type{
		reflect.TypeFor[goyaml.BytesUnmarshaler](), reflect.TypeFor[goyaml.InterfaceUnmarshaler](),
		reflect.TypeFor[goyaml.NodeUnmarshaler](), reflect.TypeFor[encoding.TextUnmarshaler](),
	} {
		if p.Implements(i) {
			g.t.Fatalf("%s: %s decodes itself: teach the CRD generator its schema", path, t)
		}
	}
	switch t.Kind() {
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int64, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer", "format": "int64"}
	case reflect.Int32:
		return map[string]any{"type": "integer", "format": "int32"}
	case reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Interface:
		// Any YAML value: in an application, an inline JWK Set.
		return map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": g.schema(t.Elem(), path+"[]")}
	case reflect.Struct:
		props := map[string]any{}
		g.fields(t, path, props)
		return map[string]any{"type": "object", "properties": props}
	}
	g.t.Fatalf("%s: no schema for %s (%s): teach the CRD generator", path, t, t.Kind())
	return nil
}

// fields adds t's fields to props, those of inline fields as its own.
func (g *schemaGen) fields(t reflect.Type, path string, props map[string]any) {
	for f := range t.Fields() {
		tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || tag == "-" {
			continue
		}
		if slices.Contains(strings.Split(opts, ","), "inline") {
			g.fields(f.Type, path, props)
			continue
		}
		if tag == "" {
			tag = strings.ToLower(f.Name) // goccy/go-yaml's default
		}
		at := path + "." + tag
		if _, dup := props[tag]; dup {
			g.t.Fatalf("%s: two fields named %s", path, tag)
		}
		s := g.schema(f.Type, at)
		if d := resourceDescriptions[at]; d != "" {
			s["description"] = d
		} else if d := g.docs[t.Name()+"."+f.Name]; d != "" {
			s["description"] = d
		} else if d := g.docs[elemType(f.Type).Name()]; d != "" {
			s["description"] = d
		}
		if e, ok := schemaEnums[at]; ok {
			s["enum"] = e
		}
		props[tag] = s
	}
}

// elemType is the type of t's values: t without pointers and slices.
func elemType(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	return t
}

// fieldDocs reads the doc comments of the struct types of the Go package
// in dir, by "Type", and of their fields, by "Type.Field". A comment before
// a group of fields is the first one's.
func fieldDocs(t *testing.T, dir string) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]string{}
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					continue
				}
				doc := ts.Doc
				if doc == nil && len(gd.Specs) == 1 {
					doc = gd.Doc
				}
				if d := strings.Join(strings.Fields(doc.Text()), " "); d != "" {
					docs[ts.Name.Name] = d
				}
				structDocs(docs, ts.Name.Name, st)
			}
		}
	}
	return docs
}

// structDocs adds the doc comments of a struct type's fields.
func structDocs(docs map[string]string, typeName string, st *ast.StructType) {
	for _, fl := range st.Fields.List {
		doc := fl.Doc.Text()
		if doc == "" {
			doc = fl.Comment.Text()
		}
		doc = strings.Join(strings.Fields(doc), " ")
		for _, name := range fl.Names {
			if doc != "" {
				docs[typeName+"."+name.Name] = doc
			}
		}
	}
}

// statusSchema is what vakt reports of an application: the standard Ready
// condition (metav1.Condition, as controller-gen renders it), the
// generation it describes, the public key set vakt publishes for it, and
// the Secret it made its key in.
func statusSchema(t *testing.T) map[string]any {
	t.Helper()
	condition := map[string]any{
		"type":     "object",
		"required": []any{"lastTransitionTime", "message", "reason", "status", "type"},
		"properties": map[string]any{
			"type": map[string]any{
				"type": "string", "maxLength": 316,
				"pattern":     `^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$`,
				"description": "The condition's type: Ready, whether vakt serves the application as its spec says; ClientKey (with secretName), whether vakt made and published its client key; Keys (with jwksUri), whether vakt fetches its keys there.",
			},
			"status": map[string]any{"type": "string", "enum": []any{"True", "False", "Unknown"}},
			"reason": map[string]any{
				"type": "string", "minLength": 1, "maxLength": 1024,
				"pattern":     `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`,
				"description": "Why, in one CamelCase word.",
			},
			"message": map[string]any{
				"type": "string", "maxLength": 32768,
				"description": "Why, for a person: vakt's validation errors when the spec is refused.",
			},
			"lastTransitionTime": map[string]any{"type": "string", "format": "date-time"},
			"observedGeneration": map[string]any{"type": "integer", "format": "int64", "minimum": 0},
		},
	}
	// The shape is metav1.Condition's, field for field.
	var fields, props []string
	for f := range reflect.TypeFor[metav1.Condition]().Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		fields = append(fields, name)
	}
	for name := range condition["properties"].(map[string]any) {
		props = append(props, name)
	}
	slices.Sort(fields)
	slices.Sort(props)
	if !slices.Equal(fields, props) {
		t.Fatalf("the condition schema has %v; metav1.Condition has %v", props, fields)
	}
	return map[string]any{
		"type":        "object",
		"description": "What vakt made of the spec.",
		"properties": map[string]any{
			"observedGeneration": map[string]any{
				"type": "integer", "format": "int64",
				"description": "The metadata.generation of the spec the status describes.",
			},
			"conditions": map[string]any{
				"type":                       "array",
				"items":                      condition,
				"x-kubernetes-list-type":     "map",
				"x-kubernetes-list-map-keys": []any{"type"},
				"description":                "Ready: True when vakt serves the application as its spec says; False, with vakt's reasons, when it refuses the spec.",
			},
			"keys": map[string]any{
				"type":                                 "object",
				"x-kubernetes-preserve-unknown-fields": true,
				"description":                          "The public JWK Set of the client keys vakt made (with secretName): the current key first, then the replaced ones still valid. Every replica of vakt reads them here.",
			},
			"retiredKeys": map[string]any{
				"type":        "array",
				"description": "The replaced keys in keys, and until when each stays valid (kubernetes.keyOverlap after it was replaced).",
				"items": map[string]any{
					"type":     "object",
					"required": []any{"kid", "until"},
					"properties": map[string]any{
						"kid":        map[string]any{"type": "string"},
						"until":      map[string]any{"type": "string", "format": "date-time"},
						"secretName": map[string]any{"type": "string", "description": "The Secret the key was in, when not secretName: deleted when the key expires."},
					},
				},
			},
			"rotation": map[string]any{
				"type":        "string",
				"description": "The value of the annotation vakt.dev/rotate-key last honoured: a new value makes a new key.",
			},
			"secretName": map[string]any{
				"type":        "string",
				"description": "The Secret vakt made the application's client key in.",
			},
			"served": map[string]any{
				"type":        "object",
				"description": "The version of the spec that serves, when one does: the latest, or an earlier one while the latest is refused. Every replica of vakt, a new one too, falls back on it.",
				"required":    []any{"generation", "spec"},
				"properties": map[string]any{
					"generation": map[string]any{"type": "integer", "format": "int64", "minimum": 1},
					"spec":       map[string]any{"type": "string", "maxLength": config.MaxResourceSpec, "description": "That version's spec, as JSON."},
				},
			},
		},
	}
}

// firstDifference shows the first line where got and want differ.
func firstDifference(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d:\n  committed: %q\n  generated: %q", i+1, gl, wl)
		}
	}
	return ""
}

func mustReadBytes(t *testing.T, file string) []byte {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
