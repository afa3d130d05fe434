// Stream-ordered temporary device buffers for one op call. Contract: allocate() takes memory from
// the stream-ordered allocator (cudaMallocAsync, pooled by the driver, so no device-wide
// synchronisation); every buffer is released with cudaFreeAsync on the same stream when the
// StreamScratch goes out of scope, i.e. after every kernel the op enqueued has used it. Nothing
// outlives the call, which keeps the Backend contract that ops allocate no persistent memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_check.h"

namespace engine::cuda {

class StreamScratch {
 public:
  explicit StreamScratch(cudaStream_t stream) : stream_(stream) {}
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  // A failed free cannot be reported from a destructor; it can only follow an earlier error on
  // the same stream, which the op has already returned.
  ~StreamScratch() {
    for (void* p : buffers_) cudaFreeAsync(p, stream_);
  }

  template <typename T>
  absl::Status allocate(T** out, int64_t count) {
    void* p = nullptr;
    const size_t bytes = static_cast<size_t>(count > 0 ? count : 1) * sizeof(T);
    ENGINE_CUDA_CHECK(cudaMallocAsync(&p, bytes, stream_));
    buffers_.push_back(p);
    *out = static_cast<T*>(p);
    return absl::OkStatus();
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> buffers_;
};

}  // namespace engine::cuda
