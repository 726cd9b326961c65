#!/usr/bin/env bash
# Backup, restore and `check --read-data` throughput on a local S3 server (moto, started here)
# against local disk, and against restic on the same S3 server and data, in
# one run. Peers at their defaults (restic: repository v2, zstd auto, 5 S3
# connections); cairn at its defaults (8 connections on object storage).
# Usage: benches/s3_peers.sh [SCALE] [ROUNDS]   (default 0.1 ≈ 240 MB, 3 rounds)
# Writes benches/results/s3-YYYY-MM-DD-scaleSCALE.md and .csv (medians of ROUNDS).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-0.1}
ROUNDS=${2:-3}
WORK=${BENCH_WORK:-$(mktemp -d /tmp/cairn-s3-bench-XXXXXX)}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
S3PID=
cleanup() {
  [ -n "$S3PID" ] && kill "$S3PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
command -v restic >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null
}
cargo build --release -q -p cairn-cli
CAIRN=$PWD/target/release/cairn
scripts/s3-server.sh "$PORT" &
S3PID=$!
until curl -sf "http://127.0.0.1:$PORT/" >/dev/null; do sleep 0.3; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
S3OPTS=(-o "endpoint=http://127.0.0.1:$PORT" -o allow_http=true)

python3 ../shared/bench/gen_data.py gen --out "$WORK/src" --scale "$SCALE" >/dev/null
BYTES=$(du -sb "$WORK/src" | cut -f1)
echo "dataset: $BYTES bytes (scale $SCALE)"

CSV=$WORK/raw.csv
echo "round,tool,store,step,seconds,max_rss_kib" >"$CSV"
measure() { # round tool store step cmd...
  local r=$1 tool=$2 store=$3 step=$4
  shift 4
  sync
  /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" >/dev/null 2>"$WORK/err" || {
    cat "$WORK/err"
    echo "$tool $store $step failed"
    exit 1
  }
  read -r secs rss <"$WORK/t"
  echo "$r,$tool,$store,$step,$secs,$rss" >>"$CSV"
  echo "round $r: $tool $store $step ${secs}s (RSS ${rss} KiB)"
}
verify() {
  diff -r "$WORK/src" "$1$WORK/src" >/dev/null || { echo "restore into $1 differs"; exit 1; }
  rm -rf "$1"
}
for r in $(seq 1 "$ROUNDS"); do
  B=bench-r$r
  curl -sf -X PUT "http://127.0.0.1:$PORT/$B" >/dev/null
  # cairn on S3
  "$CAIRN" -r "s3://$B/cairn" "${S3OPTS[@]}" init >/dev/null 2>&1
  measure "$r" cairn s3 backup "$CAIRN" -r "s3://$B/cairn" "${S3OPTS[@]}" --no-cache -q backup "$WORK/src"
  measure "$r" cairn s3 restore "$CAIRN" -r "s3://$B/cairn" "${S3OPTS[@]}" --no-cache -q restore latest --target "$WORK/out"
  verify "$WORK/out"
  measure "$r" cairn s3 check "$CAIRN" -r "s3://$B/cairn" "${S3OPTS[@]}" --no-cache -q check --read-data
  # cairn on local disk
  "$CAIRN" -r "$WORK/cairn-local" init >/dev/null 2>&1
  measure "$r" cairn local backup "$CAIRN" -r "$WORK/cairn-local" -q backup "$WORK/src"
  measure "$r" cairn local restore "$CAIRN" -r "$WORK/cairn-local" -q restore latest --target "$WORK/out"
  verify "$WORK/out"
  rm -rf "$WORK/cairn-local"
  # restic on the same S3 server
  RR="s3:http://127.0.0.1:$PORT/$B/restic"
  restic -r "$RR" init >/dev/null 2>&1
  measure "$r" restic s3 backup restic -r "$RR" --no-cache -q backup "$WORK/src"
  measure "$r" restic s3 restore restic -r "$RR" --no-cache -q restore latest --target "$WORK/out"
  verify "$WORK/out"
  measure "$r" restic s3 check restic -r "$RR" --no-cache -q check --read-data
done

DATE=$(date -u +%Y-%m-%d)
OUT=benches/results/s3-$DATE-scale$SCALE
mkdir -p benches/results
cp "$CSV" "$OUT.csv"
python3 - "$CSV" "$BYTES" "$SCALE" "$ROUNDS" "$(restic version | head -1)" >"$OUT.md" <<'EOF'
import csv, statistics, sys
path, nbytes, scale, rounds, restic_v = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rows = list(csv.DictReader(open(path)))
med = {}
for key in {(r["tool"], r["store"], r["step"]) for r in rows}:
    xs = [float(r["seconds"]) for r in rows if (r["tool"], r["store"], r["step"]) == key]
    rss = [int(r["max_rss_kib"]) for r in rows if (r["tool"], r["store"], r["step"]) == key]
    med[key] = (statistics.median(xs), max(rss), xs)
print(f"# S3 throughput: cairn vs restic on one local S3 server (moto), {rounds} rounds\n")
print(f"Dataset: `gen_data.py gen --scale {scale}` = {nbytes/1e6:.0f} MB. {restic_v}. Medians of {rounds} rounds; MB/s = dataset bytes / wall seconds. Command: `benches/s3_peers.sh {scale} {rounds}`.\n")
print("| tool | store | step | median s | MB/s | peak RSS KiB | rounds (s) |")
print("|---|---|---|---|---|---|---|")
for key in sorted(med):
    s, rss, xs = med[key]
    print(f"| {key[0]} | {key[1]} | {key[2]} | {s:.2f} | {nbytes/s/1e6:.1f} | {rss} | {' / '.join(f'{x:.2f}' for x in xs)} |")
print()
for step in ("backup", "restore", "check"):
    c, r = med[("cairn", "s3", step)][0], med[("restic", "s3", step)][0]
    print(f"- {step} on S3: cairn {nbytes/c/1e6:.1f} MB/s vs restic {nbytes/r/1e6:.1f} MB/s = **{r/c:.2f}×**")
for step in ("backup", "restore"):
    c, l = med[("cairn", "s3", step)][0], med[("cairn", "local", step)][0]
    print(f"- cairn {step}: S3 {nbytes/c/1e6:.1f} MB/s vs local disk {nbytes/l/1e6:.1f} MB/s")
EOF
cat "$OUT.md"
