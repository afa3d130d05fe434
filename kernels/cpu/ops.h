// The CPU reference implementations of the Backend ops (fp32). Each op lives in its own file
// kernels/cpu/<op>.cpp; CpuBackend (cpu_backend.cpp) forwards to these free functions so tests
// and benchmarks can call them directly.
#pragma once

#include "absl/status/status.h"
#include "engine/backend.h"

namespace engine::cpu {

absl::Status gemm(const GemmParams& p);

}  // namespace engine::cpu
