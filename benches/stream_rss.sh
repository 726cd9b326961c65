#!/usr/bin/env bash
# Peak RSS and wall time of backing up one large stream with cairn, next to
# restic on the same stream in the same run (restic is installed from Debian
# if missing). Usage: benches/stream_rss.sh [SIZE_GIB] (default 4).
# Writes benches/results/stream-rss-YYYY-MM-DD.md.
set -euo pipefail
cd "$(dirname "$0")/.."
GIB=${1:-4}
WORK=${BENCH_WORK:-$(mktemp -d /tmp/cairn-bench-XXXXXX)}
trap 'rm -rf "$WORK"' EXIT
if ! command -v restic >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null
fi
cargo build --release -q -p cairn-cli
CAIRN=$PWD/target/release/cairn
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
# A pseudo-random stream (incompressible, no dedup inside): AES-CTR keystream.
gen() { { openssl enc -aes-128-ctr -pass pass:cairn -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } | head -c $((GIB << 30)); }

measure() { # name, command... (stdin: the stream); prints name|peak RSS KiB|wall
  local name=$1; shift
  if ! gen | /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; then
    cat "$WORK/$name.err" "$WORK/$name.time" >&2; exit 1
  fi
  local rss wall
  rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$WORK/$name.time")
  wall=$(awk -F': ' '/Elapsed \(wall/ {print $2}' "$WORK/$name.time")
  echo "$name|$rss|$wall"
}

"$CAIRN" init --repo "$WORK/cairn" >/dev/null
restic init --repo "$WORK/restic" >/dev/null 2>&1
R1=$(measure cairn "$CAIRN" backup --repo "$WORK/cairn" --stdin --stdin-name stream --quiet)
R2=$(measure restic restic backup --repo "$WORK/restic" --stdin --stdin-filename stream --quiet)
RV=$(restic version | head -1)
CV=$($CAIRN --version)
DATE=$(date -u +%F)
OUT=benches/results/stream-rss-$DATE.md
{
  echo "# ${GIB} GiB stream backup: peak RSS and wall time ($DATE)"
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB. Command: \`benches/stream_rss.sh $GIB\`."
  echo "Stream: AES-CTR keystream (incompressible), piped to \`backup --stdin\`. $CV; $RV."
  echo
  echo "| tool | peak RSS (KiB) | wall time |"
  echo "|---|---|---|"
  for r in "$R1" "$R2"; do IFS='|' read -r n rss wall <<<"$r"; echo "| $n | $rss | $wall |"; done
  c=$(cut -d'|' -f2 <<<"$R1"); r=$(cut -d'|' -f2 <<<"$R2")
  echo
  echo "cairn / restic peak RSS ratio: $(awk -v a="$c" -v b="$r" 'BEGIN {printf "%.2f", a/b}')"
} >"$OUT"
cat "$OUT"
