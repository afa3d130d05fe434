// Backend selection by device name. The CUDA backend exists only in builds configured with a CUDA
// compiler; asking for it elsewhere is an error, not a crash.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace engine {

// Number of CUDA devices visible to this process; 0 in builds without CUDA or without a driver.
int cuda_device_count();

// "auto" -> "cuda" when a CUDA device is visible, else "cpu". The emulated device of an
// emulation build (docs/CUDA.md) is never chosen automatically: it verifies kernels, it does not
// run them fast, so only an explicit --device cuda selects it. Other names are returned as given.
std::string resolve_device(const std::string& device);

// "cpu", "cuda" / "cuda:N" or "auto" (resolve_device). Errors are one line naming the value:
// a malformed name (InvalidArgument), CUDA asked of a build without it or of a machine without
// a device (FailedPrecondition).
absl::StatusOr<std::unique_ptr<Backend>> make_backend(const std::string& device);

// Whether the CUDA backend's 16-bit (tensor-core) attention takes this head dimension; false in
// builds without CUDA. --dtype auto picks bf16 on a device only where it does.
bool cuda_16bit_attention_supports(int64_t head_dim);

#ifdef ENGINE_HAVE_CUDA
// Implemented in kernels/cuda/cuda_backend.cu.
bool cuda_tensor_core_head_dim(int64_t head_dim);
absl::StatusOr<std::unique_ptr<Backend>> make_cuda_backend(int device);
int cuda_runtime_device_count();
#endif

}  // namespace engine
