package buildinfo

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	base := Info{Version: "unknown", Revision: "unknown", GoVersion: "go0"}
	for _, tt := range []struct {
		name string
		bi   debug.BuildInfo
		want Info
	}{
		{"nothing recorded", debug.BuildInfo{}, base},
		{"release", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "false"}}},
			Info{"v1.2.3", "abc123", "go1.26.8"}},
		{"dirty tree", debug.BuildInfo{Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}, {Key: "vcs.revision", Value: "abc123"}}},
			Info{"(devel)", "abc123-dirty", "go0"}},
		{"dirty without a revision", debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}}}, base},
	} {
		if got := fromBuildInfo(&tt.bi, base); got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestRead(t *testing.T) {
	if got := Read(); got.GoVersion != runtime.Version() || got.Version == "" || got.Revision == "" {
		t.Errorf("Read() = %+v", got)
	}
}

func TestStamped(t *testing.T) {
	recorded := Info{Version: "(devel)", Revision: "abc123", GoVersion: "go0"}
	for _, tt := range []struct {
		name              string
		version, revision string
		want              Info
	}{
		{"nothing stamped", "", "", recorded},
		{"both stamped", "v1.2.3", "def456", Info{"v1.2.3", "def456", "go0"}},
		{"version only", "v1.2.3-4-gdef456-dirty", "", Info{"v1.2.3-4-gdef456-dirty", "abc123", "go0"}},
		{"revision only", "", "def456-dirty", Info{"(devel)", "def456-dirty", "go0"}},
	} {
		if got := stamped(recorded, tt.version, tt.revision); got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

// TestStampedAtLinkTime builds a program with the -X flags the image build
// (deploy/image/build.sh) passes, and runs it: a misspelt variable or import
// path makes the linker ignore -X silently.
func TestStampedAtLinkTime(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	bin := filepath.Join(t.TempDir(), "stamp")
	ldflags := "-X " + importPath + ".version=v9.8.7-1-gabc-dirty -X " + importPath + ".revision=0123abcd-dirty"
	build := exec.Command(gobin, "build", "-ldflags", ldflags, "-o", bin, "./testdata/stamp")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), "v9.8.7-1-gabc-dirty 0123abcd-dirty "+runtime.Version(); got != want {
		t.Errorf("stamped binary says %q, want %q", got, want)
	}
}
