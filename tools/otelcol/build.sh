#!/usr/bin/env bash
# Builds jaas-otelcol, an OpenTelemetry Collector holding only the OTLP
# receiver (gRPC and HTTP) and the contrib file exporter, with the collector
# builder (ocb, go.opentelemetry.io/collector/cmd/builder) from the release
# pinned in versions.env and the manifest builder-config.yaml. Cached under
# ~/.cache/jaas-py keyed by version and Go toolchain: when the binary exists
# (built from this builder-config.yaml) this script does nothing. Prints the binary's path on its last line (also
# written to $JAAS_CACHE/otelcol.env as OTELCOL=<path>).
#
# The builder itself is `go install`ed from the module proxy into the build
# directory; it generates the distribution's sources, runs `go mod tidy` and
# `go build -trimpath -ldflags="-s -w"` (its defaults) with the Go on PATH.
set -euo pipefail
otelcoldir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../controlplane/env.sh
. "$otelcoldir/../controlplane/env.sh"
# shellcheck source=versions.env
. "$otelcoldir/versions.env"
require_go
gover=$(go env GOVERSION)
bindir="$JAAS_CACHE/bin/otelcol-$OTELCOL_VERSION-$gover"
manifest="$otelcoldir/builder-config.yaml"
start=$(date +%s)

# Every module in the manifest must be at the pinned release (one release for all).
while read -r module version; do
  case "$version" in
    "$OTELCOL_VERSION" | "$OTELCOL_STABLE_VERSION") ;;
    *)
      echo "error: $manifest names $module $version but versions.env pins $OTELCOL_VERSION / $OTELCOL_STABLE_VERSION; keep all collector modules at one release" >&2
      exit 2
      ;;
  esac
done < <(sed -n 's/^ *-\{0,1\} *gomod: *\([^ ]*\) \([^ ]*\) *$/\1 \2/p' "$manifest")

# A binary built from another manifest of the same release is rebuilt.
if [ ! -x "$bindir/otelcol" ] || ! cmp -s "$manifest" "$bindir/builder-config.yaml"; then
  rm -rf "$bindir.tmp"
  mkdir -p "$bindir.tmp"
  echo "building jaas-otelcol $OTELCOL_VERSION (OTLP receiver, file exporter) with $gover into $bindir (a cold build takes a few minutes)" >&2
  require_proxy "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION" >/dev/null
  require_proxy "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter@$OTELCOL_VERSION" >/dev/null
  echo "  installing the collector builder $OTELCOL_VERSION" >&2
  GOBIN="$bindir.tmp/tools" go install "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION"
  cp "$manifest" "$bindir.tmp/builder-config.yaml"
  echo "  generating, resolving and compiling the distribution (log: $bindir.tmp/builder.log)" >&2
  if ! (cd "$bindir.tmp" && tools/builder --config=builder-config.yaml) >"$bindir.tmp/builder.log" 2>&1; then
    echo "error: the collector builder failed (a 'go mod tidy' or 'go mod download' failure means the Go module proxy ($(go env GOPROXY)) did not serve a dependency); last lines of $bindir.tmp/builder.log:" >&2
    tail -n 40 "$bindir.tmp/builder.log" >&2
    exit 5
  fi
  mv "$bindir.tmp/src/jaas-otelcol" "$bindir.tmp/otelcol"
  rm -rf "$bindir.tmp/src" "$bindir.tmp/tools"
  rm -rf "$bindir" && mv "$bindir.tmp" "$bindir"
  echo "built in $(( $(date +%s) - start )) s: $(du -h "$bindir/otelcol" | cut -f1) otelcol" >&2
fi

printf 'OTELCOL=%s\n' "$bindir/otelcol" > "$JAAS_CACHE/otelcol.env"
echo "otelcol ready in $(( $(date +%s) - start )) s" >&2
echo "$bindir/otelcol"
