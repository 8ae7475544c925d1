#!/usr/bin/env bash
# Builds jaas-jrsonnet, the native Jsonnet module in native/ (a Rust crate on
# jrsonnet, built with maturin into an abi3 wheel), and installs the wheel in
# the virtualenv. The wheel is cached under ~/.cache/jaas-py/native keyed by a
# hash of the crate's sources (Cargo.toml, Cargo.lock, src/, pyproject.toml,
# the type stub, the patched jrsonnet crates in vendor/), this script and
# `rustc --version`: when it exists this script only makes sure it is the one
# installed (a stamp in the virtualenv).
# Cargo's target directory lives in the cache too, so a rebuild after a
# change is incremental. Prints the wheel's path on its last line.
#
# Environment: JAAS_CACHE (default ~/.cache/jaas-py), JAAS_VENV (default
# .venv at the repository root; it must exist: `make venv`), and the usual
# cargo variables (CARGO_HOME, CARGO_NET_OFFLINE, ...), which are respected.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
native="$root/native"
JAAS_CACHE="${JAAS_CACHE:-$HOME/.cache/jaas-py}"
venv="${JAAS_VENV:-$root/.venv}"
py="$venv/bin/python"
start=$(date +%s)

if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
  echo "error: the Rust toolchain is not installed (no 'cargo' or 'rustc' on PATH); the native Jsonnet module jaas-jrsonnet (native/) is built with cargo and maturin and needs Rust >= 1.85" >&2
  exit 3
fi
if [ ! -x "$py" ]; then
  echo "error: no virtualenv at $venv to install jaas-jrsonnet into; run 'make venv' first" >&2
  exit 2
fi
rustver=$(rustc --version)
key=$(
  {
    echo "$rustver"
    cd "$native" && find Cargo.toml Cargo.lock pyproject.toml jaas_jrsonnet.pyi src vendor -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    cd "$here" && sha256sum build.sh
  } | sha256sum | cut -c1-16
)
wheeldir="$JAAS_CACHE/native/wheels/$key"
export CARGO_TARGET_DIR="$JAAS_CACHE/native/target"

find_wheel() {
  local found
  for found in "$wheeldir"/jaas_jrsonnet-*.whl; do
    [ -f "$found" ] && echo "$found" && return
  done
  return 0
}

wheel=$(find_wheel)
if [ -z "$wheel" ]; then
  maturin="$venv/bin/maturin"
  if [ ! -x "$maturin" ]; then
    "$py" -m pip install --quiet 'maturin>=1.16,<1.17'
  fi
  echo "building jaas-jrsonnet (native/) with $rustver into $wheeldir (a cold build takes about 2 minutes on 2 cores)" >&2
  rm -rf "$wheeldir.tmp" && mkdir -p "$wheeldir.tmp"
  if ! cargo fetch --locked --manifest-path "$native/Cargo.toml" >/dev/null 2>"$wheeldir.tmp/fetch.log"; then
    echo "error: 'cargo fetch' could not get the crates native/Cargo.lock pins; is the crates.io registry reachable (and cargo not offline)?" >&2
    cat "$wheeldir.tmp/fetch.log" >&2
    exit 4
  fi
  # --frozen: the crates are fetched, the build itself needs no network.
  "$maturin" build --release --frozen --manifest-path "$native/Cargo.toml" \
    --interpreter "$py" --out "$wheeldir.tmp" >&2
  rm -f "$wheeldir.tmp/fetch.log"
  rm -rf "$wheeldir" && mv "$wheeldir.tmp" "$wheeldir"
  wheel=$(find_wheel)
  echo "built in $(( $(date +%s) - start )) s: $(du -h "$wheel" | cut -f1) $(basename "$wheel")" >&2
fi

stamp="$venv/.jaas-jrsonnet"
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  "$py" -m pip install --quiet --no-index --no-deps --force-reinstall "$wheel"
  echo "$key" > "$stamp"
  echo "installed $(basename "$wheel") into $venv" >&2
fi
echo "jaas-jrsonnet ready in $(( $(date +%s) - start )) s" >&2
echo "$wheel"
