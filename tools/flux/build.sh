#!/usr/bin/env bash
# Builds Flux's source-controller and kustomize-controller from their released
# Go modules, and an OCI registry from go-containerregistry's cmd/registry,
# pinned in versions.env; copies their CRDs from the same modules. Cached under
# ~/.cache/jaas-py keyed by version and Go toolchain: when the outputs exist
# this script does nothing. Prints the directory holding the binaries on its
# last line (also written to $JAAS_CACHE/flux.env).
#
# `go install <controller>@<version>` is refused (the modules carry replace
# directives) and a module zip lacks the nested ./api module, so each
# controller is built from a copy of its module with the `api => ./api`
# replace dropped and the released api module of the same version required.
set -euo pipefail
fluxdir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../controlplane/env.sh (it reads versions.env beside this script)
. "$fluxdir/../controlplane/env.sh"
require_go
gover=$(go env GOVERSION)
bindir="$JAAS_CACHE/bin/flux-sc-$FLUX_SOURCE_CONTROLLER_VERSION-kc-$FLUX_KUSTOMIZE_CONTROLLER_VERSION-ggcr-$GGCR_VERSION-$gover"
start=$(date +%s)

module_dir() {
  # $1: module@version; prints the directory of its unpacked zip
  require_proxy "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'
}

build_controller() {
  # $1: controller name (source-controller, kustomize-controller), $2: version
  local name=$1 version=$2 src work
  src=$(module_dir "github.com/fluxcd/$name@$version")
  work="$bindir.tmp/src/$name"
  mkdir -p "$work"
  cp -R "$src/." "$work/"
  chmod -R u+w "$work"
  (
    cd "$work"
    go mod edit -dropreplace "github.com/fluxcd/$name/api" \
      -require "github.com/fluxcd/$name/api@$version"
    if ! go mod download >/dev/null 2>"$bindir.tmp/$name-download.log"; then
      echo "error: 'go mod download' for $name $version failed; is the Go module proxy ($(go env GOPROXY)) reachable?" >&2
      cat "$bindir.tmp/$name-download.log" >&2
      exit 4
    fi
    go build -trimpath -ldflags "-s -w" -o "$bindir.tmp/$name" .
  )
  mkdir -p "$bindir.tmp/crds"
  install -m 0644 "$src"/config/crd/bases/*.yaml "$bindir.tmp/crds/"
}

if [ ! -x "$bindir/source-controller" ] || [ ! -x "$bindir/kustomize-controller" ] || [ ! -x "$bindir/registry" ]; then
  rm -rf "$bindir.tmp"
  mkdir -p "$bindir.tmp"
  echo "building source-controller $FLUX_SOURCE_CONTROLLER_VERSION, kustomize-controller $FLUX_KUSTOMIZE_CONTROLLER_VERSION and registry $GGCR_VERSION with $gover into $bindir (a cold build takes several minutes)" >&2
  build_controller source-controller "$FLUX_SOURCE_CONTROLLER_VERSION"
  build_controller kustomize-controller "$FLUX_KUSTOMIZE_CONTROLLER_VERSION"
  GOBIN="$bindir.tmp" go install -trimpath -ldflags "-s -w" \
    "github.com/google/go-containerregistry/cmd/registry@$GGCR_VERSION"
  rm -rf "$bindir.tmp/src"
  rm -rf "$bindir" && mv "$bindir.tmp" "$bindir"
  echo "built in $(( $(date +%s) - start )) s: $(du -h "$bindir/source-controller" | cut -f1) source-controller, $(du -h "$bindir/kustomize-controller" | cut -f1) kustomize-controller, $(du -h "$bindir/registry" | cut -f1) registry" >&2
fi

printf 'JAAS_FLUX_BIN=%s\n' "$bindir" > "$JAAS_CACHE/flux.env"
echo "flux controllers ready in $(( $(date +%s) - start )) s" >&2
echo "$bindir"
