#!/usr/bin/env bash
# Run the micro benchmarks and write benches/results/micro-YYYY-MM-DD.md:
# per-stage and whole-pipeline throughput (medians, MB/s), the 2-thread
# ceiling 2 / Σ(1/stage) over chunk, id, compress and seal, and the
# pipeline's share of it.
# Usage: benches/micro/run.sh   (parse only: benches/micro/run.sh --parse FILE)
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--parse" ]; then RAW=$2; else
  RAW=$(mktemp)
  DIVAN_BYTES_FORMAT=decimal cargo bench -q --bench pipeline 2>/dev/null | tee "$RAW"
fi
OUT=../results/micro-$(date -u +%Y-%m-%d).md
python3 - "$RAW" "$(git rev-parse --short HEAD)" >"$OUT" <<'PY'
import re, sys
raw, rev = open(sys.argv[1]).read().splitlines(), sys.argv[2]
unit = {"B/s": 1e-6, "KB/s": 1e-3, "MB/s": 1, "GB/s": 1e3}
res, path = {}, []
for i, line in enumerate(raw):
    m = re.match(r"^([│ ]*)[├╰]─ (\S+)", line)
    if m:
        depth = len(m.group(1)) // 3
        path = path[:depth] + [m.group(2)]
        continue
    tp = re.findall(r"([\d.]+) (GB/s|MB/s|KB/s|B/s)", line)
    if len(tp) >= 3 and path:
        res["/".join(path)] = float(tp[2][0]) * unit[tp[2][1]]  # median column
stages = ["stage_fastcdc", "stage_blake3_keyed", "stage_zstd3", "stage_seal_xchacha20poly1305"]
print(f"# Micro benchmarks (cairn {rev})\n")
print("`benches/micro/run.sh` (divan, 64 MB buffers, 1 MiB chunks for the per-chunk stages, repository defaults: FastCDC 256 KiB/1 MiB/4 MiB, zstd 3). Medians of 10 samples, MB/s.\n")
print("| benchmark | random | sql |")
print("|---|---|---|")
for k in sorted({k.rsplit('/', 1)[0] for k in res}):
    print(f"| {k} | {res.get(k + '/random', 0):.0f} | {res.get(k + '/sql', 0):.0f} |")
print()
for kind in ("random", "sql"):
    one = 1 / sum(1 / res[f"{s}/{kind}"] for s in stages)
    ceil = 2 * one
    p2, p1 = res[f"pipeline/2/{kind}"], res[f"pipeline/1/{kind}"]
    print(f"- {kind}: one core through all four stages {one:.0f} MB/s; 2-thread ceiling {ceil:.0f} MB/s; "
          f"pipeline on 2 threads {p2:.0f} MB/s = **{p2 / ceil * 100:.0f} %** of the ceiling (1 thread: {p1:.0f} MB/s = {p1 / one * 100:.0f} % of one core's stage sum)")
PY
cat "$OUT"
