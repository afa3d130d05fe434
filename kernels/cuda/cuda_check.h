// Checked CUDA / cuBLAS calls: the library turns every failure into an absl::Status that records
// the expression, file and line, and never exits the process.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace engine::cuda {

inline absl::Status cuda_status(cudaError_t err, const char* expr, const char* file, int line) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", expr, " failed: ",
                                          cudaGetErrorString(err)));
}

inline absl::Status cublas_status(cublasStatus_t err, const char* expr, const char* file,
                                  int line) {
  if (err == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", expr, " failed: cuBLAS status ",
                                          static_cast<int>(err)));
}

}  // namespace engine::cuda

// Evaluates a CUDA runtime call; on failure returns the Status from the enclosing function.
#define ENGINE_CUDA_CHECK(expr)                                                              \
  do {                                                                                       \
    absl::Status engine_cuda_status_ = ::engine::cuda::cuda_status((expr), #expr, __FILE__,  \
                                                                   __LINE__);                \
    if (!engine_cuda_status_.ok()) return engine_cuda_status_;                               \
  } while (0)

#define ENGINE_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                       \
    absl::Status engine_cuda_status_ = ::engine::cuda::cublas_status((expr), #expr, __FILE__, \
                                                                     __LINE__);              \
    if (!engine_cuda_status_.ok()) return engine_cuda_status_;                               \
  } while (0)

// After every kernel launch: launch-configuration errors surface here, with the kernel's name.
#define ENGINE_CUDA_LAUNCH_CHECK(kernel_name)                                                \
  do {                                                                                       \
    absl::Status engine_cuda_status_ = ::engine::cuda::cuda_status(                          \
        cudaGetLastError(), "launch of " #kernel_name, __FILE__, __LINE__);                  \
    if (!engine_cuda_status_.ok()) return engine_cuda_status_;                               \
  } while (0)
