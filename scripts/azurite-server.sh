#!/usr/bin/env bash
# Run a local Azure Blob Storage emulator (Azurite, Microsoft's, from npm) on
# 127.0.0.1:PORT for tests and benchmarks; installs it on first use.
# Usage: scripts/azurite-server.sh PORT [DATA_DIR]
# Account devstoreaccount1 with Azurite's well-known key: cairn reaches it
# with `-o use_emulator=true -o endpoint=http://127.0.0.1:PORT/devstoreaccount1`.
set -euo pipefail
PORT=${1:?usage: azurite-server.sh PORT [DATA_DIR]}
DATA=${2:-$(mktemp -d /tmp/cairn-azurite-XXXXXX)}
DIR=${CAIRN_TOOLS_DIR:-$HOME/.cache/cairn}/azurite
AZURITE_VERSION=3.35.0
BIN=$DIR/node_modules/.bin/azurite-blob
if [ ! -x "$BIN" ] || ! grep -q "\"version\": \"$AZURITE_VERSION\"" "$DIR/node_modules/azurite/package.json" 2>/dev/null; then
  mkdir -p "$(dirname "$DIR")"
  exec 9>"$DIR.lock"
  flock 9
  if [ ! -x "$BIN" ]; then
    echo "installing azurite $AZURITE_VERSION into $DIR (once)" >&2
    rm -rf "$DIR.tmp" && mkdir -p "$DIR.tmp"
    npm install --prefix "$DIR.tmp" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2
    rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
  fi
  flock -u 9
fi
exec node "$DIR/node_modules/azurite/dist/src/blob/main.js" --blobHost 127.0.0.1 --blobPort "$PORT" \
  --location "$DATA" --skipApiVersionCheck --loose --silent 2>>"${CAIRN_AZURITE_LOG:-/dev/null}"
