#!/usr/bin/env bash
# Builds the library, the CLI and the tests with AddressSanitizer + UndefinedBehaviorSanitizer
# into ./build-asan, with the CUDA backend built against the CUDA emulator
# (-DENGINE_CUDA_EMULATION=ON, docs/CUDA.md), and runs there
#   1. the kernel-level GPU tests (CTest label gpu, without the model-level ones that
#      scripts/emulate.sh runs): every CUDA kernel against the CPU reference, and the emulator's
#      own tests; device memory is host memory, so an out-of-bounds global or shared access in a
#      kernel is an AddressSanitizer report, as compute-sanitizer's memcheck would be;
#   2. the CPU test suite.
# Any report fails the run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_ASAN_BUILD_DIR:-$root/build-asan}"
bash "$root/third_party/install_deps.sh"
# Configured every time (cheap), so a build directory from before the emulator is brought along.
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DENGINE_SANITIZE=ON \
  -DENGINE_CUDA_EMULATION=ON -DENGINE_BUILD_BENCH=OFF >/dev/null
ninja -C "$build" -j "${ENGINE_JOBS:-$(nproc)}" engine_tests engine_gpu_tests engine_cli | grep -vE '^\[[0-9]+/[0-9]+\] ' || true
test "${PIPESTATUS[0]}" -eq 0
# detect_leaks stays on; OpenMP's runtime keeps its thread pool alive at exit, which LSan does not
# report. halt_on_error makes the first report fail the test.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# The kernel-level GPU tests. The model-level ones (whole models, training, repair, the CLI,
# two ranks) run once in scripts/emulate.sh's Release build instead: under AddressSanitizer the
# emulator runs them about a hundred times slower (hours, and past the per-test timeout).
model_level='^(CudaTrainer|CudaBf16Trainer|CudaBf16TrainRun|CudaBf16Training|CudaBf16Pretrain|CudaF16LossScaling|CudaRepair|CudaModelApi|CudaTraining|Surgery/CudaTraining|Storage/CudaMemoryPlan)\.|^Shapes/CudaModel\.Bf16Storage|^cuda_cli$|_two_ranks_device_emulated$'
echo "sanitize: kernel-level GPU tests under the CUDA emulator"
ctest --test-dir "$build" -L gpu -E "$model_level" --output-on-failure -j "$(nproc)" --timeout 900
echo "sanitize: CPU tests"
ctest --test-dir "$build" -LE gpu --output-on-failure -j "$(nproc)" --timeout 900
