#!/usr/bin/env bash
# Render an HTML file in headless Chromium (Debian's package, installed on
# first use) and write a PNG screenshot of it.
# Usage: scripts/chromium.sh PAGE.html OUT.png [WIDTHxHEIGHT]
set -euo pipefail
PAGE=${1:?usage: chromium.sh PAGE.html OUT.png [WIDTHxHEIGHT]}
OUT=${2:?usage: chromium.sh PAGE.html OUT.png [WIDTHxHEIGHT]}
SIZE=${3:-1000x1400}
if ! command -v chromium >/dev/null; then
  exec 9>/tmp/cairn-chromium-install.lock
  flock 9
  if ! command -v chromium >/dev/null; then
    echo "installing Debian's chromium (once)" >&2
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
  fi
  flock -u 9
fi
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
# The background-networking flags keep Chromium off this machine's closed network.
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$PROFILE" --hide-scrollbars --window-size="${SIZE/x/,}" \
  --screenshot="$OUT" "file://$(realpath "$PAGE")" >&2 2>/dev/null
test -s "$OUT"
