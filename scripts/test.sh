#!/usr/bin/env bash
# The README's second command: installs dependencies, builds everything, runs every test.
#   1. the googletest suite through CTest (the GPU tests, label gpu, only where a GPU is visible:
#      steps 4 and 5 run them everywhere, under the CUDA emulator), after
#      the attention register-spill check when nvcc is present (scripts/check_attention_spills.sh)
#      and the check that no linker-merged symbol of the AVX-512 kernels holds AVX-512 code
#      (scripts/check_isa_objects.sh).
#      It runs with the kernel families this CPU selects: OpenBLAS's own choice from CPUID and the
#      engine's kernel build (kernels/cpu/isa.h); OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE and
#      ENGINE_CPU_ISA from the caller's environment are reported and dropped, since each changes
#      the kernels or their blocking (the summation order). On a CPU with AVX-512 the numerics
#      tests (CTest label `numerics`, tests/CMakeLists.txt) then run again with
#      OPENBLAS_CORETYPE=Haswell and the engine's AVX2 kernels: what an AVX2-only CPU runs.
#      Never the other way round: an AVX-512 core forced on a CPU without it dies on SIGILL.
#      Last, the same numerics tests on an emulated AVX2-only CPU (scripts/test_avx2_cpu.sh:
#      qemu's user mode, a Haswell CPU model, so CPUID itself has no AVX-512 and nothing is
#      forced; a stray AVX-512 instruction would die there).
#   2. the installed package: an example program built with find_package(engine) and run
#   3. a short libFuzzer smoke run of each fuzz target (when clang is available)
#   4. scripts/emulate.sh: with the CUDA backend built against the CUDA emulator (docs/CUDA.md),
#      Release, every GPU test (ctest -L gpu)
#   5. scripts/sanitize.sh: under AddressSanitizer + UndefinedBehaviorSanitizer, with the CUDA
#      backend built against the CUDA emulator, the kernel-level GPU tests, then the CPU suite
#      again
# ENGINE_SKIP_FUZZ=1 / ENGINE_SKIP_EMULATION=1 / ENGINE_SKIP_SANITIZE=1 leave out step 3 / 4 / 5.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_BUILD_DIR:-$root/build}"
bash "$root/scripts/build.sh"
bash "$root/scripts/check_attention_spills.sh" | tail -1
bash "$root/scripts/check_isa_objects.sh"
for var in OPENBLAS_CORETYPE OPENBLAS_L2_SIZE ENGINE_CPU_ISA; do
  if [ -n "${!var:-}" ]; then echo "test: ignoring $var=${!var} from the environment"; fi
  unset "$var"
done
# `engine info --json` names the kernels in use: "isa", "isa_detected" and "blas_core".
cpu_field() { "$build/engine" info --json | sed -n "s/.*\"$1\": \"\(.*\)\".*/\1/p"; }
isa="$(cpu_field isa_detected)"
echo "test: CPU suite with OpenBLAS core $(cpu_field blas_core) and the $isa kernels (this CPU's own)"
# The GPU tests (label gpu) run here only where a GPU is visible; steps 4 and 5 run them
# everywhere, under the CUDA emulator.
gpu_label=(-LE gpu)
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then gpu_label=(); fi
ctest --test-dir "$build" "${gpu_label[@]}" --output-on-failure -j "$(nproc)" --timeout 600
if [ "$isa" = avx512 ]; then
  core="$(OPENBLAS_CORETYPE=Haswell cpu_field blas_core)"
  if [ "$core" = Haswell ]; then
    echo "test: numerics tests with OpenBLAS core Haswell (AVX2) and the avx2 kernels"
    OPENBLAS_CORETYPE=Haswell ctest --test-dir "$build" --output-on-failure -L numerics \
      --timeout 600
  else
    # Only OpenBLAS's DYNAMIC_ARCH builds (Debian's, for one) honour OPENBLAS_CORETYPE.
    echo "test: this OpenBLAS ignores OPENBLAS_CORETYPE (core $core): AVX2 BLAS kernels not run"
  fi
  # Then once more on an emulated AVX2-only CPU, where both libraries choose from CPUID alone.
  bash "$root/scripts/test_avx2_cpu.sh" "$build"
fi
bash "$root/scripts/test_install.sh"
if [ "${ENGINE_SKIP_FUZZ:-0}" != 1 ]; then
  bash "$root/scripts/fuzz_smoke.sh"
fi
if [ "${ENGINE_SKIP_EMULATION:-0}" != 1 ]; then
  bash "$root/scripts/emulate.sh"
fi
if [ "${ENGINE_SKIP_SANITIZE:-0}" != 1 ]; then
  bash "$root/scripts/sanitize.sh"
fi
