#!/usr/bin/env bash
# Run a local Google Cloud Storage emulator (gcp-storage-emulator, from PyPI)
# on 127.0.0.1:PORT for tests and benchmarks; installs it into a virtualenv on
# first use. cairn reaches it with `-o base_url=http://127.0.0.1:PORT
# -o skip_signature=true`.
# Usage: scripts/gcs-server.sh PORT
set -euo pipefail
PORT=${1:?usage: gcs-server.sh PORT}
DIR=${CAIRN_TOOLS_DIR:-$HOME/.cache/cairn}/gcs-emulator
VERSION=2026.7.19
if [ ! -x "$DIR/bin/python" ] || ! "$DIR/bin/python" -c "import gcp_storage_emulator" 2>/dev/null; then
  mkdir -p "$(dirname "$DIR")"
  exec 9>"$DIR.lock"
  flock 9
  if ! "$DIR/bin/python" -c "import gcp_storage_emulator" 2>/dev/null; then
    echo "installing gcp-storage-emulator $VERSION into $DIR (once)" >&2
    rm -rf "$DIR.tmp"
    python3 -m venv "$DIR.tmp"
    "$DIR.tmp/bin/pip" install -q --disable-pip-version-check "gcp-storage-emulator==$VERSION" >&2
    rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
  fi
  flock -u 9
fi
exec "$DIR/bin/python" -m gcp_storage_emulator start --host 127.0.0.1 --port "$PORT" --in-memory \
  2>>"${CAIRN_GCS_LOG:-/dev/null}"
