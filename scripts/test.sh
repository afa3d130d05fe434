#!/usr/bin/env bash
# The README's second command: installs dependencies, builds everything, runs every test.
#   1. the googletest suite through CTest, after the attention register-spill check when nvcc is
#      present (scripts/check_attention_spills.sh); the GPU tests (label gpu) only where a GPU is
#      visible - everywhere they run in step 4, under the CUDA emulator
#   2. the installed package: an example program built with find_package(engine) and run
#   3. a short libFuzzer smoke run of each fuzz target (when clang is available)
#   4. scripts/sanitize.sh: under AddressSanitizer + UndefinedBehaviorSanitizer, with the CUDA
#      backend built against the CUDA emulator (docs/CUDA.md), the GPU tests (ctest -L gpu), then
#      the CPU suite again
# ENGINE_SKIP_FUZZ=1 / ENGINE_SKIP_SANITIZE=1 leave out step 3 / step 4.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_BUILD_DIR:-$root/build}"
bash "$root/scripts/build.sh"
bash "$root/scripts/check_attention_spills.sh" | tail -1
gpu_label=(-LE gpu)
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then gpu_label=(); fi
ctest --test-dir "$build" "${gpu_label[@]}" --output-on-failure -j "$(nproc)" --timeout 600
bash "$root/scripts/test_install.sh"
if [ "${ENGINE_SKIP_FUZZ:-0}" != 1 ]; then
  bash "$root/scripts/fuzz_smoke.sh"
fi
if [ "${ENGINE_SKIP_SANITIZE:-0}" != 1 ]; then
  bash "$root/scripts/sanitize.sh"
fi
