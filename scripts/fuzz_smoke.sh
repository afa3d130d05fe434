#!/usr/bin/env bash
# Short libFuzzer run of every tests/fuzz/*_fuzz.cpp target (a smoke test, not a campaign).
# Needs clang (libFuzzer ships with it); without clang it says so and exits 0.
# Builds in ./build-fuzz (clang, ASan+UBSan+libFuzzer, CPU only), then runs each target for
# ENGINE_FUZZ_SECONDS (default 15, so that the eight targets take about two minutes) on a scratch
# copy of tests/fuzz/corpus/<name without _fuzz>/, so the committed seeds never change. Any crash,
# leak or sanitizer report fails the script.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${ENGINE_FUZZ_SECONDS:-15}"
build="${ENGINE_FUZZ_BUILD_DIR:-$root/build-fuzz}"

if ! command -v clang++ >/dev/null 2>&1 || ! command -v clang >/dev/null 2>&1; then
  echo "fuzz_smoke: clang not found, fuzz targets skipped"
  exit 0
fi

# The fuzz targets link libFuzzer themselves; the library code they call must also carry the
# coverage instrumentation (fuzzer-no-link) and sanitizers, or the fuzzer runs blind.
instrument="-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
    -DCMAKE_CXX_FLAGS="$instrument" -DCMAKE_C_FLAGS="$instrument" \
    -DENGINE_FUZZ=ON -DENGINE_CUDA=OFF -DENGINE_BUILD_BENCH=OFF >/dev/null
fi

targets=()
for src in "$root"/tests/fuzz/*_fuzz.cpp; do
  [ -e "$src" ] || continue
  targets+=("$(basename "$src" .cpp)")
done
if [ "${#targets[@]}" -eq 0 ]; then
  echo "fuzz_smoke: no fuzz targets"
  exit 0
fi
ninja -C "$build" -j "${ENGINE_JOBS:-$(nproc)}" "${targets[@]}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  corpus="$scratch/${t%_fuzz}"
  mkdir -p "$corpus"
  seeds="$root/tests/fuzz/corpus/${t%_fuzz}"
  if [ -d "$seeds" ]; then cp -r "$seeds"/. "$corpus"/; fi
  exe="$(find "$build" -type f -name "$t" -perm -u+x | head -n 1)"
  echo "fuzz_smoke: $t for ${seconds}s"
  # -artifact_prefix keeps crash reproducers out of the source tree.
  "$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$scratch/" "$corpus" 2>"$scratch/$t.log" || {
    tail -n 60 "$scratch/$t.log" >&2
    echo "fuzz_smoke: $t FAILED (log above)" >&2
    exit 1
  }
  grep -E '^stat::number_of_executed_units' "$scratch/$t.log" || true
done
echo "fuzz_smoke: all targets passed"
