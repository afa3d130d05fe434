// CudaBackend: the GPU implementation of the Backend interface. Every op passes its params,
// storage types included (F32, BF16 or F16), through to the kernels of kernels/cuda/
// (attention.cu and attention_mma.cu, ops.cu, classifier.cu). All work goes to the
// legacy default stream, which the cuBLAS handle also uses. Every call returns a Status; every
// launch is followed by a launch check.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/device.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_pool.h"
#include "kernels/cuda/ops.h"

namespace engine {
namespace {

// The Backend's attention call on the default stream, storage as the caller gives it.
cuda::AttentionParams on_default_stream(const AlibiAttentionParams& p) {
  cuda::AttentionParams a;
  static_cast<AlibiAttentionParams&>(a) = p;
  a.stream = nullptr;
  return a;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, cublasHandle_t handle)
      : device_(device), cublas_(handle), pool_(std::make_shared<cuda::DevicePool>(device)) {}
  // The pool's cached blocks go now; blocks still live (memory that outlives the backend) are
  // released when freed (kernels/cuda/device_pool.h).
  ~CudaBackend() override {
    cublasDestroy(cublas_);
    pool_->close();
  }

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  std::string_view name() const override { return "cuda"; }

  // Memory comes from the caching pool (kernels/cuda/device_pool.h): a freed block is kept for
  // the next request of its size class instead of going back through cudaFree, which
  // synchronises the device.
  absl::StatusOr<void*> allocate(size_t bytes) override {
    return cuda::DevicePool::allocate(pool_, bytes);
  }
  Deallocator deallocator() const override { return &cuda::DevicePool::free_block; }
  BackendMemoryStats memory_stats() const override { return pool_->stats(); }
  void reset_peak_memory() override { pool_->reset_peak(); }
  absl::Status copy_to_device(void* device, const void* host, size_t bytes) override {
    if (bytes > 0) ENGINE_CUDA_CHECK(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  absl::Status copy_to_host(void* host, const void* device, size_t bytes) override {
    if (bytes > 0) ENGINE_CUDA_CHECK(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost));
    return absl::OkStatus();
  }
  absl::Status copy_on_device(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) ENGINE_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
    return absl::OkStatus();
  }
  absl::Status fill_zero(void* device, size_t bytes) override {
    if (bytes > 0) ENGINE_CUDA_CHECK(cudaMemset(device, 0, bytes));
    return absl::OkStatus();
  }

  absl::Status gemm(const GemmParams& p) override {
    ENGINE_CUDA_CHECK(cudaSetDevice(device_));
    return cuda::gemm(cublas_, p);
  }
  absl::Status layernorm_forward(const LayerNormParams& p) override {
    return cuda::layernorm_forward(p, kStream);
  }
  absl::Status layernorm_backward(const LayerNormParams& p) override {
    return cuda::layernorm_backward(p, kStream);
  }
  // The erf form (Falcon, MPT) has no CUDA kernel: refused rather than computed as tanh.
  absl::Status gelu_forward(const GeluParams& p) override {
    if (p.exact) return absl::UnimplementedError("gelu_forward: the erf form is CPU only");
    return cuda::gelu_forward(p, kStream);
  }
  absl::Status gelu_backward(const GeluParams& p) override {
    if (p.exact) return absl::UnimplementedError("gelu_backward: the erf form is CPU only");
    return cuda::gelu_backward(p, kStream);
  }
  absl::Status embedding_forward(const EmbeddingParams& p) override {
    return cuda::embedding_forward(p, kStream);
  }
  absl::Status embedding_backward(const EmbeddingParams& p) override {
    return cuda::embedding_backward(p, kStream);
  }
  absl::Status alibi_attention_forward(const AlibiAttentionParams& p) override {
    if (p.bf16_bias_divisor != 0.0f) {
      return absl::UnimplementedError(
          "alibi_attention_forward: the bf16-rounded ALiBi bias (Falcon) is CPU only");
    }
    return cuda::attention_forward(on_default_stream(p));
  }
  absl::Status alibi_attention_backward(const AlibiAttentionParams& p) override {
    if (p.bf16_bias_divisor != 0.0f) {
      return absl::UnimplementedError(
          "alibi_attention_backward: the bf16-rounded ALiBi bias (Falcon) is CPU only");
    }
    return cuda::attention_backward(on_default_stream(p));
  }
  absl::StatusOr<std::vector<double>> attention_sink_sums(const AttentionSinkParams& p) override {
    return cuda::attention_sink_sums(p, kStream);
  }
  absl::Status classifier_cross_entropy(const ClassifierParams& p) override {
    return cuda::classifier_cross_entropy(p, cublas_, kStream);
  }
  absl::Status masked_adamw(const MaskedAdamWParams& p) override {
    return cuda::masked_adamw(p, kStream);
  }
  absl::Status masked_sgd(const MaskedAdamWParams& p) override {
    return cuda::masked_sgd(p, kStream);
  }
  absl::StatusOr<double> gradient_norm(const float* grad, int64_t n) override {
    return cuda::global_grad_norm(grad, n, kStream);
  }
  absl::Status add(float* y, const float* x, int64_t n) override {
    return cuda::add(y, x, n, kStream);
  }
  absl::Status column_sums(const float* x, int64_t rows, int64_t cols, int64_t ld,
                           float* out) override {
    return cuda::column_sums(x, rows, cols, ld, out, kStream);
  }
  absl::Status add_stored(DType storage, void* y, const void* x, int64_t n) override {
    return cuda::add_stored(storage, y, x, n, kStream);
  }
  absl::Status column_sums_stored(DType storage, const void* x, int64_t rows, int64_t cols,
                                  int64_t ld, float* out) override {
    return cuda::column_sums_stored(storage, x, rows, cols, ld, out, kStream);
  }
  absl::Status compact_scatter_add(const CompactScatterParams& p) override {
    return cuda::compact_scatter_add(p, kStream);
  }

 private:
  static constexpr cudaStream_t kStream = nullptr;  // the legacy default stream
  int device_;
  cublasHandle_t cublas_;
  std::shared_ptr<cuda::DevicePool> pool_;
};

}  // namespace

bool cuda_tensor_core_head_dim(int64_t head_dim) {
  return cuda::tensor_core_head_dim_supported(head_dim);
}

int cuda_runtime_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error so later probes start clean
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<Backend>> make_cuda_backend(int device) {
  const int count = cuda_runtime_device_count();
  if (device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda:", device, ": ", count, " CUDA device(s) visible"));
  }
  ENGINE_CUDA_CHECK(cudaSetDevice(device));
  cublasHandle_t handle = nullptr;
  ENGINE_CUBLAS_CHECK(cublasCreate(&handle));
  return std::unique_ptr<Backend>(new CudaBackend(device, handle));
}

}  // namespace engine
