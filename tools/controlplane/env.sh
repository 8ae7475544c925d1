# Shared Go environment for the control-plane scripts: every cache lives under
# ~/.cache/jaas-py so that a second run on the same machine is fast.
# shellcheck shell=bash
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
# shellcheck source=../flux/versions.env
. "$here/../flux/versions.env"
JAAS_CACHE="${JAAS_CACHE:-$HOME/.cache/jaas-py}"
export GOMODCACHE="$JAAS_CACHE/go/mod"
export GOCACHE="$JAAS_CACHE/go/build"
export GOPATH="$JAAS_CACHE/go/path"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS=-mod=mod

require_go() {
  if ! command -v go >/dev/null 2>&1; then
    echo "error: the Go toolchain is not installed (no 'go' on PATH); the test control plane is built from Go modules and needs Go >= 1.26" >&2
    exit 3
  fi
}

require_proxy() {
  # $1: module@version that must be downloadable
  if ! out=$(go mod download -json "$1" 2>&1); then
    echo "error: the Go module proxy ($(go env GOPROXY)) did not serve $1:" >&2
    echo "$out" >&2
    exit 4
  fi
  printf '%s\n' "$out"
}
