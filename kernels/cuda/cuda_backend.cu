// CudaBackend: the GPU implementation of the Backend interface (fp32 activations for now; the
// bf16-storage kernels arrive with the CUDA backend issue). Every call returns a Status; every
// launch is followed by a launch check. Ops not yet written for CUDA say so by status.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/device.h"
#include "kernels/cuda/cuda_check.h"

namespace engine {
namespace {

// One thread block per row for LayerNorm; 256 threads keeps a warp-multiple and good occupancy
// for the widths BLOOM uses (1024..14336).
constexpr int kRowThreads = 256;
constexpr int kElementwiseThreads = 256;
constexpr float kGeluCoefficient = 0.044715f;
constexpr float kSqrtTwoOverPi = 0.7978845608028654f;

__global__ void gelu_forward_kernel(int64_t n, const float* x, float* y) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  const float inner = kSqrtTwoOverPi * (v + kGeluCoefficient * v * v * v);
  y[i] = 0.5f * v * (1.0f + tanhf(inner));
}

__global__ void gelu_backward_kernel(int64_t n, const float* x, const float* dy, float* dx) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  const float inner = kSqrtTwoOverPi * (v + kGeluCoefficient * v * v * v);
  const float t = tanhf(inner);
  const float dinner = kSqrtTwoOverPi * (1.0f + 3.0f * kGeluCoefficient * v * v);
  dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner);
}

// Block-wide sum with shared memory; every thread gets the result.
__device__ float block_sum(float v, float* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  const float total = scratch[0];
  __syncthreads();
  return total;
}

// (rows, width): two-pass mean/variance per row in fp32.
__global__ void layernorm_forward_kernel(int64_t width, float eps, const float* x,
                                         const float* weight, const float* bias, float* y,
                                         float* mean_out, float* rstd_out) {
  __shared__ float scratch[kRowThreads];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * width;
  float* yr = y + row * width;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) sum += xr[i];
  const float mean = block_sum(sum, scratch) / static_cast<float>(width);
  float sq = 0.0f;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float d = xr[i] - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(block_sum(sq, scratch) / static_cast<float>(width) + eps);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    yr[i] = (xr[i] - mean) * rstd * weight[i] + bias[i];
  }
  if (threadIdx.x == 0) {
    if (mean_out) mean_out[row] = mean;
    if (rstd_out) rstd_out[row] = rstd;
  }
}

absl::Status not_yet(const char* op) {
  return absl::UnimplementedError(absl::StrCat("cuda backend: ", op, " is not implemented yet"));
}

int blocks_for(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, cublasHandle_t handle) : device_(device), cublas_(handle) {}
  ~CudaBackend() override { cublasDestroy(cublas_); }

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  std::string_view name() const override { return "cuda"; }

  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  absl::Status gemm(const GemmParams& p) override {
    if (p.m == 0 || p.n == 0) return absl::OkStatus();
    ENGINE_CUDA_CHECK(cudaSetDevice(device_));
    ENGINE_CUBLAS_CHECK(cublasSgemm(
        cublas_, p.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, p.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N,
        static_cast<int>(p.n), static_cast<int>(p.m), static_cast<int>(p.k), &p.alpha, p.b,
        static_cast<int>(p.ldb), p.a, static_cast<int>(p.lda), &p.beta, p.c,
        static_cast<int>(p.ldc)));
    return absl::OkStatus();
  }

  absl::Status layernorm_forward(const LayerNormParams& p) override {
    if (p.rows == 0) return absl::OkStatus();
    layernorm_forward_kernel<<<static_cast<unsigned>(p.rows), kRowThreads>>>(
        p.width, p.eps, p.x, p.weight, p.bias, p.y, p.mean, p.rstd);
    ENGINE_CUDA_LAUNCH_CHECK(layernorm_forward_kernel);
    return absl::OkStatus();
  }
  absl::Status layernorm_backward(const LayerNormParams&) override {
    return not_yet("layernorm_backward");
  }
  absl::Status gelu_forward(const GeluParams& p) override {
    if (p.n == 0) return absl::OkStatus();
    gelu_forward_kernel<<<blocks_for(p.n, kElementwiseThreads), kElementwiseThreads>>>(p.n, p.x,
                                                                                       p.y);
    ENGINE_CUDA_LAUNCH_CHECK(gelu_forward_kernel);
    return absl::OkStatus();
  }
  absl::Status gelu_backward(const GeluParams& p) override {
    if (p.n == 0) return absl::OkStatus();
    gelu_backward_kernel<<<blocks_for(p.n, kElementwiseThreads), kElementwiseThreads>>>(
        p.n, p.x, p.dy, p.dx);
    ENGINE_CUDA_LAUNCH_CHECK(gelu_backward_kernel);
    return absl::OkStatus();
  }
  absl::Status embedding_forward(const EmbeddingParams&) override {
    return not_yet("embedding_forward");
  }
  absl::Status embedding_backward(const EmbeddingParams&) override {
    return not_yet("embedding_backward");
  }
  absl::Status alibi_attention_forward(const AlibiAttentionParams&) override {
    return not_yet("alibi_attention_forward");
  }
  absl::Status alibi_attention_backward(const AlibiAttentionParams&) override {
    return not_yet("alibi_attention_backward");
  }
  absl::Status classifier_cross_entropy(const ClassifierParams&) override {
    return not_yet("classifier_cross_entropy");
  }
  absl::Status masked_adamw(const MaskedAdamWParams&) override { return not_yet("masked_adamw"); }

 private:
  int device_;
  cublasHandle_t cublas_;
};

}  // namespace

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
