#!/usr/bin/env bash
# Run one of the file-metadata tools the round-trip tests compare with
# (getfattr/setfattr from Debian's `attr`, getfacl/setfacl from `acl`,
# getcap/setcap from `libcap2-bin`), installing them on first use.
# Usage: scripts/fs-tools.sh TOOL ARGS...
set -euo pipefail
TOOL=${1:?usage: fs-tools.sh TOOL ARGS...}
shift
need() {
  command -v getfattr >/dev/null 2>&1 && command -v getfacl >/dev/null 2>&1 && command -v getcap >/dev/null 2>&1
}
if ! need; then
  exec 9>/tmp/cairn-fs-tools-install.lock
  flock 9
  if ! need; then
    echo "installing attr, acl and libcap2-bin (once)" >&2
    export DEBIAN_FRONTEND=noninteractive
    pkgs="attr acl libcap2-bin"
    apt-get install -y -q $pkgs >&2 || { apt-get update -q >&2 && apt-get install -y -q $pkgs >&2; }
  fi
  flock -u 9
fi
exec "$TOOL" "$@"
