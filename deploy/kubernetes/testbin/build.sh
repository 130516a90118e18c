#!/usr/bin/env bash
# Builds the etcd and kube-apiserver that internal/kubetest runs for the
# tests against a real Kubernetes API server, and prints the directory that
# holds them (etcd, kube-apiserver): point VAKT_KUBE_BIN at it.
#
#   export VAKT_KUBE_BIN="$(deploy/kubernetes/testbin/build.sh)"
#
# Neither is downloadable as a binary here; both build from the Go module
# proxy (about 1.5 + 5 CPU-minutes). The binaries are cached in a directory
# named by both versions, so later runs print it at once; a build happens in
# a temporary directory next to it and is moved into place whole, so an
# interrupted build leaves nothing half-made. Progress goes to stderr, the
# directory alone to stdout.
#
# VAKT_KUBE_BIN, when set, is the directory to use (and to build into).
set -euo pipefail

etcd_version=v3.6.5
kube_version=v1.36.3
# The published k8s.io/<staging> modules that go with kube_version.
staging_version=v0.${kube_version#v1.}

dir="${VAKT_KUBE_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/vakt-ci/kube-$kube_version-etcd-$etcd_version}"

have() { [ -f "$dir/etcd" ] && [ -x "$dir/etcd" ] && [ -f "$dir/kube-apiserver" ] && [ -x "$dir/kube-apiserver" ]; }
if have; then
  echo "$dir"
  exit 0
fi

log() { printf 'build.sh: %s\n' "$*" >&2; }

mkdir -p "$(dirname "$dir")"
tmp=$(mktemp -d "$dir.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Outside any module or workspace of the caller's; static binaries (no cgo),
# without symbol tables (smaller, faster to link). GOFLAGS is kept (CI sets
# -buildvcs=false) with -mod=mod added: the build modules below are made
# here, so go.sum is filled in as the build goes.
export GOWORK=off CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=mod"
ldflags="-s -w"
start=$SECONDS

# fail NAME LOG: a build failed; show the end of its log.
fail() {
  log "building $1 failed; the end of its log:"
  tail -40 "$2" >&2
  exit 1
}

# etcd: `go install go.etcd.io/etcd/server/v3@version` refuses (its go.mod has
# replace directives), so it builds inside a module that requires it.
build_etcd() {
  mkdir -p "$tmp/etcd"
  cd "$tmp/etcd"
  printf 'module vakt.test/etcdbuild\n\ngo 1.26\n' >go.mod
  go get "go.etcd.io/etcd/server/v3@$etcd_version"
  go build -trimpath -ldflags="$ldflags" -o "$tmp/bin/etcd" go.etcd.io/etcd/server/v3
}

# kube-apiserver: k8s.io/kubernetes's go.mod replaces each k8s.io/<staging>
# module with a directory inside its own repository, which a module that
# requires k8s.io/kubernetes does not see; so this module replaces each of
# them (the list is read from that go.mod) with its published version. No
# `go mod tidy` here: it walks the tests' imports too, and fails.
build_kube() {
  mkdir -p "$tmp/kube"
  cd "$tmp/kube"
  local gomod staging
  gomod=$(go mod download -json "k8s.io/kubernetes@$kube_version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [ -f "$gomod" ] || { echo "no go.mod for k8s.io/kubernetes@$kube_version" >&2; return 1; }
  staging=$(awk '/^replace[[:space:]]*\(/ { r = 1; next } r && /^\)/ { r = 0 }
    r && $1 ~ /^k8s\.io\// && $2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$gomod")
  [ -n "$staging" ] || { echo "no staging replacements in $gomod" >&2; return 1; }
  {
    printf 'module vakt.test/kubebuild\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$kube_version"
    for m in $staging; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
    printf ')\n'
  } >go.mod
  # The version Kubernetes' own build stamps (hack/lib/version.sh), which
  # /version reports; unstamped it would say v0.0.0-master.
  local minor=${kube_version#v1.} stamp=""
  minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  go build -trimpath -ldflags="$ldflags$stamp" -o "$tmp/bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
}

mkdir -p "$tmp/bin"
log "building etcd $etcd_version and kube-apiserver $kube_version into $dir (once; later runs reuse it; several minutes)"
# Both at once: go build keeps the CPUs busy compiling, but each also waits on
# downloads and links alone.
# (Each in a background subshell: there set -e holds, as it would not in the
# left-hand side of a ||.)
(build_etcd) >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!
(build_kube) >"$tmp/kube.log" 2>&1 &
kube_pid=$!
etcd_rc=0 kube_rc=0
wait "$etcd_pid" || etcd_rc=$?
wait "$kube_pid" || kube_rc=$?
[ "$etcd_rc" = 0 ] || fail etcd "$tmp/etcd.log"
[ "$kube_rc" = 0 ] || fail kube-apiserver "$tmp/kube.log"
"$tmp/bin/etcd" --version >&2
"$tmp/bin/kube-apiserver" --version >&2

# Into place whole. mv -T refuses a directory that is there already (another
# build finished first): then use that one if it is complete.
if ! mv -T "$tmp/bin" "$dir" 2>/dev/null && ! have; then
  log "cannot move the binaries into $dir (it exists, without both binaries): remove it and run again"
  exit 1
fi
log "built in $((SECONDS - start)) s"
echo "$dir"
