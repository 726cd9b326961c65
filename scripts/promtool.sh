#!/usr/bin/env bash
# Run Prometheus's `promtool` (from Debian's `prometheus` package), fetching
# it on first use. Only the promtool binary is unpacked, into a cache
# directory: installing the package would also install and start a
# Prometheus server. Usage: scripts/promtool.sh ARGS...
#   e.g. scripts/promtool.sh check metrics < metrics.prom
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exec promtool "$@"
fi
DIR=${CAIRN_PROMTOOL_DIR:-/tmp/cairn-promtool}
BIN="$DIR/usr/bin/promtool"
if [ ! -x "$BIN" ]; then
  mkdir -p "$DIR"
  exec 9>"$DIR.lock"
  flock 9
  if [ ! -x "$BIN" ]; then
    echo "fetching promtool (once)" >&2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    ( cd "$work" && { apt-get download prometheus >&2 2>/dev/null || { apt-get update -q >&2 && apt-get download prometheus >&2; }; } )
    dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
    mkdir -p "$DIR/usr/bin"
    cp "$work/x/usr/bin/promtool" "$BIN.tmp"
    mv "$BIN.tmp" "$BIN"
  fi
  flock -u 9
fi
exec "$BIN" "$@"
