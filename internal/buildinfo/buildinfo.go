// Package buildinfo says which vakt is running: its version, the source
// revision it was built from and the Go that built it, as the Go toolchain
// recorded them in the binary (runtime/debug.ReadBuildInfo), or as a release
// build stamped them at link time (see version and revision).
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Info is what a binary says of its build. A field the toolchain did not
// record is "unknown".
type Info struct {
	Version   string // the module version, "(devel)" when built from a work tree
	Revision  string // the VCS revision, with "-dirty" when the tree had changes
	GoVersion string
}

// importPath is this package's import path, the prefix of the linker's -X flags.
const importPath = "github.com/vakt-dev/vakt/internal/buildinfo"

// version and revision are set at link time by release builds (the image
// build, deploy/image/build.sh), where the toolchain cannot record them: a
// build outside a Git work tree (an image build's context), or with
// -buildvcs=false (as CI builds), records no revision and "(devel)".
//
//	go build -ldflags "-X github.com/vakt-dev/vakt/internal/buildinfo.version=v1.2.3 \
//	  -X github.com/vakt-dev/vakt/internal/buildinfo.revision=$(git rev-parse HEAD)" ./cmd/vakt
//
// A value stamped here wins over what the toolchain recorded.
var version, revision string

// Read returns the running binary's build information.
func Read() Info {
	info := Info{Version: "unknown", Revision: "unknown", GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		info = fromBuildInfo(bi, info)
	}
	return stamped(info, version, revision)
}

// stamped overrides info with the values stamped at link time, if any.
func stamped(info Info, version, revision string) Info {
	if version != "" {
		info.Version = version
	}
	if revision != "" {
		info.Revision = revision
	}
	return info
}

func fromBuildInfo(bi *debug.BuildInfo, info Info) Info {
	if bi.Main.Version != "" {
		info.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && info.Revision != "unknown" {
		info.Revision += "-dirty"
	}
	return info
}
