#!/usr/bin/env bash
# Run a local S3 server (moto, from PyPI) on 127.0.0.1:PORT for tests and
# benchmarks; installs it into a virtualenv on first use.
# Usage: scripts/s3-server.sh PORT
set -euo pipefail
PORT=${1:?usage: s3-server.sh PORT}
DIR=${CAIRN_TOOLS_DIR:-$HOME/.cache/cairn}/moto
MOTO_VERSION=5.2.5
if [ ! -x "$DIR/bin/moto_server" ] || ! "$DIR/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  # Several test threads may start servers at once: one installs.
  mkdir -p "$(dirname "$DIR")"
  exec 9>"$DIR.lock"
  flock 9
  if [ ! -x "$DIR/bin/moto_server" ]; then
    echo "installing moto $MOTO_VERSION into $DIR (once)" >&2
    rm -rf "$DIR.tmp"
    python3 -m venv "$DIR.tmp"
    "$DIR.tmp/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
    rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
    # The venv's scripts name the .tmp path in their shebang; call through python.
  fi
  flock -u 9
fi
exec "$DIR/bin/python" -m moto.server -H 127.0.0.1 -p "$PORT" 2>>"${CAIRN_S3_LOG:-/dev/null}"
