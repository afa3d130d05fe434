// CUDA LayerNorm (fwd/bwd), tanh-GELU (fwd/bwd), embedding (fwd/bwd), masked AdamW, the global
// gradient norm and the cuBLAS GEMMs. Contracts: kernels/cuda/ops.h, which defers to the CPU
// kernels; each kernel here mirrors its CPU counterpart's formula and summation precision:
//   LayerNorm: two-pass row moments accumulated in double; dx = rstd (g - mean g - xhat mean(g xhat)).
//   GELU: 0.5 x (1 + tanh(c x (1 + a x^2))), c = 0.79788456, a = 0.044715, and its derivative,
//         in the sigmoid form of kernels/cpu/gelu.cpp.
//   AdamW: PyTorch's update with bias corrections computed in double on the host.
// Storage types (engine/backend.h): each kernel is a template over the element type of its
// storage-typed tensors (float, __nv_bfloat16, __half; with_storage() picks one per call), reads
// them widened to fp32 (to_float) and rounds each stored element once (from_float, nearest even),
// as the CPU twin does (kernels/cpu/storage.h). fp32 state (mean, rstd, parameter gradients of
// LayerNorm, dtable, masters, moments) is fp32 in every variant. 16-bit GEMMs run on
// cublasGemmEx with fp32 compute; an epilogue is formed in an fp32 buffer and rounded once.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/scratch.h"
#include "kernels/cuda/storage.cuh"

namespace engine::cuda {
namespace {

constexpr int kThreads = 256;
constexpr float kGeluC = 0.79788456f;
constexpr float kGeluA = 0.044715f;
// LayerNorm parameter gradients: rows per partial-sum chunk (one partial per chunk and column,
// then chunks summed in order).
constexpr int64_t kLayerNormRowChunk = 256;
// Gradient norm: blocks of the first pass (each writes one double partial).
constexpr int kNormBlocks = 256;

int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }
unsigned blocks_for(int64_t n) { return static_cast<unsigned>(ceil_div(n, kThreads)); }

// Block-wide sum (blockDim.x == kThreads); every thread gets the total. The tree order is fixed.
template <typename Acc>
__device__ Acc block_sum(Acc v, Acc* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  const Acc total = scratch[0];
  __syncthreads();
  return total;
}

// ---- LayerNorm ---------------------------------------------------------------------------------

// Row moments, two passes in double: mean, then the centred second moment.
template <typename Elem>
__device__ void row_moments(const Elem* x, int64_t width, float eps, double* scratch,
                            float* mean_out, float* rstd_out) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < width; i += kThreads) sum += to_float(x[i]);
  const double mean = block_sum(sum, scratch) / static_cast<double>(width);
  double sq = 0.0;
  for (int64_t i = threadIdx.x; i < width; i += kThreads) {
    const double c = to_float(x[i]) - mean;
    sq += c * c;
  }
  const double var = block_sum(sq, scratch) / static_cast<double>(width);
  *mean_out = static_cast<float>(mean);
  *rstd_out = static_cast<float>(1.0 / sqrt(var + eps));
}

// One block per row.
template <typename Elem>
__global__ void __launch_bounds__(kThreads) layernorm_forward_kernel(LayerNormParams p) {
  __shared__ double scratch[kThreads];
  const int64_t r = blockIdx.x, w = p.width;
  const Elem* x = static_cast<const Elem*>(p.x) + r * w;
  const Elem* weight = static_cast<const Elem*>(p.weight);
  const Elem* bias = static_cast<const Elem*>(p.bias);
  float mean, rstd;
  row_moments(x, w, p.eps, scratch, &mean, &rstd);
  Elem* y = static_cast<Elem*>(p.y) + r * w;
  for (int64_t i = threadIdx.x; i < w; i += kThreads) {
    y[i] = from_float<Elem>((to_float(x[i]) - mean) * rstd * to_float(weight[i]) +
                            to_float(bias[i]));
  }
  if (threadIdx.x == 0) {
    if (p.mean != nullptr) p.mean[r] = mean;
    if (p.rstd != nullptr) p.rstd[r] = rstd;
  }
}

// Row moments only (backward without saved mean/rstd).
template <typename Elem>
__global__ void __launch_bounds__(kThreads) layernorm_moments_kernel(LayerNormParams p,
                                                                     float* mean, float* rstd) {
  __shared__ double scratch[kThreads];
  const int64_t r = blockIdx.x;
  float m, s;
  row_moments(static_cast<const Elem*>(p.x) + r * p.width, p.width, p.eps, scratch, &m, &s);
  if (threadIdx.x == 0) {
    mean[r] = m;
    rstd[r] = s;
  }
}

// dx per row (one block per row).
template <typename Elem>
__global__ void __launch_bounds__(kThreads) layernorm_dx_kernel(LayerNormParams p,
                                                                const float* mean,
                                                                const float* rstd) {
  __shared__ double scratch[kThreads];
  const int64_t r = blockIdx.x, w = p.width;
  const Elem* x = static_cast<const Elem*>(p.x) + r * w;
  const Elem* dy = static_cast<const Elem*>(p.dy) + r * w;
  const Elem* weight = static_cast<const Elem*>(p.weight);
  const float m = mean[r], s = rstd[r];
  double sum_g = 0.0, sum_gx = 0.0;
  for (int64_t i = threadIdx.x; i < w; i += kThreads) {
    const float g = to_float(dy[i]) * to_float(weight[i]);
    sum_g += g;
    sum_gx += g * ((to_float(x[i]) - m) * s);
  }
  const float mean_g = static_cast<float>(block_sum(sum_g, scratch) / static_cast<double>(w));
  const float mean_gx = static_cast<float>(block_sum(sum_gx, scratch) / static_cast<double>(w));
  Elem* dx = static_cast<Elem*>(p.dx) + r * w;
  for (int64_t i = threadIdx.x; i < w; i += kThreads) {
    const float xhat = (to_float(x[i]) - m) * s;
    const float v = s * (to_float(dy[i]) * to_float(weight[i]) - mean_g - xhat * mean_gx);
    dx[i] = from_float<Elem>(p.accumulate_dx ? to_float(dx[i]) + v : v);
  }
}

// partial[chunk][0][c] = sum over the chunk's rows of dy * xhat, partial[chunk][1][c] = sum dy.
// Grid (ceil(width / kThreads), chunks).
template <typename Elem>
__global__ void layernorm_param_partial_kernel(LayerNormParams p, const float* mean,
                                               const float* rstd, float* partial) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (c >= p.width) return;
  const int64_t r0 = blockIdx.y * kLayerNormRowChunk;
  const int64_t r1 = min(r0 + kLayerNormRowChunk, p.rows);
  const Elem* x = static_cast<const Elem*>(p.x);
  float dw = 0.0f, db = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float dy = to_float(static_cast<const Elem*>(p.dy)[r * p.width + c]);
    dw += dy * ((to_float(x[r * p.width + c]) - mean[r]) * rstd[r]);
    db += dy;
  }
  float* out = partial + blockIdx.y * 2 * p.width;
  out[c] = dw;
  out[p.width + c] = db;
}

__global__ void layernorm_param_reduce_kernel(LayerNormParams p, const float* partial,
                                              int64_t chunks) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (c >= p.width) return;
  float dw = 0.0f, db = 0.0f;
  for (int64_t k = 0; k < chunks; ++k) {
    dw += partial[k * 2 * p.width + c];
    db += partial[k * 2 * p.width + p.width + c];
  }
  if (p.dweight != nullptr) p.dweight[c] += dw;
  if (p.dbias != nullptr) p.dbias[c] += db;
}

absl::Status check_layernorm(const LayerNormParams& p, const char* op) {
  if (p.rows < 0 || p.width <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": bad shape rows=", p.rows, " width=", p.width));
  }
  if (p.x == nullptr || p.weight == nullptr || p.bias == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": x, weight and bias are required"));
  }
  return absl::OkStatus();
}

// ---- GELU --------------------------------------------------------------------------------------

// c = bias + residual (elements of In) over an (m, n) fp32 block with leading dimension ldc,
// before a GEMM accumulates onto it (beta = 1).
template <typename In>
__global__ void gemm_epilogue_kernel(GemmParams p, float* c, int64_t ldc) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.m * p.n) return;
  const int64_t r = i / p.n, col = i % p.n;
  float v = p.bias != nullptr ? to_float(static_cast<const In*>(p.bias)[col]) : 0.0f;
  if (p.residual != nullptr) v += to_float(static_cast<const In*>(p.residual)[r * p.ldr + col]);
  c[r * ldc + col] = v;
}

// dst = src rounded to Out, once, over an (m, n) block.
template <typename Out>
__global__ void round_store_kernel(int64_t m, int64_t n, const float* src, int64_t lds, Out* dst,
                                   int64_t ldd) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * n) return;
  const int64_t r = i / n, col = i % n;
  dst[r * ldd + col] = from_float<Out>(src[r * lds + col]);
}

// GELU in the sigmoid form of kernels/cpu/gelu.cpp's Note [GELU in sigmoid form]: s =
// sigmoid(2u) and 1 - s from e = exp(-2|u|), so neither tail loses its relative accuracy.
struct GeluSigmoid {
  float s, s_rest;  // sigmoid(2u), 1 - sigmoid(2u)
};
__device__ __forceinline__ GeluSigmoid gelu_sigmoid(float v) {
  const float u = kGeluC * v * (1.0f + kGeluA * v * v);
  const float e = expf(-2.0f * fabsf(u));
  const float inv = 1.0f / (1.0f + e);
  return u >= 0.0f ? GeluSigmoid{inv, e * inv} : GeluSigmoid{e * inv, inv};
}

template <typename Elem>
__global__ void gelu_forward_kernel(int64_t n, const Elem* x, Elem* y) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float v = to_float(x[i]);
  y[i] = from_float<Elem>(v * gelu_sigmoid(v).s);
}

template <typename Elem>
__global__ void gelu_backward_kernel(int64_t n, const Elem* x, const Elem* dy, Elem* dx) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float v = to_float(x[i]);
  const GeluSigmoid g = gelu_sigmoid(v);
  const float du = kGeluC * (1.0f + 3.0f * kGeluA * v * v);
  dx[i] = from_float<Elem>((g.s + 2.0f * v * g.s * g.s_rest * du) * to_float(dy[i]));
}

absl::Status check_gelu(const GeluParams& p, const char* op, bool backward) {
  if (p.n < 0) return absl::InvalidArgumentError(absl::StrCat(op, ": negative n=", p.n));
  if (p.x == nullptr) return absl::InvalidArgumentError(absl::StrCat(op, ": x is required"));
  if (!backward && p.y == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": y is required"));
  }
  if (backward && (p.dy == nullptr || p.dx == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": dy and dx are required"));
  }
  return absl::OkStatus();
}

// ---- embedding ---------------------------------------------------------------------------------

// Lowest row whose id is outside [lo, hi), or n when none is (atomicMin over rows).
__global__ void first_bad_id_kernel(const int32_t* ids, int64_t n, int32_t lo, int64_t hi,
                                    unsigned long long* first_bad) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n) return;
  if (ids[r] < lo || ids[r] >= hi) atomicMin(first_bad, static_cast<unsigned long long>(r));
}

// One block per row; a copy of the element (widening and rounding back is the identity).
template <typename Elem>
__global__ void embedding_forward_kernel(EmbeddingParams p) {
  const int64_t r = blockIdx.x;
  const Elem* src = static_cast<const Elem*>(p.table) + static_cast<int64_t>(p.ids[r]) * p.width;
  Elem* dst = static_cast<Elem*>(p.out) + r * p.width;
  for (int64_t i = threadIdx.x; i < p.width; i += blockDim.x) dst[i] = src[i];
}

// One thread per column, rows in order: duplicate ids are summed in row order, as on the CPU,
// without atomics (deterministic; the price is a serial loop over rows per column).
template <typename Elem>
__global__ void embedding_backward_kernel(EmbeddingParams p) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= p.width) return;
  const Elem* dout = static_cast<const Elem*>(p.dout);
  for (int64_t r = 0; r < p.rows; ++r) {
    p.dtable[static_cast<int64_t>(p.ids[r]) * p.width + c] += to_float(dout[r * p.width + c]);
  }
}

// ---- optimizer ---------------------------------------------------------------------------------

struct AdamWStep {
  float step_size, inv_sqrt_correction2, decay;
};

template <typename Elem>
__global__ void masked_adamw_kernel(MaskedAdamWParams p, AdamWStep s, Elem* arena) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= p.n) return;
  Elem* target = arena + p.index[i];
  float w = p.master != nullptr ? p.master[i] : to_float(*target);
  const float g = p.grad[i] * p.grad_scale;
  const float m = p.beta1 * p.m[i] + (1.0f - p.beta1) * g;
  const float v = p.beta2 * p.v[i] + (1.0f - p.beta2) * g * g;
  p.m[i] = m;
  p.v[i] = v;
  w *= s.decay;
  w -= s.step_size * m / (sqrtf(v) * s.inv_sqrt_correction2 + p.eps);
  if (p.master != nullptr) p.master[i] = w;
  *target = from_float<Elem>(w);
}

template <typename Elem>
__global__ void masked_sgd_kernel(MaskedAdamWParams p, Elem* arena) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= p.n) return;
  Elem* target = arena + p.index[i];
  float w = p.master != nullptr ? p.master[i] : to_float(*target);
  w -= p.lr * p.grad_scale * p.grad[i];
  if (p.master != nullptr) p.master[i] = w;
  *target = from_float<Elem>(w);
}

// The tape's bookkeeping (engine/backend.h: add, column_sums, compact_scatter_add).
__global__ void add_kernel(float* y, const float* x, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] += x[i];
}

// One thread per column, rows in order, in double: the CPU's order, so the same bits.
__global__ void column_sums_kernel(const float* x, int64_t rows, int64_t cols, int64_t ld,
                                   float* out) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  double sum = 0.0;
  for (int64_t r = 0; r < rows; ++r) sum += x[r * ld + c];
  out[c] = static_cast<float>(sum);
}

// The storage-typed forms (16-bit activation gradients): widened exactly, fp32 sum, one rounding.
template <typename Elem>
__global__ void add_stored_kernel(Elem* y, const Elem* x, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = from_float<Elem>(to_float(y[i]) + to_float(x[i]));
}

template <typename Elem>
__global__ void column_sums_stored_kernel(const Elem* x, int64_t rows, int64_t cols, int64_t ld,
                                          float* out) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  double sum = 0.0;
  for (int64_t r = 0; r < rows; ++r) sum += to_float(x[r * ld + c]);
  out[c] = static_cast<float>(sum);
}

// One block per segment; segments write disjoint compact ranges.
__global__ void compact_scatter_add_kernel(CompactScatterParams p) {
  const int64_t* seg = p.segment + 4 * static_cast<int64_t>(blockIdx.x);
  const float* g = p.g + seg[0] * p.ld + seg[1];
  float* dst = p.compact + seg[2];
  for (int64_t i = threadIdx.x; i < seg[3]; i += blockDim.x) dst[i] += g[i];
}

// Pass 1: block b sums squares of elements b, b + stride, ... (grid-stride, fixed assignment).
__global__ void __launch_bounds__(kThreads) square_sum_partial_kernel(const float* grad, int64_t n,
                                                                      double* partial) {
  __shared__ double scratch[kThreads];
  double sum = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += stride) {
    sum += static_cast<double>(grad[i]) * grad[i];
  }
  const double total = block_sum(sum, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// Block-wide minimum (blockDim.x == kThreads); every thread gets it.
__device__ int64_t block_min(int64_t v, int64_t* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const int64_t other = scratch[threadIdx.x + stride];
      if (other < scratch[threadIdx.x]) scratch[threadIdx.x] = other;
    }
    __syncthreads();
  }
  const int64_t m = scratch[0];
  __syncthreads();
  return m;
}

// The attention-sink loss's row sums: one block per head; sequence by sequence, the block finds
// the first real key (each thread its first real position, then the block's minimum), then each
// thread takes every kThreads-th real query row, its q . k_first
// accumulated in double over d in order (each product of two floats is exact in double, so the
// row's dot is the CPU's bits), the row's lse - scale dot added to the thread's double partial;
// the block's fixed tree sums the partials. Order differs from the CPU's only in the row sum.
__global__ void __launch_bounds__(kThreads) attention_sink_sums_kernel(AttentionSinkParams p,
                                                                       double scale,
                                                                       double* sums) {
  __shared__ double scratch[kThreads];
  __shared__ int64_t first_scratch[kThreads];
  const int64_t T = p.seq, H = p.heads, D = p.head_dim, h = blockIdx.x;
  const int64_t token_stride = 3 * H * D;
  double sum = 0.0;
  for (int64_t b = 0; b < p.batch; ++b) {
    const uint8_t* mask = p.mask == nullptr ? nullptr : p.mask + b * T;
    int64_t mine = mask == nullptr ? 0 : T;  // this thread's first real position (T: none)
    for (int64_t t = threadIdx.x; mask != nullptr && t < T; t += kThreads) {
      if (mask[t] != 0) {
        mine = t;
        break;
      }
    }
    const int64_t first = block_min(mine, first_scratch);
    if (first == T) continue;
    const float* base = p.qkv + b * T * token_stride + h * 3 * D;
    const float* k_first = base + first * token_stride + D;
    for (int64_t t = first + threadIdx.x; t < T; t += kThreads) {
      if (mask != nullptr && mask[t] == 0) continue;
      const float* q = base + t * token_stride;
      double dot = 0.0;
      for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * k_first[d];
      sum += static_cast<double>(p.lse[(b * H + h) * T + t]) - dot * scale;
    }
  }
  const double total = block_sum(sum, scratch);
  if (threadIdx.x == 0) sums[h] = total;
}

__global__ void sum_partials_kernel(const double* partial, int count, double* out) {
  double sum = 0.0;
  for (int i = 0; i < count; ++i) sum += partial[i];
  *out = sum;
}

cudaDataType_t cuda_type(StorageType t) {
  switch (t) {
    case StorageType::kF32: return CUDA_R_32F;
    case StorageType::kBF16: return CUDA_R_16BF;
    case StorageType::kF16: return CUDA_R_16F;
    default: break;  // rejected by gemm_mixed before it gets here
  }
  return CUDA_R_32F;
}

absl::Status check_ids(const int32_t* ids, int64_t rows, int32_t lo, int64_t hi, const char* op,
                       const char* what, cudaStream_t stream) {
  if (rows == 0) return absl::OkStatus();
  StreamScratch scratch(stream);
  unsigned long long* first_bad = nullptr;
  if (absl::Status s = scratch.allocate(&first_bad, 1); !s.ok()) return s;
  const unsigned long long none = static_cast<unsigned long long>(rows);
  ENGINE_CUDA_CHECK(cudaMemcpyAsync(first_bad, &none, sizeof none, cudaMemcpyHostToDevice, stream));
  launch_kernel<first_bad_id_kernel>(blocks_for(rows), kThreads, 0, stream, ids, rows, lo, hi,
                                     first_bad);
  ENGINE_CUDA_LAUNCH_CHECK(first_bad_id_kernel);
  unsigned long long found = none;
  ENGINE_CUDA_CHECK(cudaMemcpyAsync(&found, first_bad, sizeof found, cudaMemcpyDeviceToHost, stream));
  ENGINE_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (found == none) return absl::OkStatus();
  int32_t value = 0;
  ENGINE_CUDA_CHECK(cudaMemcpy(&value, ids + found, sizeof value, cudaMemcpyDeviceToHost));
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " ", value, " at row ", found,
                                                 " is outside the vocabulary [0, ", hi, ")",
                                                 lo < 0 ? " and is not -1" : ""));
}

absl::Status check_embedding(const EmbeddingParams& p, const char* op, cudaStream_t stream) {
  if (p.rows < 0 || p.width <= 0 || p.vocab <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": bad shape rows=", p.rows,
                                                   " width=", p.width, " vocab=", p.vocab));
  }
  if (p.ids == nullptr && p.rows > 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ids are required"));
  }
  return check_ids(p.ids, p.rows, 0, p.vocab, op, "token id", stream);
}

// A GemmParams with a 16-bit input or output type (checked, m, n > 0) through cublasGemmEx.
// Without an epilogue cuBLAS rounds its fp32 result once into C. With one, the fp32 sum
// bias + residual is formed first (in C when C is fp32, else in an fp32 buffer), the product is
// accumulated onto it in fp32 (beta = 1), and the buffer is rounded once into C: rounding the
// product before adding the epilogue would round twice.
absl::Status gemm_with_storage(cublasHandle_t handle, cudaStream_t stream, const GemmParams& p,
                               bool epilogue) {
  MixedGemmParams g;
  g.transpose_a = p.transpose_a, g.transpose_b = p.transpose_b;
  g.m = p.m, g.n = p.n, g.k = p.k;
  g.alpha = p.alpha, g.beta = p.beta;
  g.a_type = g.b_type = p.input_type;
  g.c_type = p.output_type;
  g.a = p.a, g.lda = p.lda;
  g.b = p.b, g.ldb = p.ldb;
  g.c = p.c, g.ldc = p.ldc;
  if (!epilogue) return gemm_mixed(handle, g);
  StreamScratch scratch(stream);
  float* sum = static_cast<float*>(p.c);
  int64_t ld_sum = p.ldc;
  if (p.output_type != StorageType::kF32) {
    if (absl::Status s = scratch.allocate(&sum, p.m * p.n); !s.ok()) return s;
    ld_sum = p.n;
  }
  if (absl::Status s = with_storage(p.input_type, "cuda gemm", [&](auto tag) -> absl::Status {
        using In = typename decltype(tag)::type;
        launch_kernel<gemm_epilogue_kernel<In>>(blocks_for(p.m * p.n), kThreads, 0, stream, p,
                                                sum, ld_sum);
        ENGINE_CUDA_LAUNCH_CHECK(gemm_epilogue_kernel);
        return absl::OkStatus();
      });
      !s.ok()) {
    return s;
  }
  g.beta = 1.0f;
  g.c_type = StorageType::kF32;
  g.c = sum, g.ldc = ld_sum;
  if (absl::Status s = gemm_mixed(handle, g); !s.ok()) return s;
  if (p.output_type == StorageType::kF32) return absl::OkStatus();
  return store_rounded(p.output_type, p.m, p.n, sum, ld_sum, p.c, p.ldc, stream);
}

}  // namespace

absl::Status check_targets(const int32_t* targets, int64_t rows, int64_t vocab,
                           cudaStream_t stream) {
  return check_ids(targets, rows, -1, vocab, "classifier_cross_entropy", "target", stream);
}

absl::Status gemm(cublasHandle_t handle, const GemmParams& p) {
  if (p.m < 0 || p.n < 0 || p.k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda gemm: negative size m=", p.m, " n=", p.n, " k=", p.k));
  }
  const bool epilogue = p.bias != nullptr || p.residual != nullptr;
  if (epilogue && p.beta != 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda gemm: a bias or residual needs beta = 0, got beta=", p.beta));
  }
  const auto type_ok = [](auto) { return absl::OkStatus(); };
  if (absl::Status s = with_storage(p.input_type, "cuda gemm input", type_ok); !s.ok()) return s;
  if (absl::Status s = with_storage(p.output_type, "cuda gemm output", type_ok); !s.ok()) return s;
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  cudaStream_t stream = nullptr;
  ENGINE_CUBLAS_CHECK(cublasGetStream(handle, &stream));
  if (p.input_type != StorageType::kF32 || p.output_type != StorageType::kF32) {
    return gemm_with_storage(handle, stream, p, epilogue);
  }
  float beta = p.beta;
  if (epilogue) {
    launch_kernel<gemm_epilogue_kernel<float>>(blocks_for(p.m * p.n), kThreads, 0, stream, p,
                                               static_cast<float*>(p.c), p.ldc);
    ENGINE_CUDA_LAUNCH_CHECK(gemm_epilogue_kernel);
    beta = 1.0f;
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  ENGINE_CUBLAS_CHECK(cublasSgemm(
      handle, p.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, p.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(p.n), static_cast<int>(p.m), static_cast<int>(p.k), &p.alpha,
      static_cast<const float*>(p.b), static_cast<int>(p.ldb), static_cast<const float*>(p.a),
      static_cast<int>(p.lda), &beta, static_cast<float*>(p.c), static_cast<int>(p.ldc)));
  return absl::OkStatus();
}

absl::Status gemm_mixed(cublasHandle_t handle, const MixedGemmParams& p) {
  if (p.m < 0 || p.n < 0 || p.k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda gemm_mixed: negative size m=", p.m, " n=", p.n, " k=", p.k));
  }
  for (StorageType t : {p.a_type, p.b_type, p.c_type}) {
    if (!storage_supported(t)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cuda gemm_mixed: operand types must be F32, BF16 or F16, got ", dtype_name(t)));
    }
  }
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  ENGINE_CUBLAS_CHECK(cublasGemmEx(
      handle, p.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, p.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(p.n), static_cast<int>(p.m), static_cast<int>(p.k), &p.alpha, p.b,
      cuda_type(p.b_type), static_cast<int>(p.ldb), p.a, cuda_type(p.a_type),
      static_cast<int>(p.lda), &p.beta, p.c, cuda_type(p.c_type), static_cast<int>(p.ldc),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

absl::Status store_rounded(DType to, int64_t rows, int64_t cols, const float* src, int64_t lds,
                           void* dst, int64_t ldd, cudaStream_t stream) {
  return with_storage(to, "cuda store_rounded", [&](auto tag) -> absl::Status {
    using Out = typename decltype(tag)::type;
    if (rows == 0 || cols == 0) return absl::OkStatus();
    launch_kernel<round_store_kernel<Out>>(blocks_for(rows * cols), kThreads, 0, stream, rows,
                                           cols, src, lds, static_cast<Out*>(dst), ldd);
    ENGINE_CUDA_LAUNCH_CHECK(round_store_kernel);
    return absl::OkStatus();
  });
}

absl::Status layernorm_forward(const LayerNormParams& p, cudaStream_t stream) {
  if (absl::Status s = check_layernorm(p, "cuda layernorm_forward"); !s.ok()) return s;
  if (p.y == nullptr) return absl::InvalidArgumentError("cuda layernorm_forward: y is required");
  return with_storage(p.storage, "cuda layernorm_forward", [&](auto tag) -> absl::Status {
    using Elem = typename decltype(tag)::type;
    if (p.rows == 0) return absl::OkStatus();
    launch_kernel<layernorm_forward_kernel<Elem>>(static_cast<unsigned>(p.rows), kThreads, 0,
                                                  stream, p);
    ENGINE_CUDA_LAUNCH_CHECK(layernorm_forward_kernel);
    return absl::OkStatus();
  });
}

absl::Status layernorm_backward(const LayerNormParams& p, cudaStream_t stream) {
  if (absl::Status s = check_layernorm(p, "cuda layernorm_backward"); !s.ok()) return s;
  if (p.dy == nullptr) return absl::InvalidArgumentError("cuda layernorm_backward: dy is required");
  return with_storage(p.storage, "cuda layernorm_backward", [&](auto tag) -> absl::Status {
    using Elem = typename decltype(tag)::type;
    if (p.rows == 0) return absl::OkStatus();
    StreamScratch scratch(stream);
    const float* mean = p.mean;
    const float* rstd = p.rstd;
    if (mean == nullptr || rstd == nullptr) {
      float* m = nullptr;
      float* r = nullptr;
      if (absl::Status s = scratch.allocate(&m, p.rows); !s.ok()) return s;
      if (absl::Status s = scratch.allocate(&r, p.rows); !s.ok()) return s;
      launch_kernel<layernorm_moments_kernel<Elem>>(static_cast<unsigned>(p.rows), kThreads, 0,
                                                    stream, p, m, r);
      ENGINE_CUDA_LAUNCH_CHECK(layernorm_moments_kernel);
      mean = m;
      rstd = r;
    }
    if (p.dweight != nullptr || p.dbias != nullptr) {
      const int64_t chunks = ceil_div(p.rows, kLayerNormRowChunk);
      float* partial = nullptr;
      if (absl::Status s = scratch.allocate(&partial, chunks * 2 * p.width); !s.ok()) return s;
      const dim3 grid(blocks_for(p.width), static_cast<unsigned>(chunks));
      launch_kernel<layernorm_param_partial_kernel<Elem>>(grid, kThreads, 0, stream, p, mean,
                                                          rstd, partial);
      ENGINE_CUDA_LAUNCH_CHECK(layernorm_param_partial_kernel);
      launch_kernel<layernorm_param_reduce_kernel>(blocks_for(p.width), kThreads, 0, stream, p,
                                                   partial, chunks);
      ENGINE_CUDA_LAUNCH_CHECK(layernorm_param_reduce_kernel);
    }
    if (p.dx != nullptr) {
      launch_kernel<layernorm_dx_kernel<Elem>>(static_cast<unsigned>(p.rows), kThreads, 0, stream,
                                               p, mean, rstd);
      ENGINE_CUDA_LAUNCH_CHECK(layernorm_dx_kernel);
    }
    return absl::OkStatus();
  });
}

absl::Status gelu_forward(const GeluParams& p, cudaStream_t stream) {
  if (absl::Status s = check_gelu(p, "cuda gelu_forward", false); !s.ok()) return s;
  return with_storage(p.storage, "cuda gelu_forward", [&](auto tag) -> absl::Status {
    using Elem = typename decltype(tag)::type;
    if (p.n == 0) return absl::OkStatus();
    launch_kernel<gelu_forward_kernel<Elem>>(blocks_for(p.n), kThreads, 0, stream, p.n,
                                             static_cast<const Elem*>(p.x),
                                             static_cast<Elem*>(p.y));
    ENGINE_CUDA_LAUNCH_CHECK(gelu_forward_kernel);
    return absl::OkStatus();
  });
}

absl::Status gelu_backward(const GeluParams& p, cudaStream_t stream) {
  if (absl::Status s = check_gelu(p, "cuda gelu_backward", true); !s.ok()) return s;
  return with_storage(p.storage, "cuda gelu_backward", [&](auto tag) -> absl::Status {
    using Elem = typename decltype(tag)::type;
    if (p.n == 0) return absl::OkStatus();
    launch_kernel<gelu_backward_kernel<Elem>>(
        blocks_for(p.n), kThreads, 0, stream, p.n, static_cast<const Elem*>(p.x),
        static_cast<const Elem*>(p.dy), static_cast<Elem*>(p.dx));
    ENGINE_CUDA_LAUNCH_CHECK(gelu_backward_kernel);
    return absl::OkStatus();
  });
}

absl::Status embedding_forward(const EmbeddingParams& p, cudaStream_t stream) {
  const auto type_ok = [](auto) { return absl::OkStatus(); };
  if (absl::Status s = with_storage(p.storage, "cuda embedding_forward", type_ok); !s.ok()) {
    return s;
  }
  if (absl::Status s = check_embedding(p, "cuda embedding_forward", stream); !s.ok()) return s;
  if (p.table == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("cuda embedding_forward: table and out are required");
  }
  if (p.rows == 0) return absl::OkStatus();
  return with_storage(p.storage, "cuda embedding_forward", [&](auto tag) -> absl::Status {
    using Elem = typename decltype(tag)::type;
    launch_kernel<embedding_forward_kernel<Elem>>(static_cast<unsigned>(p.rows), kThreads, 0,
                                                  stream, p);
    ENGINE_CUDA_LAUNCH_CHECK(embedding_forward_kernel);
    return absl::OkStatus();
  });
}

absl::Status embedding_backward(const EmbeddingParams& p, cudaStream_t stream) {
  const auto type_ok = [](auto) { return absl::OkStatus(); };
  if (absl::Status s = with_storage(p.storage, "cuda embedding_backward", type_ok); !s.ok()) {
    return s;
  }
  if (absl::Status s = check_embedding(p, "cuda embedding_backward", stream); !s.ok()) return s;
  if (p.dout == nullptr || p.dtable == nullptr) {
    return absl::InvalidArgumentError("cuda embedding_backward: dout and dtable are required");
  }
  if (p.rows == 0) return absl::OkStatus();
  return with_storage(p.storage, "cuda embedding_backward", [&](auto tag) -> absl::Status {
    using Elem = typename decltype(tag)::type;
    launch_kernel<embedding_backward_kernel<Elem>>(blocks_for(p.width), kThreads, 0, stream, p);
    ENGINE_CUDA_LAUNCH_CHECK(embedding_backward_kernel);
    return absl::OkStatus();
  });
}

absl::Status masked_adamw(const MaskedAdamWParams& p, cudaStream_t stream) {
  if (p.n < 0) return absl::InvalidArgumentError(absl::StrCat("cuda masked AdamW: n = ", p.n));
  const auto type_ok = [](auto) { return absl::OkStatus(); };
  if (absl::Status s = with_storage(p.storage, "cuda masked AdamW", type_ok); !s.ok()) return s;
  if (p.n > 0 && (p.index == nullptr || p.params == nullptr || p.grad == nullptr ||
                  p.m == nullptr || p.v == nullptr)) {
    return absl::InvalidArgumentError(
        "cuda masked AdamW: null index, params, grad or moment buffers");
  }
  if (p.storage != StorageType::kF32 && p.n > 0 && p.master == nullptr) {
    return absl::InvalidArgumentError(
        "cuda masked AdamW: 16-bit parameters need fp32 master copies");
  }
  if (p.step < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda masked AdamW: step ", p.step, " (1-based)"));
  }
  if (p.n == 0) return absl::OkStatus();
  // Bias corrections in double, as on the CPU.
  const double correction1 = 1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step));
  const double correction2 = 1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step));
  const AdamWStep s{static_cast<float>(p.lr / correction1),
                    static_cast<float>(1.0 / std::sqrt(correction2)),
                    1.0f - p.lr * p.weight_decay};
  return with_storage(p.storage, "cuda masked AdamW", [&](auto tag) -> absl::Status {
    using Elem = typename decltype(tag)::type;
    launch_kernel<masked_adamw_kernel<Elem>>(blocks_for(p.n), kThreads, 0, stream, p, s,
                                             static_cast<Elem*>(p.params));
    ENGINE_CUDA_LAUNCH_CHECK(masked_adamw_kernel);
    return absl::OkStatus();
  });
}

absl::Status masked_sgd(const MaskedAdamWParams& p, cudaStream_t stream) {
  if (p.n < 0) return absl::InvalidArgumentError(absl::StrCat("cuda masked SGD: n = ", p.n));
  const auto type_ok = [](auto) { return absl::OkStatus(); };
  if (absl::Status s = with_storage(p.storage, "cuda masked SGD", type_ok); !s.ok()) return s;
  if (p.n > 0 && (p.index == nullptr || p.params == nullptr || p.grad == nullptr)) {
    return absl::InvalidArgumentError("cuda masked SGD: null index, params or grad");
  }
  if (p.storage != StorageType::kF32 && p.n > 0 && p.master == nullptr) {
    return absl::InvalidArgumentError("cuda masked SGD: 16-bit parameters need fp32 master copies");
  }
  if (p.n == 0) return absl::OkStatus();
  return with_storage(p.storage, "cuda masked SGD", [&](auto tag) -> absl::Status {
    using Elem = typename decltype(tag)::type;
    launch_kernel<masked_sgd_kernel<Elem>>(blocks_for(p.n), kThreads, 0, stream, p,
                                           static_cast<Elem*>(p.params));
    ENGINE_CUDA_LAUNCH_CHECK(masked_sgd_kernel);
    return absl::OkStatus();
  });
}

absl::StatusOr<double> global_grad_norm(const float* grad, int64_t n, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cuda global_grad_norm: n = ", n));
  if (n == 0) return 0.0;
  if (grad == nullptr) return absl::InvalidArgumentError("cuda global_grad_norm: null grad");
  StreamScratch scratch(stream);
  double* partial = nullptr;
  if (absl::Status s = scratch.allocate(&partial, kNormBlocks + 1); !s.ok()) return s;
  launch_kernel<square_sum_partial_kernel>(kNormBlocks, kThreads, 0, stream, grad, n, partial);
  ENGINE_CUDA_LAUNCH_CHECK(square_sum_partial_kernel);
  launch_kernel<sum_partials_kernel>(1, 1, 0, stream, partial, kNormBlocks, partial + kNormBlocks);
  ENGINE_CUDA_LAUNCH_CHECK(sum_partials_kernel);
  double sum = 0.0;
  ENGINE_CUDA_CHECK(cudaMemcpyAsync(&sum, partial + kNormBlocks, sizeof sum,
                                    cudaMemcpyDeviceToHost, stream));
  ENGINE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return std::sqrt(sum);
}

absl::StatusOr<std::vector<double>> attention_sink_sums(const AttentionSinkParams& p,
                                                        cudaStream_t stream) {
  const int64_t B = p.batch, T = p.seq, H = p.heads, D = p.head_dim;
  if (B < 0 || T < 0 || H < 0 || D <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda attention_sink_sums: shape B=", B,
                                                   " T=", T, " H=", H, " D=", D));
  }
  std::vector<double> sums(static_cast<size_t>(H), 0.0);
  if (B * T * H == 0) return sums;
  if (p.qkv == nullptr || p.lse == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cuda attention_sink_sums: null ",
                                                   p.qkv == nullptr ? "qkv" : "lse"));
  }
  StreamScratch scratch(stream);
  double* device_sums = nullptr;
  if (absl::Status s = scratch.allocate(&device_sums, H); !s.ok()) return s;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));  // the CPU's, computed once
  launch_kernel<attention_sink_sums_kernel>(static_cast<unsigned>(H), kThreads, 0, stream, p,
                                            scale, device_sums);
  ENGINE_CUDA_LAUNCH_CHECK(attention_sink_sums_kernel);
  ENGINE_CUDA_CHECK(cudaMemcpyAsync(sums.data(), device_sums, sums.size() * sizeof(double),
                                    cudaMemcpyDeviceToHost, stream));
  ENGINE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return sums;
}

absl::Status add(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cuda add: n = ", n));
  if (n == 0) return absl::OkStatus();
  launch_kernel<add_kernel>(blocks_for(n), kThreads, 0, stream, y, x, n);
  ENGINE_CUDA_LAUNCH_CHECK(add_kernel);
  return absl::OkStatus();
}

absl::Status column_sums(const float* x, int64_t rows, int64_t cols, int64_t ld, float* out,
                         cudaStream_t stream) {
  if (rows < 0 || cols < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda column_sums: ", rows, " x ", cols));
  }
  if (cols == 0) return absl::OkStatus();
  launch_kernel<column_sums_kernel>(blocks_for(cols), kThreads, 0, stream, x, rows, cols, ld, out);
  ENGINE_CUDA_LAUNCH_CHECK(column_sums_kernel);
  return absl::OkStatus();
}

absl::Status add_stored(DType storage, void* y, const void* x, int64_t n, cudaStream_t stream) {
  if (storage == DType::kF32) {
    return add(static_cast<float*>(y), static_cast<const float*>(x), n, stream);
  }
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cuda add: n = ", n));
  return with_storage(storage, "cuda add", [&](auto tag) -> absl::Status {
    using Elem = typename decltype(tag)::type;
    if (n == 0) return absl::OkStatus();
    launch_kernel<add_stored_kernel<Elem>>(blocks_for(n), kThreads, 0, stream,
                                           static_cast<Elem*>(y), static_cast<const Elem*>(x), n);
    ENGINE_CUDA_LAUNCH_CHECK(add_stored_kernel);
    return absl::OkStatus();
  });
}

absl::Status column_sums_stored(DType storage, const void* x, int64_t rows, int64_t cols,
                                int64_t ld, float* out, cudaStream_t stream) {
  if (storage == DType::kF32) {
    return column_sums(static_cast<const float*>(x), rows, cols, ld, out, stream);
  }
  if (rows < 0 || cols < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda column_sums: ", rows, " x ", cols));
  }
  return with_storage(storage, "cuda column_sums", [&](auto tag) -> absl::Status {
    using Elem = typename decltype(tag)::type;
    if (cols == 0) return absl::OkStatus();
    launch_kernel<column_sums_stored_kernel<Elem>>(blocks_for(cols), kThreads, 0, stream,
                                                   static_cast<const Elem*>(x), rows, cols, ld,
                                                   out);
    ENGINE_CUDA_LAUNCH_CHECK(column_sums_stored_kernel);
    return absl::OkStatus();
  });
}

absl::Status compact_scatter_add(const CompactScatterParams& p, cudaStream_t stream) {
  if (p.segments < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda compact_scatter_add: ", p.segments));
  }
  if (p.segments == 0) return absl::OkStatus();
  if (p.segments > 0x7fffffff) {
    return absl::InvalidArgumentError("cuda compact_scatter_add: too many segments for one grid");
  }
  launch_kernel<compact_scatter_add_kernel>(static_cast<unsigned>(p.segments), kThreads, 0, stream,
                                            p);
  ENGINE_CUDA_LAUNCH_CHECK(compact_scatter_add_kernel);
  return absl::OkStatus();
}

}  // namespace engine::cuda
