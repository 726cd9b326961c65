#!/usr/bin/env bash
# Run a command under libfaketime (Debian's `faketime`), installing it on
# first use: the clock-skew tests run cairn with a host clock days off.
# Usage: scripts/faketime.sh OFFSET CMD ARGS...   (OFFSET like +2d or -2d)
set -euo pipefail
OFFSET=${1:?usage: faketime.sh OFFSET CMD ARGS...}
shift
if ! command -v faketime >/dev/null 2>&1; then
  exec 9>/tmp/cairn-faketime-install.lock
  flock 9
  if ! command -v faketime >/dev/null 2>&1; then
    echo "installing faketime (once)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q faketime >&2 || { apt-get update -q >&2 && apt-get install -y -q faketime >&2; }
  fi
  flock -u 9
fi
exec faketime -f "$OFFSET" "$@"
