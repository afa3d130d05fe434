// Backend selection by device name. The CUDA backend exists only in builds configured with a CUDA
// compiler; asking for it elsewhere is an error, not a crash.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace engine {

// Number of CUDA devices visible to this process; 0 in builds without CUDA or without a driver.
int cuda_device_count();

// "cpu" or "cuda" / "cuda:N".
absl::StatusOr<std::unique_ptr<Backend>> make_backend(const std::string& device);

#ifdef ENGINE_HAVE_CUDA
// Implemented in kernels/cuda/cuda_backend.cu.
absl::StatusOr<std::unique_ptr<Backend>> make_cuda_backend(int device);
int cuda_runtime_device_count();
#endif

}  // namespace engine
