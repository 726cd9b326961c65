#!/usr/bin/env bash
# Read speed of a mounted snapshot: sequential MB/s and random 4 KiB read
# latency (p50/p99), cairn mount next to restic mount on the same file in the
# same run (restic and fuse3 are installed from Debian if missing).
# Usage: benches/mount_read.sh [SIZE_MIB] [RANDOM_READS] (default 1024 2000).
# Each measurement starts from a fresh mount, so no page cache is shared.
# Writes benches/results/mount-read-YYYY-MM-DD.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
READS=${2:-2000}
WORK=${BENCH_WORK:-$(mktemp -d /tmp/cairn-mount-bench-XXXXXX)}
MNT=$WORK/mnt
cleanup() {
  umount -l "$MNT" 2>/dev/null || true
  pkill -f "restic.*mount $MNT" 2>/dev/null || true
  pkill -f "cairn.*mount $MNT" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
if ! command -v restic >/dev/null || ! command -v fusermount3 >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic fuse3 >/dev/null
fi
cargo build --release -q -p cairn-cli
CAIRN=$PWD/target/release/cairn
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
mkdir -p "$WORK/src" "$MNT"
# Incompressible content (AES-CTR keystream): every read decrypts real chunks.
{ openssl enc -aes-128-ctr -pass pass:cairn-mount -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } |
  head -c $((MIB << 20)) >"$WORK/src/data.bin"
"$CAIRN" init --repo "$WORK/cairn" >/dev/null
"$CAIRN" backup --repo "$WORK/cairn" --quiet "$WORK/src"
restic init --repo "$WORK/restic" >/dev/null 2>&1
restic backup --repo "$WORK/restic" --quiet "$WORK/src" >/dev/null

cat >"$WORK/reader.py" <<'EOF'
import os, random, sys, time
mode, path = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
if mode == "seq":
    t = time.perf_counter(); n = 0
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        n += len(b)
    dt = time.perf_counter() - t
    print(f"{n / dt / 1e6:.1f}")
else:
    count = int(sys.argv[3]); rnd = random.Random(int(sys.argv[4]))
    lat = []
    for _ in range(count):
        off = rnd.randrange(0, size // 4096) * 4096
        t = time.perf_counter_ns()
        b = os.pread(fd, 4096, off)
        lat.append(time.perf_counter_ns() - t)
        assert len(b) == 4096
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1000
    print(f"{q(0.50):.0f}|{q(0.99):.0f}|{sum(lat) / len(lat) / 1000:.0f}")
EOF

FILE_REL=snapshots/latest${WORK}/src/data.bin
start_mount() { # tool
  case $1 in
    cairn) "$CAIRN" --repo "$WORK/cairn" mount "$MNT" >"$WORK/mount.log" 2>&1 & ;;
    restic) restic --repo "$WORK/restic" mount "$MNT" >"$WORK/mount.log" 2>&1 & ;;
  esac
  MPID=$!
  for _ in $(seq 1 600); do
    [ -e "$MNT/$FILE_REL" ] && return 0
    sleep 0.1
  done
  cat "$WORK/mount.log" >&2; exit 1
}
stop_mount() {
  kill -INT "$MPID" 2>/dev/null || true
  wait "$MPID" 2>/dev/null || true
  umount "$MNT" 2>/dev/null || true
}
run() { # tool mode -> result
  start_mount "$1"
  local r
  if [ "$2" = seq ]; then r=$(python3 "$WORK/reader.py" seq "$MNT/$FILE_REL")
  else r=$(python3 "$WORK/reader.py" rand "$MNT/$FILE_REL" "$READS" 42); fi
  # The content must be right, not just fast.
  if [ "$2" = seq ]; then cmp "$MNT/$FILE_REL" "$WORK/src/data.bin"; fi
  stop_mount
  echo "$r"
}
# Let the writeback of the backups finish before measuring.
sync; sleep 5
ROUNDS=${ROUNDS:-3}
declare -a ROWS
for n in $(seq 1 "$ROUNDS"); do
  for tool in cairn restic; do
    s=$(run "$tool" seq); r=$(run "$tool" rand)
    ROWS+=("$tool|$n|$s|$r")
  done
done
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
col() { # tool field -> median over rounds
  for row in "${ROWS[@]}"; do IFS='|' read -r t _ s p50 p99 mean <<<"$row"
    [ "$t" = "$1" ] || continue
    case $2 in seq) echo "$s" ;; p50) echo "$p50" ;; p99) echo "$p99" ;; esac
  done | median
}
DATE=$(date -u +%F)
OUT=benches/results/mount-read-$DATE.md
{
  echo "# Mounted snapshot read speed: cairn mount vs restic mount ($DATE)"
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB. Command: \`benches/mount_read.sh $MIB $READS\`."
  echo "One ${MIB} MiB incompressible file, backed up by each tool into a local repository;"
  echo "each measurement on a fresh mount. Sequential: 1 MiB \`read()\` calls from start to end"
  echo "(then \`cmp\` against the source). Random: $READS \`pread()\` of 4 KiB at random 4 KiB-aligned offsets."
  echo "$("$CAIRN" --version); $(restic version | head -1)."
  echo
  echo "| tool | round | sequential MB/s | random 4 KiB p50 (µs) | p99 (µs) | mean (µs) |"
  echo "|---|---|---|---|---|---|"
  for row in "${ROWS[@]}"; do
    IFS='|' read -r t n s p50 p99 mean <<<"$row"
    echo "| $t | $n | $s | $p50 | $p99 | $mean |"
  done
  echo
  echo "Medians over $ROUNDS rounds:"
  echo
  echo "| tool | sequential MB/s | random p50 (µs) | random p99 (µs) |"
  echo "|---|---|---|---|"
  for t in cairn restic; do echo "| $t | $(col $t seq) | $(col $t p50) | $(col $t p99) |"; done
  echo
  awk -v a="$(col cairn seq)" -v b="$(col restic seq)" 'BEGIN {printf "Sequential cairn/restic: %.2f× (target ≥ 2)\n\n", a/b}'
  awk -v a="$(col cairn p99)" -v b="$(col restic p99)" 'BEGIN {printf "Random 4 KiB p99 cairn/restic: %.2f (target ≤ 1)\n", a/b}'
} >"$OUT"
cat "$OUT"
