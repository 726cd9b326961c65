#!/usr/bin/env bash
# Crash torture with the real binary: N times (default 200), start a backup
# (or a forget + prune) and SIGKILL it at a random moment; after every kill,
# `cairn check --read-data` must pass, and every 20 kills (and at the end)
# every snapshot must restore byte-identical to the source state its backup
# saw — those reported committed, and any a killed backup managed to commit.
# Usage: benches/crash_torture.sh [KILLS] [SEED]
# Writes benches/results/crash-torture-YYYY-MM-DD.md.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-200}
SEED=${2:-1}
RANDOM=$SEED
WORK=$(mktemp -d /tmp/cairn-crash-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cargo build --release -q -p cairn-cli
CAIRN=$PWD/target/release/cairn
export CAIRN_REPOSITORY=$WORK/repo CAIRN_PASSWORD=torture
"$CAIRN" init -q --kdf-memory-kib 1024 --kdf-iterations 1 --kdf-parallelism 1 --insecure-kdf >/dev/null
SRC=$WORK/src
mkdir -p "$SRC" "$WORK/manifests"
manifest() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum); }
mutate() { # change the source a little: new files, rewritten files, removals
  local n=$((RANDOM % 4 + 1))
  for _ in $(seq 1 $n); do
    local f=$SRC/d$((RANDOM % 4))/f$((RANDOM % 10))
    mkdir -p "$(dirname "$f")"
    head -c $(((RANDOM % 128 + 1) * 65536)) /dev/urandom >"$f"
  done
  if [ $((RANDOM % 3)) = 0 ]; then
    find "$SRC" -type f | shuf -n 1 --random-source=<(yes "$RANDOM") | xargs -r rm -f
  fi
}
verify_all() { # every visible snapshot restores to the manifest of its attempt
  local ids n=0
  ids=$("$CAIRN" snapshots --json | python3 -c 'import json,sys; [print(s["id"], ",".join(s.get("tags") or [])) for s in json.load(sys.stdin)]')
  while read -r id tags; do
    [ -n "$id" ] || continue
    local attempt=${tags#attempt-}
    local t=$WORK/restore
    rm -rf "$t"
    "$CAIRN" restore -q "$id" --target "$t" >/dev/null
    if ! diff <(manifest "$t$SRC") "$WORK/manifests/$attempt" >/dev/null; then
      echo "snapshot $id (attempt $attempt) does not restore to what it backed up" >&2
      exit 1
    fi
    n=$((n + 1))
  done <<<"$ids"
  VERIFIED=$((VERIFIED + n))
}

committed=0 killed_backup=0 killed_prune=0 finished=0 checks=0 VERIFIED=0 commit_after_kill=0
start=$(date +%s)
for i in $(seq 1 "$KILLS"); do
  if [ $((RANDOM % 10)) -lt 7 ] || [ $i -lt 5 ]; then
    mutate
    manifest "$SRC" >"$WORK/manifests/$i"
    "$CAIRN" backup -q --tag "attempt-$i" "$SRC" >/dev/null 2>&1 &
    kind=backup
  else
    # Forget two random snapshots, then prune with no grace period.
    ids=$("$CAIRN" snapshots --json | python3 -c 'import json,sys,random; s=json.load(sys.stdin); random.seed('"$i"'); print(" ".join(x["id"] for x in random.sample(s, min(2, max(0, len(s)-3)))))')
    if [ -n "$ids" ]; then
      "$CAIRN" forget -q --prune --keep-delete 0s $ids >/dev/null 2>&1 &
    else
      "$CAIRN" prune -q --keep-delete 0s >/dev/null 2>&1 &
    fi
    kind=prune
  fi
  pid=$!
  # A random moment within the first 0.6 s (operations here take 0.1–0.6 s).
  sleep "0.$((RANDOM % 6))$((RANDOM % 10))$((RANDOM % 10))"
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    [ $kind = backup ] && killed_backup=$((killed_backup + 1)) || killed_prune=$((killed_prune + 1))
  else
    wait "$pid" 2>/dev/null || true
    finished=$((finished + 1))
    [ $kind = backup ] && committed=$((committed + 1))
  fi
  if ! "$CAIRN" check -q --read-data >"$WORK/check.out" 2>&1; then
    cat "$WORK/check.out" >&2
    echo "check failed after kill $i ($kind)" >&2
    exit 1
  fi
  checks=$((checks + 1))
  if [ $((i % 20)) = 0 ]; then verify_all; fi
done
verify_all
secs=$(($(date +%s) - start))
snaps=$("$CAIRN" snapshots --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
DATE=$(date -u +%F)
OUT=benches/results/crash-torture-$DATE.md
{
  echo "# Crash torture with SIGKILL ($DATE)"
  echo
  echo "Command: \`benches/crash_torture.sh $KILLS $SEED\` ($(nproc) cores, release build)."
  echo
  echo "| figure | value |"
  echo "|---|---|"
  echo "| attempts | $KILLS |"
  echo "| backups killed (SIGKILL) | $killed_backup |"
  echo "| forget + prune killed (SIGKILL) | $killed_prune |"
  echo "| operations that finished before the kill | $finished (of which backups: $committed) |"
  echo "| \`check --read-data\` runs after a kill, all clean | $checks |"
  echo "| snapshot restores verified byte-identical (every 20 attempts and at the end) | $VERIFIED |"
  echo "| snapshots at the end | $snaps |"
  echo "| wall time | ${secs} s |"
} >"$OUT"
cat "$OUT"
