#!/usr/bin/env bash
# Builds promtool (Prometheus's rule checker and rule unit-test runner) from the
# Go module github.com/prometheus/prometheus pinned in versions.env, with
# `go install .../cmd/promtool@<version>` (the module has no replace
# directives, so no copy of it is needed). Cached under ~/.cache/jaas-py keyed
# by version and Go toolchain: when the binary exists this script does nothing.
# Prints the path of the binary on its last line (also written to
# $JAAS_CACHE/promtool.env as PROMTOOL=<path>).
#
# Exit codes: 3 no Go toolchain, 4 the Go module proxy did not serve a module,
# 1 the build itself failed.
set -euo pipefail
promdir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../controlplane/env.sh (it sets $here to its own directory)
. "$promdir/../controlplane/env.sh"
# shellcheck source=versions.env
. "$promdir/versions.env"
require_go
gover=$(go env GOVERSION)
bindir="$JAAS_CACHE/bin/promtool-$PROMETHEUS_VERSION-$gover"
start=$(date +%s)

# Module version v0.3MM.P is Prometheus release 3.MM.P: stamped into
# `promtool --version` as the release build does.
rel=${PROMETHEUS_VERSION#v0.}
major_minor=${rel%%.*}
release="${major_minor:0:1}.$((10#${major_minor:1})).${rel#*.}"

if [ ! -x "$bindir/promtool" ]; then
  rm -rf "$bindir.tmp"
  mkdir -p "$bindir.tmp"
  echo "building promtool $release ($PROMETHEUS_VERSION) with $gover into $bindir (a cold build takes a few minutes)" >&2
  require_proxy "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" >/dev/null
  # The release's date, from the module proxy's .info of the version.
  builddate=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$GOMODCACHE/cache/download/github.com/prometheus/prometheus/@v/$PROMETHEUS_VERSION.info" 2>/dev/null || true)
  vpkg=github.com/prometheus/common/version
  ldflags="-s -w -X $vpkg.Version=$release -X $vpkg.Branch=HEAD -X $vpkg.BuildUser=jaas-py -X $vpkg.BuildDate=${builddate:-unknown}"
  if ! GOBIN="$bindir.tmp" go install -trimpath -ldflags "$ldflags" \
      "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION" 2>"$bindir.tmp/build.log"; then
    if grep -qiE 'proxy|dial tcp|lookup disabled|reading [a-z]+://|no such host|GOPROXY|verifying module' "$bindir.tmp/build.log"; then
      echo "error: downloading promtool's dependencies failed; is the Go module proxy ($(go env GOPROXY)) reachable?" >&2
      cat "$bindir.tmp/build.log" >&2
      exit 4
    fi
    echo "error: building promtool $PROMETHEUS_VERSION with $gover failed:" >&2
    cat "$bindir.tmp/build.log" >&2
    exit 1
  fi
  rm -f "$bindir.tmp/build.log"
  rm -rf "$bindir" && mv "$bindir.tmp" "$bindir"
  echo "built in $(( $(date +%s) - start )) s: $(du -h "$bindir/promtool" | cut -f1) promtool" >&2
fi

printf 'PROMTOOL=%s\n' "$bindir/promtool" > "$JAAS_CACHE/promtool.env"
echo "promtool ready in $(( $(date +%s) - start )) s" >&2
echo "$bindir/promtool"
