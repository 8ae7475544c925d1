#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the Go modules pinned in go.mod/go.sum
# and fetches Flux's source CRDs from the source-controller module. Outputs are
# cached under ~/.cache/jaas-py keyed by version and Go toolchain; when they
# already exist this script does nothing. Prints the directory holding the
# binaries on its last line (also written to $JAAS_CACHE/controlplane.env).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
. "$here/env.sh"
require_go
export GOFLAGS=-mod=readonly
gover=$(go env GOVERSION)
bindir="$JAAS_CACHE/bin/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-$gover"
crddir="$JAAS_CACHE/flux-crds/$FLUX_SOURCE_CONTROLLER_VERSION"
start=$(date +%s)

if [ ! -x "$bindir/kube-apiserver" ] || [ ! -x "$bindir/etcd" ]; then
  mkdir -p "$bindir.tmp"
  cd "$here"
  echo "building kube-apiserver $KUBERNETES_VERSION and etcd $ETCD_VERSION with $gover into $bindir (a cold build takes several minutes)" >&2
  minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
  builddate=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.info" 2>/dev/null || true)
  vpkg=k8s.io/component-base/version
  kldflags="-s -w -X $vpkg.gitVersion=$KUBERNETES_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=${builddate:-1970-01-01T00:00:00Z}"
  if ! go mod download >/dev/null 2>"$bindir.tmp/download.log"; then
    echo "error: 'go mod download' failed; is the Go module proxy ($(go env GOPROXY)) reachable?" >&2
    cat "$bindir.tmp/download.log" >&2
    exit 4
  fi
  go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$kldflags" \
    -o "$bindir.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  go build -trimpath -ldflags "-s -w" -o "$bindir.tmp/etcd" go.etcd.io/etcd/server/v3
  rm -rf "$bindir" && mv "$bindir.tmp" "$bindir"
  echo "built in $(( $(date +%s) - start )) s: $(du -h "$bindir/kube-apiserver" | cut -f1) kube-apiserver, $(du -h "$bindir/etcd" | cut -f1) etcd" >&2
fi

if [ ! -f "$crddir/source.toolkit.fluxcd.io_externalartifacts.yaml" ]; then
  dir=$(require_proxy "github.com/fluxcd/source-controller@$FLUX_SOURCE_CONTROLLER_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$crddir.tmp"
  for kind in gitrepositories ocirepositories buckets externalartifacts; do
    install -m 0644 "$dir/config/crd/bases/source.toolkit.fluxcd.io_$kind.yaml" "$crddir.tmp/"
  done
  rm -rf "$crddir" && mv "$crddir.tmp" "$crddir"
fi

printf 'JAAS_CONTROLPLANE_BIN=%s\nJAAS_FLUX_CRDS=%s\n' "$bindir" "$crddir" > "$JAAS_CACHE/controlplane.env"
echo "control plane ready in $(( $(date +%s) - start )) s" >&2
echo "$bindir"
