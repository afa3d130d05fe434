#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: builds the engine (Release, CUDA on, for the local GPU's
# architecture), runs the GPU tests (every CUDA kernel against the CPU reference), the two-rank
# data-parallel equality test over NCCL when there are two GPUs, then the attention benchmark
# and the device train-step benchmark (bloom-560m shape: tokens/s, model TFLOP/s, MFU), and
# prints a summary. Meant to finish in under 8 minutes.
#   ENGINE_GPU_BUILD_DIR   build directory (default: build-gpu in the repository)
#   ENGINE_GPU_ARCHS       CMAKE_CUDA_ARCHITECTURES (default: native)
#   ENGINE_GPU_BENCH_MIN_TIME  seconds per benchmark (default: 0.05)
# Exit status: non-zero when the build or any GPU test fails (the benchmark's numbers are
# reported, not judged).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_GPU_BUILD_DIR:-$root/build-gpu}"
archs="${ENGINE_GPU_ARCHS:-native}"
min_time="${ENGINE_GPU_BENCH_MIN_TIME:-0.05}"
jobs="$(nproc)"
started=$SECONDS
step() { printf '\n=== %s (%ds)\n' "$1" "$((SECONDS - started))"; }

step "GPU"
if ! command -v nvidia-smi >/dev/null; then
  echo "gpu-check: nvidia-smi not found: this script needs a machine with an NVIDIA GPU" >&2
  exit 1
fi
nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv,noheader

step "dependencies"
if ! bash "$root/third_party/install_deps.sh"; then
  echo "gpu-check: installing dependencies failed; trying the build with what is present" >&2
fi

step "configure + build (Release, CUDA ON, archs $archs)"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DENGINE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$archs" >/dev/null
build_log="$build/gpu-build.log"
if ! ninja -C "$build" -j "$jobs" engine engine_tests engine_gpu_tests attention_cuda_bench \
    train_step_cuda_bench >"$build_log" 2>&1; then
  grep -vE '^\[[0-9]+/[0-9]+\] ' "$build_log" | tail -60 >&2
  echo "gpu-check: build FAILED (log $build_log)" >&2
  exit 1
fi

step "spill check (ptxas, attention kernels, archs 80 89 90a)"
spills=ok
bash "$root/scripts/check_attention_spills.sh" | tail -1 || spills=FAILED

step "GPU tests"
test_log="$build/gpu-tests.log"
tests=ok
# The GPU binary (every CUDA kernel against the CPU reference; CTest label gpu), then backend
# selection from the main binary.
{
  OMP_WAIT_POLICY=passive OPENBLAS_NUM_THREADS=1 timeout 300 "$build/tests/engine_gpu_tests" 2>&1
  OMP_WAIT_POLICY=passive OPENBLAS_NUM_THREADS=1 timeout 60 "$build/tests/engine_tests" \
    --gtest_filter='Device.*' 2>&1
  # The CLI with --device cuda against --device cpu (eval, diagnose) and the device errors.
  timeout 120 python3 "$root/tests/cuda_cli_test.py" "$build/engine" "$root" 2>&1 ||
    echo "[  FAILED  ] cuda_cli"
} | tee "$test_log" | grep -E '^\[ *(OK|FAILED|SKIPPED|PASSED) *\]|Failure|error|^FAIL|cuda_cli' || true
if [ "$(grep -c '^\[  PASSED  \]' "$test_log")" -ne 2 ] || grep -q '^\[  FAILED  \]' "$test_log"; then
  tests=FAILED
fi
if grep -q '^\[  SKIPPED \]' "$test_log"; then
  echo "gpu-check: some GPU tests were skipped: is the GPU visible to this process?" >&2
  tests=FAILED
fi

step "data parallel over NCCL (2 ranks, one GPU each)"
nccl=skipped
gpus="$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)"
if [ "$gpus" -lt 2 ]; then
  echo "gpu-check: $gpus GPU(s): the NCCL two-rank run needs two; skipped"
elif ! command -v mpirun >/dev/null; then
  echo "gpu-check: mpirun not found (openmpi-bin): NCCL two-rank run skipped"
else
  # Training on the CPU backend (host gradient staged through NCCL), then on the device
  # (--device cuda: the compact gradient reduced in GPU memory).
  nccl=ok
  for device in cpu cuda; do
    nccl_log="$build/nccl-test-$device.log"
    if ENGINE_TEST_DIST_BACKEND=nccl ENGINE_TEST_DIST_DEVICE=$device OMP_WAIT_POLICY=passive \
        timeout 180 "$build/tests/engine_tests" \
        --gtest_filter='TwoRanks.SameWeightsAsOneProcessWithTheSameGlobalBatch' >"$nccl_log" 2>&1 &&
        grep -q '^\[  PASSED  \] 1 test' "$nccl_log"; then
      echo "NCCL 2-rank training on $device: ok"
    else
      tail -30 "$nccl_log" >&2
      nccl=FAILED
    fi
  done
fi

step "attention benchmark (bf16, B*T = 16k tokens, 16 heads)"
bench_log="$build/attention-bench.log"
timeout 240 "$build/bench/attention_cuda_bench" --benchmark_min_time="$min_time" \
  --benchmark_counters_tabular=true 2>&1 | tee "$bench_log" || echo "gpu-check: benchmark did not finish" >&2

step "train step on the device (bloom-560m shape, seq 512)"
# MFU against the dense bf16 tensor-core peak of the GPU named by nvidia-smi (TFLOP/s, from the
# vendors' data sheets; unknown GPUs get no MFU column).
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
case "$gpu_name" in
  *H100*PCIe*) peak=756 ;;
  *H100*|*H200*|*GH200*) peak=989 ;;
  *A100*) peak=312 ;;
  *L40S*) peak=362 ;;
  *) peak= ;;
esac
train_log="$build/train-step-bench.log"
ENGINE_PEAK_TFLOPS="$peak" OMP_WAIT_POLICY=passive timeout 240 "$build/bench/train_step_cuda_bench" \
  --benchmark_counters_tabular=true 2>&1 | tee "$train_log" ||
  echo "gpu-check: train-step benchmark did not finish" >&2

step "summary"
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
echo "spill check: $spills"
echo "NCCL 2-rank: $nccl"
echo "GPU tests:   $tests ($(grep -c '^\[       OK \]' "$test_log" || true) passed, log $test_log)"
echo "benchmark:   $(grep -c '^BM_' "$bench_log" || true) rows, log $bench_log"
echo "train step:  $(grep '^BM_TrainStepCuda' "$train_log" | grep -vc ERROR || true) rows measured, log $train_log"
echo "total time:  $((SECONDS - started)) s"
[ "$tests" = ok ] && [ "$spills" = ok ] && [ "$nccl" != FAILED ]
