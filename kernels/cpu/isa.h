// Run-time selection of the instruction set the engine's own CPU kernels run on.
//
// The vectorised kernels (attention, classifier softmax, LayerNorm, GELU, AdamW) are built once
// per instruction set from one source each (Note [one source, one build per instruction set] in
// kernels/cpu/isa_region.h); the entry points in kernels/cpu/ops.h and adamw.h pick a build per
// call from active_cpu_isa(). The choice is made once per process: ENGINE_CPU_ISA when it is
// set, otherwise the best set the CPU and operating system support (CPUID, through
// __builtin_cpu_supports, which also checks that the OS saves the AVX-512 registers).
//
//   ENGINE_CPU_ISA unset or empty   best supported: avx512 where available, else avx2
//   ENGINE_CPU_ISA=avx2             the AVX2 + FMA build (runs on every CPU the engine runs on)
//   ENGINE_CPU_ISA=avx512           the AVX-512 build; an error on a CPU without AVX-512, and in
//                                   a clang build, which has the AVX2 build only (isa_region.h)
//   anything else                   an error
// An invalid ENGINE_CPU_ISA is an error, not a silent fallback: every dispatched kernel returns
// it, and the CLI prints it and exits before doing any work. Running another path than the one
// asked for would make a benchmark or a test of "the AVX2 path" measure the wrong code.
// OpenBLAS (the GEMMs) selects its own kernels; OPENBLAS_CORETYPE controls that, see
// docs/TOLERANCES.md and scripts/test.sh.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace engine::cpu {

enum class CpuIsa {
  kAvx2,    // AVX2 + FMA, 8-lane vectors (x86-64-v3, the library's baseline)
  kAvx512,  // AVX-512 F/BW/DQ/VL/CD, 16-lane vectors (x86-64-v4)
};

// "avx2" or "avx512", the spelling ENGINE_CPU_ISA takes.
std::string_view cpu_isa_name(CpuIsa isa);

// Whether this CPU (and OS) can run the given build.
bool cpu_supports(CpuIsa isa);

// The best build this CPU supports.
CpuIsa detected_cpu_isa();

// The build the kernels use now: a set_cpu_isa() override, else the start-up choice (above).
// Fails with a one-line message naming the value when ENGINE_CPU_ISA is invalid.
absl::StatusOr<CpuIsa> active_cpu_isa();

// Overrides the start-up choice for the whole process (tests and benchmarks run both paths
// against the same references). Fails, changing nothing, when the CPU lacks `isa`. Not meant to
// race with running kernels: call it between ops.
absl::Status set_cpu_isa(CpuIsa isa);
// Drops the override: back to the start-up choice.
void clear_cpu_isa_override();

// The name OpenBLAS gives the kernel family it selected for this CPU (e.g. "Haswell",
// "Cooperlake"; OPENBLAS_CORETYPE overrides its choice in DYNAMIC_ARCH builds).
std::string blas_core_name();

}  // namespace engine::cpu
