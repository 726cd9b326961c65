#!/usr/bin/env bash
# Build every fuzz target and run each for SECONDS (default 10) over the
# committed corpus (fuzz/corpus/<target>/), extending it. Installs cargo-fuzz
# if missing. Prints executions per target; exits non-zero on any finding.
# FUZZ_RUNS=N also stops each target after N executions (whichever comes first).
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-10}
shift || true
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install --locked -q cargo-fuzz
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo fuzz list)
cargo fuzz build -O 2>&1 | grep -v "^\s*Compiling" || true
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  start=$(date +%s)
  if ! cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$SECS" ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} -rss_limit_mb=2048 \
      -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"; echo "fuzz target $t: FINDING (artifacts in fuzz/artifacts/$t)"; exit 1
  fi
  execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
  echo "fuzz target $t: ${execs:-?} executions in $(($(date +%s) - start))s, no finding"
  rm -f "$log"
done
