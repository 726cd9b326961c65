#!/usr/bin/env bash
# cairn against restic, rustic and borg on the same machine, data and run:
# init, backup day 0, mutate, backup day 1, restore (verified byte for byte),
# full data check, forget keeping the last snapshot + prune. Wall time,
# user+sys CPU and peak RSS of every step (/usr/bin/time), repository size
# after every step. Peers at their defaults plus what the issue asks:
# restic repository v2 (zstd auto), borg --compression zstd,3 with repokey
# encryption, rustic defaults. Repositories on local disk.
#
# Usage: benches/peers.sh [SCALE] [TOOLS]   (default 1.0 ≈ 2.3 GiB; TOOLS
#        default "cairn restic rustic borg"; "cairn-prev" measures the
#        binary CAIRN_PREV, e.g. a release build of the commit before a
#        change, the same way as cairn, in the same run)
# Writes benches/results/peers-YYYY-MM-DD[-scaleS].md and .csv.
# Installs what is missing: restic and borgbackup from Debian, rustic-rs
# with `cargo install --locked` into ${CAIRN_TOOLS_DIR:-~/.cache/cairn}/rustic
# (kept between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-1.0}
TOOLS=${2:-cairn restic rustic borg}
WORK=${BENCH_WORK:-$(mktemp -d /var/tmp/cairn-peers-XXXXXX)}
TOOLSDIR=${CAIRN_TOOLS_DIR:-$HOME/.cache/cairn}
trap 'rm -rf "$WORK"' EXIT

need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
command -v borg >/dev/null || need_apt+=(borgbackup)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
RUSTIC=$TOOLSDIR/rustic/bin/rustic
if [[ " $TOOLS " == *" rustic "* ]] && [ ! -x "$RUSTIC" ]; then
  echo "installing rustic-rs (once) into $TOOLSDIR/rustic"
  cargo install --locked -q rustic-rs --root "$TOOLSDIR/rustic"
fi
cargo build --release -q -p cairn-cli
CAIRN=$PWD/target/release/cairn

export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench RUSTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR=$WORK/borg-base RESTIC_CACHE_DIR=$WORK/restic-cache
export CAIRN_CACHE_DIR=$WORK/cairn-cache XDG_CACHE_HOME=$WORK/xdg-cache

SRC=$WORK/src
python3 ../shared/bench/gen_data.py gen --out "$SRC" --scale "$SCALE" >/dev/null
DAY0=$(du -sb "$SRC" | cut -f1)
echo "dataset day 0: $DAY0 bytes (scale $SCALE)"

CSV=$WORK/raw.csv
echo "tool,step,wall_s,user_s,sys_s,max_rss_kib,repo_bytes" >"$CSV"
repo_of() { echo "$WORK/repo-$1"; }
measure() { # tool step cmd...
  local tool=$1 step=$2
  shift 2
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  if ! /usr/bin/time -f "%e %U %S %M" -o "$WORK/t" "$@" >"$WORK/stdout" 2>"$WORK/err"; then
    cat "$WORK/err" "$WORK/stdout" | tail -20
    echo "$tool $step failed"
    exit 1
  fi
  read -r wall user sys rss <"$WORK/t"
  local size
  size=$(du -sb "$(repo_of "$tool")" | cut -f1)
  echo "$tool,$step,$wall,$user,$sys,$rss,$size" >>"$CSV"
  printf '%-10s %-10s wall %7.2fs cpu %7.2fs rss %8d KiB repo %12d B\n' "$tool" "$step" "$wall" "$(echo "$user + $sys" | bc)" "$rss" "$size"
}
verify() { # restored-root
  diff -r "$SRC" "$1" >/dev/null || { echo "restore into $1 differs from the source"; exit 1; }
}

run_step() { # tool step
  local t=$1 s=$2 R C=$CAIRN
  R=$(repo_of "$t")
  [ "$t" = cairn-prev ] && C=${CAIRN_PREV:?cairn-prev needs CAIRN_PREV=/path/to/cairn}
  case "$t:$s" in
    cairn*:init) measure "$t" init "$C" -r "$R" init ;;
    cairn*:backup*) measure "$t" "$s" "$C" -r "$R" -q backup "$SRC" ;;
    cairn*:restore) measure "$t" restore "$C" -r "$R" -q restore latest --target "$WORK/out" ;;
    cairn*:check) measure "$t" check "$C" -r "$R" -q check --read-data ;;
    cairn*:prune) measure "$t" forget+prune "$C" -r "$R" -q forget --keep-last 1 --prune --instant-delete ;;
    restic:init) measure restic init restic -r "$R" init --repository-version 2 ;;
    restic:backup*) measure restic "$s" restic -r "$R" -q backup "$SRC" ;;
    restic:restore) measure restic restore restic -r "$R" -q restore latest --target "$WORK/out" ;;
    restic:check) measure restic check restic -r "$R" -q check --read-data ;;
    restic:prune) measure restic forget+prune restic -r "$R" -q forget --keep-last 1 --prune ;;
    rustic:init) measure rustic init "$RUSTIC" -r "$R" init ;;
    rustic:backup*) measure rustic "$s" "$RUSTIC" -r "$R" --no-progress backup "$SRC" ;;
    rustic:restore) measure rustic restore "$RUSTIC" -r "$R" --no-progress restore latest "$WORK/out" ;;
    rustic:check) measure rustic check "$RUSTIC" -r "$R" --no-progress check --read-data ;;
    rustic:prune) measure rustic forget+prune "$RUSTIC" -r "$R" --no-progress forget --keep-last 1 --prune ;;
    borg:init) measure borg init borg init -e repokey "$R" ;;
    borg:backup0) measure borg backup0 borg create --compression zstd,3 "$R::day0" "$SRC" ;;
    borg:backup1) measure borg backup1 borg create --compression zstd,3 "$R::day1" "$SRC" ;;
    borg:restore) mkdir -p "$WORK/out" && (cd "$WORK/out" && measure borg restore borg extract "$R::day1") ;;
    borg:check) measure borg check borg check --verify-data "$R" ;;
    borg:prune) measure borg forget+prune sh -c "borg prune --keep-last 1 '$R' && borg compact '$R'" ;;
  esac
}

for t in $TOOLS; do run_step "$t" init; run_step "$t" backup0; done
python3 ../shared/bench/gen_data.py mutate --dir "$SRC" --day 1 >/dev/null
DAY1=$(du -sb "$SRC" | cut -f1)
for t in $TOOLS; do
  run_step "$t" backup1
  rm -rf "$WORK/out"
  run_step "$t" restore
  verify "$WORK/out$SRC"
  rm -rf "$WORK/out"
  run_step "$t" check
  run_step "$t" prune
done

DATE=$(date -u +%Y-%m-%d)
OUT=benches/results/peers-$DATE
[ "$SCALE" = "1.0" ] || OUT=$OUT-scale$SCALE
mkdir -p benches/results
cp "$CSV" "$OUT.csv"
VERSIONS=$WORK/versions
{
  echo "cairn $(git rev-parse --short HEAD) (release build)"
  restic version 2>/dev/null | head -1
  [ -x "$RUSTIC" ] && "$RUSTIC" --version 2>/dev/null | head -1
  borg --version 2>/dev/null | head -1
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r)"
} >"$VERSIONS"
python3 - "$CSV" "$DAY0" "$DAY1" "$SCALE" "$VERSIONS" >"$OUT.md" <<'EOF'
import csv, sys
path, day0, day1, scale, vpath = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = list(csv.DictReader(open(path)))
tools = list(dict.fromkeys(r["tool"] for r in rows))
steps = list(dict.fromkeys(r["step"] for r in rows))
get = {(r["tool"], r["step"]): r for r in rows}
print(f"# cairn vs restic, rustic and borg — local disk, one run\n")
print(f"Dataset: `gen_data.py gen --scale {scale}` = {day0/1e6:.0f} MB (day 0), after `mutate --day 1` {day1/1e6:.0f} MB. "
      f"Command: `benches/peers.sh {scale}`. Every restore was compared with the source (`diff -r`). "
      "Page cache dropped before every step.\n")
print("Versions and machine:\n")
for l in open(vpath):
    print(f"- {l.strip()}")
print("\nPeer commands: restic `init --repository-version 2`, `backup`, `restore latest --target`, `check --read-data`, "
      "`forget --keep-last 1 --prune`; rustic `init`, `backup`, `restore latest`, `check --read-data`, `forget --keep-last 1 --prune`; "
      "borg `init -e repokey`, `create --compression zstd,3`, `extract`, `check --verify-data`, `prune --keep-last 1` + `compact`; "
      "cairn `init`, `backup`, `restore latest`, `check --read-data`, `forget --keep-last 1 --prune --instant-delete`.\n")
for metric, col, fmt in (("Wall time (s)", "wall_s", "{:.2f}"), ("CPU user+sys (s)", None, "{:.2f}"),
                         ("Peak RSS (MiB)", "max_rss_kib", "{:.0f}"), ("Repository size after the step (MB)", "repo_bytes", "{:.1f}")):
    print(f"## {metric}\n")
    prev = "cairn-prev" in tools
    print("| step | " + " | ".join(tools) + " | cairn / best peer |" + (" cairn / cairn-prev |" if prev else ""))
    print("|---|" + "---|" * (len(tools) + 1 + prev))
    for s in steps:
        vals = {}
        for t in tools:
            r = get.get((t, s))
            if not r:
                continue
            if col is None:
                v = float(r["user_s"]) + float(r["sys_s"])
            elif col == "max_rss_kib":
                v = int(r[col]) / 1024
            elif col == "repo_bytes":
                v = int(r[col]) / 1e6
            else:
                v = float(r[col])
            vals[t] = v
        peers = [v for t, v in vals.items() if not t.startswith("cairn")]
        ratio = f"{vals['cairn'] / min(peers):.2f}" if "cairn" in vals and peers and min(peers) > 0 else "–"
        own = ""
        if prev:
            p = vals.get("cairn-prev")
            own = f" {vals['cairn'] / p:.3f} |" if "cairn" in vals and p else " – |"
        print(f"| {s} | " + " | ".join(fmt.format(vals[t]) if t in vals else "–" for t in tools) + f" | {ratio} |" + own)
    print()
EOF
cat "$OUT.md"
