#!/usr/bin/env bash
# Runs the numerics tests (the CTest entry numerics_avx2_kernels, tests/CMakeLists.txt) on an
# emulated AVX2-only CPU: qemu's user-mode emulator with `-cpu Haswell`, whose CPUID reports AVX2
# and FMA but no AVX-512. OpenBLAS and the engine (kernels/cpu/isa.h) pick their AVX2 kernels
# from CPUID on their own there, with nothing forced, as on an AVX2-only machine; any AVX-512
# instruction outside the dispatched kernels dies on SIGILL. The tests that start the CLI run it
# under the same emulator (ENGINE_TEST_LAUNCHER). The emulator is about 16x slower than the
# host, so the filter's tests run in $(nproc) gtest shards side by side.
# Usage: scripts/test_avx2_cpu.sh [build dir]; needs qemu-user (third_party/packages.txt).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-${ENGINE_BUILD_DIR:-$root/build}}"
# The Haswell model less the features qemu's TCG lacks (each would print a warning on stderr).
qemu=(qemu-x86_64 -cpu Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm)
command -v qemu-x86_64 >/dev/null || { echo "test_avx2_cpu: qemu-x86_64 not found" >&2; exit 1; }
filter="$(ctest --test-dir "$build" -N -V -R '^numerics_avx2_kernels$' |
  sed -n 's/.*"--gtest_filter=\([^"]*\)".*/\1/p')"
[ -n "$filter" ] || { echo "test_avx2_cpu: no numerics_avx2_kernels entry in $build" >&2; exit 1; }
# What the emulated CPU makes the engine choose; it must be the AVX2 build.
info="$("${qemu[@]}" "$build/engine" info --json 2>/dev/null)"
isa="$(sed -n 's/.*"isa": "\(.*\)".*/\1/p' <<<"$info")"
core="$(sed -n 's/.*"blas_core": "\(.*\)".*/\1/p' <<<"$info")"
echo "test: numerics tests on an emulated AVX2-only CPU (qemu, Haswell model):" \
  "engine kernels $isa, OpenBLAS core $core"
if [ "$isa" != avx2 ]; then
  echo "test_avx2_cpu: the emulated CPU selected '$isa', not avx2" >&2
  exit 1
fi
shards="${ENGINE_JOBS:-$(nproc)}"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
pids=()
for ((i = 0; i < shards; i++)); do
  (cd "$root" && env -u ENGINE_CPU_ISA -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    GTEST_TOTAL_SHARDS="$shards" GTEST_SHARD_INDEX="$i" OPENBLAS_NUM_THREADS=1 \
    ENGINE_TEST_LAUNCHER="${qemu[*]}" \
    "${qemu[@]}" "$build/tests/engine_tests" --gtest_filter="$filter" \
    >"$logs/$i.log" 2>&1) &
  pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then failed=1; fi
done
passed=0; fails=0
for ((i = 0; i < shards; i++)); do
  grep -E -A6 '^\[  FAILED  \] [A-Za-z]|Failure$' "$logs/$i.log" || true
  p="$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\?\.$/\1/p' "$logs/$i.log")"
  f="$(sed -n 's/^\[  FAILED  \] \([0-9]*\) tests\?, listed below:$/\1/p' "$logs/$i.log")"
  passed=$((passed + ${p:-0})); fails=$((fails + ${f:-0}))
done
echo "avx2: $passed passed, $fails failed"
[ "$failed" -eq 0 ] && [ "$fails" -eq 0 ] && [ "$passed" -gt 0 ]
