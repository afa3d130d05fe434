#!/usr/bin/env bash
# Peak memory of a diagnosis scan on a bloom-560m-shaped random model (bench/diagnose_memory_bench.cpp),
# one configuration per process because peak RSS only grows within a process. Fails when a scan's
# peak exceeds the weights plus 1 GiB (docs/DIAGNOSE.md, docs/PERFORMANCE.md).
# Usage: scripts/measure_diagnose_memory.sh [build dir]   (needs ~4 GB of free memory)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-${ENGINE_BUILD_DIR:-$root/build}}"
ninja -C "$build" diagnose_memory_bench >/dev/null
bench="$build/bench/diagnose_memory_bench"
limit_mib=1024
status=0
for config in "seq:1024/batch:1" "seq:4096/batch:1" "seq:2048/batch:2"; do
  out="$("$bench" --benchmark_filter="BM_DiagnoseMemory/${config}/" --benchmark_format=json)"
  field() { printf '%s\n' "$out" | sed -n "s/^ *\"$1\": *\([-0-9.e+]*\),*$/\1/p" | head -1; }
  printf '%s: weights %.0f MiB, after load %.0f MiB, peak %.0f MiB, peak - weights %.0f MiB, scan growth %.0f MiB, %.1f s\n' \
    "$config" "$(field weights_MiB)" "$(field rss_after_load_MiB)" "$(field peak_rss_MiB)" \
    "$(field peak_minus_weights_MiB)" "$(field scan_growth_MiB)" "$(field real_time)"
  over="$(printf '%.0f' "$(field peak_minus_weights_MiB)")"
  if [ "$over" -ge "$limit_mib" ]; then
    echo "FAIL: ${config}: peak exceeds the weights by ${over} MiB (limit ${limit_mib} MiB)"
    status=1
  fi
done
exit "$status"
