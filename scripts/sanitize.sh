#!/usr/bin/env bash
# Builds the library, the CLI and the tests with AddressSanitizer + UndefinedBehaviorSanitizer
# (CUDA off) into ./build-asan and runs the CPU test suite there. Any report fails the run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_ASAN_BUILD_DIR:-$root/build-asan}"
bash "$root/third_party/install_deps.sh"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DENGINE_SANITIZE=ON \
    -DENGINE_CUDA=OFF -DENGINE_BUILD_BENCH=OFF >/dev/null
fi
ninja -C "$build" -j "${ENGINE_JOBS:-$(nproc)}" engine_tests engine_cli | grep -vE '^\[[0-9]+/[0-9]+\] ' || true
test "${PIPESTATUS[0]}" -eq 0
# detect_leaks stays on; OpenMP's runtime keeps its thread pool alive at exit, which LSan does not
# report. halt_on_error makes the first report fail the test.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 900
