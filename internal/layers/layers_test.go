// Package layers holds the test that keeps the house's arrows pointing one
// way: docs/architecture.md draws the package graph, and this is it.
package layers

import (
	"go/build"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/vakt-dev/vakt"

// rank is each package's layer: a package imports only packages of lower
// layers (the leaves, 0, import none of the module's), so that no arrow
// runs back up and no imports form a circle. A package not listed fails
// the test: a new one takes its place here, and in the architecture
// document.
var rank = map[string]int{
	"internal/cache": 0, "internal/buildinfo": 0, "gen/vakt/v1": 0, "deploy/examples": 0, "deploy": 0,
	"internal/idptest": 0, "internal/kubetest": 0, "internal/redistest": 0, "internal/tlstest": 0, "internal/layers": 0, "internal/waittest": 0,
	"authz":                    1,
	"config":                   2,
	"exchange":                 2,
	"agent":                    3,
	"kube":                     4,
	"server":                   4,
	"cmd/vakt/internal/devidp": 3,
	"cmd/vakt":                 5,
}

// transport are what the engine (authz, config, exchange, agent) never
// imports: gRPC, protobuf, Envoy's API, the generated code. The faces
// (server) render the engine's values for them.
var transport = []string{"google.golang.org/grpc", "google.golang.org/protobuf", "github.com/envoyproxy/", module + "/gen/"}

func TestLayers(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		switch {
		case d.Name() == "testdata" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), "."):
			return filepath.SkipDir
		case rel != "." && hasGoMod(path):
			return filepath.SkipDir // a module of its own (test/load)
		}
		pkg, err := build.Default.ImportDir(path, 0)
		if err != nil {
			if _, ok := err.(*build.NoGoError); ok {
				return nil
			}
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		seen++
		r, ok := rank[rel]
		if !ok {
			t.Errorf("package %s has no layer: give it one here and in docs/architecture.md", rel)
			return nil
		}
		for _, imp := range pkg.Imports {
			if own, ok := strings.CutPrefix(imp, module+"/"); ok {
				if ri, known := rank[own]; !known || ri >= r {
					t.Errorf("%s (layer %d) imports %s (layer %d): an arrow that does not point down", rel, r, own, ri)
				}
			}
			if r >= 1 && r <= 3 && slices.ContainsFunc(transport, func(p string) bool { return strings.HasPrefix(imp, p) }) {
				t.Errorf("%s, of the engine, imports %s: a transport's", rel, imp)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 10 {
		t.Fatalf("only %d packages found under %s", seen, root)
	}
}

// The faces' shared request and answer, and the HTTP face, know nothing of
// Envoy: the Envoy face (check.go, codec.go) renders for it.
func TestNeutralFiles(t *testing.T) {
	for _, f := range []string{"server/checkreq.go", "server/answer.go", "server/httpauthz.go"} {
		imports, err := fileImports(filepath.Join("../..", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range imports {
			if strings.HasPrefix(imp, "github.com/envoyproxy/") || strings.HasPrefix(imp, "google.golang.org/") {
				t.Errorf("%s imports %s", f, imp)
			}
		}
	}
}

func hasGoMod(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "go.mod"))
	return err == nil
}

// fileImports are the import paths of one Go file.
func fileImports(file string) ([]string, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, parser.ImportsOnly)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range f.Imports {
		p, _ := strconv.Unquote(s.Path.Value)
		out = append(out, p)
	}
	return out, nil
}
