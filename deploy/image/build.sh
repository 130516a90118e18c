#!/usr/bin/env bash
# Builds vakt's container image with buildah, offline, and checks it from its
# own filesystem. See deploy/image/README.md.
#
#   deploy/image/build.sh [--root DIR]
#
# 1. Builds a static vakt (CGO_ENABLED=0, -trimpath, version and revision
#    stamped with -ldflags -X) into a staging directory, with the CA bundle.
# 2. buildah bud --storage-driver vfs -f Containerfile -t vakt:VERSION STAGING
# 3. Mounts the image (buildah from + buildah mount) and checks: /vakt is
#    there, statically linked, built with those flags, says the stamped
#    version when run (on this machine, from the mounted root: not in a
#    container) and loads the example configuration; the CA bundle is there;
#    the image has nothing else; the image's User, Entrypoint, Cmd and labels.
#
# Storage: a temporary directory, removed at the end with everything built in
# it, unless --root DIR (or BUILDAH_STORAGE=DIR) names one: then the image
# vakt:VERSION is kept there, to push with `buildah --root DIR
# --storage-driver vfs push vakt:VERSION docker://...`. System storage is
# never used. The container the checks make is always removed.
#
# VERSION is `git describe --tags --always --dirty`, else "dev"; REVISION is
# `git rev-parse HEAD` (with "-dirty" when VERSION has it), else "unknown".
# VAKT_VERSION and VAKT_REVISION override them.
#
# Exit status: 0 built and checked; 1 the build or a check failed; 3 the image
# was not built because buildah is missing or cannot build here (a probe
# image of one file fails to build, or there is no user namespace when not
# root). CI fails on 1 and reports 3.
set -euo pipefail

prog=deploy/image/build.sh
caller=$PWD
cd "$(dirname "$0")/../.."

fail() { printf '%s: FAIL: %s\n' "$prog" "$*" >&2; exit 1; }
cannot() { printf '%s: image NOT built: %s\n' "$prog" "$*" >&2; exit 3; }
ok() { printf '  ok  %s\n' "$*"; }

storage=${BUILDAH_STORAGE:-}
while [ $# -gt 0 ]; do
  case $1 in
    --root) [ $# -ge 2 ] || fail "--root needs a directory"; storage=$2; shift 2 ;;
    --root=*) storage=${1#--root=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument $1 (usage: $prog [--root DIR])" ;;
  esac
done
case $storage in ''|/*) ;; *) storage=$caller/$storage ;; esac

command -v buildah >/dev/null || cannot "buildah is not installed (Debian: apt-get install buildah)"
command -v go >/dev/null || fail "go is not installed"

# What to stamp: decided here, before a rootless run re-executes itself in a
# user namespace (where git may not trust the work tree's owner).
if [ -z "${VAKT_VERSION:-}" ]; then
  VAKT_VERSION=$(git describe --tags --always --dirty 2>/dev/null) || VAKT_VERSION=dev
fi
if [ -z "${VAKT_REVISION:-}" ]; then
  if VAKT_REVISION=$(git rev-parse HEAD 2>/dev/null); then
    case $VAKT_VERSION in *-dirty) VAKT_REVISION+=-dirty ;; esac
  else
    VAKT_REVISION=unknown
  fi
fi
export VAKT_VERSION VAKT_REVISION

# buildah mount needs a user namespace when not root: run the whole script in
# one, so that it can also remove what the build leaves in storage.
if [ "$(id -u)" != 0 ] && [ -z "${_CONTAINERS_USERNS_CONFIGURED:-}" ]; then
  buildah unshare true 2>/dev/null ||
    cannot "not root, and 'buildah unshare' cannot make a user namespace (/etc/subuid, /etc/subgid?)"
  BUILDAH_STORAGE=$storage exec buildah unshare -- "$0"
fi

version=$VAKT_VERSION
revision=$VAKT_REVISION
# An image tag: [A-Za-z0-9_.-], at most 128, not starting with '.' or '-'.
tag=$(printf '%s' "$version" | tr -c 'A-Za-z0-9_.-' '-' | sed 's/^[.-]*//' | cut -c1-128)
[ -n "$tag" ] || tag=dev
image=localhost/vakt:$tag
pkg=github.com/vakt-dev/vakt/internal/buildinfo

work=$(mktemp -d "${TMPDIR:-/tmp}/vakt-image.XXXXXX")
staging=$work/staging
keep=false
if [ -n "$storage" ]; then
  keep=true
  mkdir -p "$storage"
else
  storage=$work/storage
fi
bh() { buildah --root "$storage" --runroot "$work/run" --storage-driver vfs "$@"; }

ctr=''
built=false
cleanup() {
  local rc=$?
  set +e
  if [ -n "$ctr" ]; then
    bh umount "$ctr" >/dev/null 2>&1
    bh rm "$ctr" >/dev/null 2>&1
  fi
  bh rmi -f vakt-image-probe >/dev/null 2>&1
  # A kept image is one that passed its checks.
  if $built && { ! $keep || [ "$rc" != 0 ]; }; then bh rmi -f "$image" >/dev/null 2>&1; fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR

echo "vakt image: version $version, revision $revision, tag $image, storage $storage$($keep || echo ' (temporary)')"

# Can buildah build at all here? A one-file FROM scratch image tells an
# environment that cannot (exit 3) from a build of ours that fails (exit 1).
mkdir -p "$work/probe" "$staging"
echo probe >"$work/probe/file"
printf 'FROM scratch\nCOPY file /file\n' >"$work/probe/Containerfile"
if ! out=$(bh bud --quiet -f "$work/probe/Containerfile" -t vakt-image-probe "$work/probe" 2>&1); then
  printf '%s\n' "$out" >&2
  cannot "buildah cannot build a FROM scratch image here (above)"
fi
bh rmi -f vakt-image-probe >/dev/null

echo "== go build (static, stamped)"
ldflags="-s -w -X $pkg.version=$version -X $pkg.revision=$revision"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$staging/vakt" ./cmd/vakt ||
  fail "go build ./cmd/vakt"
cabundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$cabundle" ] || fail "no CA bundle at $cabundle (Debian: apt-get install ca-certificates)"
cp "$cabundle" "$staging/ca-certificates.crt"
chmod 0755 "$staging/vakt"
chmod 0644 "$staging/ca-certificates.crt"

echo "== buildah bud"
timestamp=()
if epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null)} && [ -n "$epoch" ]; then
  timestamp=(--timestamp "$epoch") # the same sources make the same image
fi
bh bud --pull=never "${timestamp[@]}" -f Containerfile \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  -t "$image" "$staging" || fail "buildah bud -f Containerfile"
built=true

echo "== checks, from the image's own filesystem"
ctr=$(bh from --quiet --pull=never "$image") || fail "buildah from $image"
mnt=$(bh mount "$ctr") || fail "buildah mount $ctr"
bin=$mnt/vakt

[ -f "$bin" ] && [ -x "$bin" ] || fail "/vakt is not an executable file in the image"
ok "/vakt is there, $(stat -c '%a %u:%g %s bytes' "$bin")"
case $(stat -c %a "$bin") in *[157]) ;; *) fail "/vakt is not executable by others (user 65532)" ;; esac

go run deploy/image/elfcheck.go "$bin" | sed "s|^$mnt|  ok  |" || fail "/vakt is not statically linked"
if command -v file >/dev/null; then
  file -b "$bin" | sed 's/^/      file: /'
fi

buildinfo=$(go version -m "$bin") || fail "go version -m /vakt: no Go build information"
printf '%s\n' "$buildinfo" | grep -Ev '^[[:space:]]*dep[[:space:]]' | sed "s|^$mnt/|/|; s/^/      /"
echo "      ($(printf '%s\n' "$buildinfo" | grep -Ec '^[[:space:]]*dep[[:space:]]') dependencies: go version -m lists them)"
# (-trimpath leaves -ldflags out of the build information: the stamped
# version is checked by running the binary, below.)
for setting in 'CGO_ENABLED=0' '-trimpath=true'; do
  printf '%s\n' "$buildinfo" | grep -Eq "^[[:space:]]*build[[:space:]]+$setting\$" ||
    fail "go version -m /vakt: no 'build $setting'"
done
ok "go version -m: built with CGO_ENABLED=0 and -trimpath"

want="vakt $version (revision $revision, $(go env GOVERSION))"
got=$("$bin" version) || fail "/vakt version exited non-zero"
[ "$got" = "$want" ] || fail "/vakt version says '$got', want '$want'"
ok "/vakt version: $got"
"$bin" check-config deploy/examples/vakt.yaml >/dev/null || fail "/vakt check-config deploy/examples/vakt.yaml"
ok "/vakt check-config deploy/examples/vakt.yaml"

ca=$mnt/etc/ssl/certs/ca-certificates.crt
cmp -s "$ca" "$cabundle" || fail "/etc/ssl/certs/ca-certificates.crt is not $cabundle"
case $(stat -c %a "$ca") in *[4567]) ;; *) fail "the CA bundle is not readable by others (user 65532)" ;; esac
ok "/etc/ssl/certs/ca-certificates.crt: $(grep -c 'BEGIN CERTIFICATE' "$ca") certificates"

files=$(cd "$mnt" && find . -mindepth 1 \( -type f -o -type l \) | sort | tr '\n' ' ')
[ "$files" = "./etc/ssl/certs/ca-certificates.crt ./vakt " ] ||
  fail "the image has files besides /vakt and the CA bundle: $files"
ok "nothing else in the image"

expect() { # expect NAME GOT WANT
  [ "$2" = "$3" ] || fail "image config: $1 is $2, want $3"
  ok "$1 $2"
}
cfg() { bh inspect --type image --format "$1" "$image"; }
list() { # a []string of the image config, as JSON (buildah 1.28's templates have no json)
  printf '[%s]' "$(cfg "{{range \$i, \$e := .OCIv1.Config.$1}}{{if \$i}},{{end}}{{printf \"%q\" \$e}}{{end}}")"
}
expect User "$(cfg '{{.OCIv1.Config.User}}')" '65532:65532'
expect Entrypoint "$(list Entrypoint)" '["/vakt"]'
expect Cmd "$(list Cmd)" '["serve","--config","/etc/vakt/vakt.yaml"]'
expect 'label version' "$(cfg '{{index .OCIv1.Config.Labels "org.opencontainers.image.version"}}')" "$version"
expect 'label revision' "$(cfg '{{index .OCIv1.Config.Labels "org.opencontainers.image.revision"}}')" "$revision"

echo "vakt image: $image ($(cfg '{{.FromImageID}}' | cut -c1-12), $(du -sh "$mnt" | cut -f1)) built and checked"
if $keep; then
  echo "kept in $storage: buildah --root $storage --storage-driver vfs push $image docker://REGISTRY/vakt:$tag"
fi
