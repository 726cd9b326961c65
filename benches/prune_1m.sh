#!/usr/bin/env bash
# Prune on a repository with about 1 million blobs and 100 snapshots: wall
# time and peak RSS of `forget --keep-last 50` + `prune` (phase 1) and of the
# second prune that deletes (phase 2), next to restic's prune on the same data
# in the same run. Usage: benches/prune_1m.sh [SNAPSHOTS] [MIB_PER_SNAPSHOT]
# (defaults 100 and 2.5: 250 MiB of data in ~1 M chunks of ~256 bytes).
# Writes benches/results/prune-1m-YYYY-MM-DD.md.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
MIB=${2:-2.5}
WORK=${BENCH_WORK:-$(mktemp -d /tmp/cairn-prune-bench-XXXXXX)}
trap 'rm -rf "$WORK"' EXIT
if ! command -v restic >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null
fi
cargo build --release -q -p cairn-cli
CAIRN=$PWD/target/release/cairn
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
BYTES=$(python3 -c "print(int($MIB * 1048576))")
# Tiny chunks so that ~N*MIB MiB make ~1 M blobs (restic cannot be told to
# chunk this small: its blob count is reported next to its figures).
"$CAIRN" init --repo "$WORK/cairn" --chunk-min 128 --chunk-avg 256 --chunk-max 1024 --kdf-memory-kib 8192 --kdf-iterations 1 --insecure-kdf >/dev/null
restic init --repo "$WORK/restic" >/dev/null 2>&1
gen() { openssl enc -aes-128-ctr -pass "pass:s$1" -nosalt -pbkdf2 </dev/zero 2>/dev/null | head -c "$BYTES" || true; }
for i in $(seq 1 "$N"); do
  gen "$i" | "$CAIRN" backup --repo "$WORK/cairn" --stdin --stdin-name "s$i" --quiet >/dev/null
  gen "$i" | restic backup --repo "$WORK/restic" --stdin --stdin-filename "s$i" --quiet >/dev/null
done
BLOBS=$("$CAIRN" stats --repo "$WORK/cairn" --json | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['data_blobs']+d['tree_blobs'])")
RBLOBS=$(restic stats --repo "$WORK/restic" --mode raw-data --json 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin).get('total_blob_count','?'))")
measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || { cat "$WORK/$name.err" >&2; exit 1; }
  echo "| $name | $(awk -F': ' '/Elapsed \(wall/ {print $2}' "$WORK/$name.time") | $(awk -F': ' '/Maximum resident/ {print $2}' "$WORK/$name.time") |"
}
R=()
R+=("$(measure "cairn forget --keep-last 50" "$CAIRN" forget --repo "$WORK/cairn" --keep-last 50 --group-by "")")
R+=("$(measure "cairn prune (phase 1: mark)" "$CAIRN" prune --repo "$WORK/cairn" --max-unused 0%)")
R+=("$(measure "cairn prune (phase 2: delete)" "$CAIRN" prune --repo "$WORK/cairn" --keep-delete 0s)")
R+=("$(measure "restic forget --keep-last 50" restic forget --repo "$WORK/restic" --keep-last 50 --group-by "")")
R+=("$(measure "restic prune" restic prune --repo "$WORK/restic" --max-unused 0)")
R+=("$(measure "cairn check --read-data" "$CAIRN" check --repo "$WORK/cairn" --read-data)")
DATE=$(date -u +%F)
OUT=benches/results/prune-1m-$DATE.md
{
  echo "# prune on ~1 M blobs and $N snapshots ($DATE)"
  echo
  echo "Command: \`benches/prune_1m.sh $N $MIB\`. Machine: $(nproc) cores. $($CAIRN --version); $(restic version | head -1)."
  echo "Data: $N streams of $MIB MiB (AES-CTR keystream), one snapshot each. cairn chunks 128/256/1024 B: $BLOBS blobs."
  echo "restic on the same streams (its own chunker, 512 KiB–8 MiB): $RBLOBS blobs, so its figures are a reference point, not a like-for-like ratio."
  echo
  echo "| step | wall | peak RSS (KiB) |"
  echo "|---|---|---|"
  printf '%s\n' "${R[@]}"
} >"$OUT"
cat "$OUT"
