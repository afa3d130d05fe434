#!/usr/bin/env bash
# Builds the library, the CLI and the tests with the CUDA backend built against the CUDA emulator
# (-DENGINE_CUDA_EMULATION=ON, docs/CUDA.md), Release, into ./build-emu, and runs every GPU test
# there (CTest label gpu): each CUDA kernel against the CPU reference, and the model-level tests
# (eval, diagnose, generate, training, repair, the memory plan, the CLI and data parallelism on
# emulated devices). scripts/sanitize.sh runs the kernel-level GPU tests again under
# AddressSanitizer; the model-level ones run only here, since under AddressSanitizer the
# emulator is about a hundred times slower and they would take hours.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_EMU_BUILD_DIR:-$root/build-emu}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DENGINE_CUDA_EMULATION=ON \
  -DENGINE_BUILD_BENCH=OFF >/dev/null
ninja -C "$build" -j "${ENGINE_JOBS:-$(nproc)}" engine_tests engine_gpu_tests engine_cli | grep -vE '^\[[0-9]+/[0-9]+\] ' || true
test "${PIPESTATUS[0]}" -eq 0
echo "emulate: GPU tests under the CUDA emulator (Release)"
ctest --test-dir "$build" -L gpu --output-on-failure -j "$(nproc)" --timeout 900
