// Backend: the one op interface every device implements (the CPU reference in kernels/cpu, CUDA in
// kernels/cuda/cuda_backend.cu).
// Contract: each op takes one plain params struct (pointers, sizes, strides, scalars) built on
// the host and returns a Status; no op allocates persistent memory or exits the process.
// Pointers refer to memory of the backend's device (host memory for the CPU backend, device
// memory from `allocate` for CUDA). Memory is the one thing a backend hands out: `allocate`, its
// deallocator and the copies below (engine/device_array.h wraps them); ops are enqueued in call
// order and a copy to the host returns after everything enqueued before it has finished.
// Each struct names the storage type of its
// activation and parameter tensors (a DType field; F32 by default) and holds those tensors as
// untyped pointers; statistics, gradients of fp32 state and optimizer state are fp32 float*
// whatever the storage. Arithmetic is fp32 on every backend: 16-bit inputs are widened exactly
// and every stored 16-bit output is rounded once, to nearest even (docs/CUDA.md, "Storage types").
// Storage F32, BF16 and F16 are accepted by every op on every backend; an integer type is an
// InvalidArgumentError naming the op and the type. Shapes are written as (B, T, C) comments, with
// B batch rows, T positions, C hidden width, H heads, D head dim, V vocabulary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace engine {

enum class DeviceKind { kCpu, kCuda };

// C = alpha * op(A) * op(B) + beta * C, row-major. op(X) = X or X^T.
// Optional epilogue of a linear layer (only with beta = 0): C = alpha op(A) op(B) + bias + R,
// bias (n) added to every row, R (m, n) with leading dimension ldr (a residual); either may be
// null. R may be C itself (ldr = ldc): the sum is then formed in place.
// Storage: input_type for a, b, bias and residual; output_type for c (also read when beta != 0).
// Accumulation is fp32; the epilogue is added in fp32 and the sum rounded once to output_type.
struct GemmParams {
  DType input_type = DType::kF32;
  DType output_type = DType::kF32;
  bool transpose_a = false;
  bool transpose_b = false;
  int64_t m = 0, n = 0, k = 0;  // op(A) is (m, k), op(B) is (k, n), C is (m, n)
  float alpha = 1.0f, beta = 0.0f;
  const void* a = nullptr; int64_t lda = 0;
  const void* b = nullptr; int64_t ldb = 0;
  void* c = nullptr; int64_t ldc = 0;
  const void* bias = nullptr;
  const void* residual = nullptr; int64_t ldr = 0;
};

// y = (x - mean) / sqrt(var + eps) * weight + bias over the last dim; keeps mean and rstd.
// Storage: x, weight, bias, y, dy, dx; mean, rstd, dweight and dbias are fp32.
struct LayerNormParams {
  DType storage = DType::kF32;
  int64_t rows = 0, width = 0;   // x, y: (rows, width)
  float eps = 1e-5f;
  const void* x = nullptr;
  const void* weight = nullptr; const void* bias = nullptr;  // (width)
  void* y = nullptr;
  float* mean = nullptr; float* rstd = nullptr;                // (rows), may be null
  // Backward only: dy in, dx out (accumulated when accumulate_dx), dweight/dbias accumulated,
  // each may be null when nobody needs it.
  const void* dy = nullptr;
  void* dx = nullptr; bool accumulate_dx = false;
  float* dweight = nullptr; float* dbias = nullptr;
};

// tanh-approximation GELU, elementwise over n values. Storage: x, y, dy, dx.
// exact: the erf form x * (1 + erf(x / sqrt 2)) / 2 (Falcon, MPT) instead; only the CPU backend
// implements it (the model code runs those families on the CPU only).
struct GeluParams {
  DType storage = DType::kF32;
  int64_t n = 0;
  bool exact = false;
  const void* x = nullptr; void* y = nullptr;
  const void* dy = nullptr; void* dx = nullptr;  // backward
};

// out[r] = table[ids[r]]; backward scatters-adds rows of dout into dtable.
// Storage: table, out, dout; dtable is fp32.
struct EmbeddingParams {
  DType storage = DType::kF32;
  int64_t rows = 0, width = 0, vocab = 0;
  const int32_t* ids = nullptr;      // (rows)
  const void* table = nullptr;       // (vocab, width)
  void* out = nullptr;               // (rows, width)
  const void* dout = nullptr; float* dtable = nullptr;  // backward
};

// Per-(batch row, head) attention statistics, accumulated over valid query rows (METHOD.md 2).
struct HeadStatsAccumulator {
  double* bos_mass_sum = nullptr;    // (B, H): sum over valid rows t of A[t, first valid key]
  double* entropy_sum = nullptr;     // (B, H): sum over rows of -sum_j A ln A
  double* local_mass_sum = nullptr;  // (B, H): sum over rows of A[t, t-2..t]
  int64_t* rows = nullptr;           // (B): number of valid query rows
};

// Fused causal ALiBi attention over a fused QKV activation, flash-style (no (T, T) buffer).
// s[i, j] = q_i . k_j * scale + slope_h * pos_j, j <= i, masked keys skipped (the bias term
// rounded as Falcon's when bf16_bias_divisor is set).
// Only query rows [query_begin, T) are computed (incremental decoding over a cache of fused QKV
// rows); the backward requires query_begin = 0. Statistics are added (+=) to the accumulator;
// stats.rows[b], when given, gains the number of real query rows of batch row b in this call.
// The one params struct of the attention family on every device: the CPU kernel takes it as is,
// the CUDA kernels through cuda::AttentionParams (this plus a stream). qkv, out, dout and dqkv
// hold elements of `storage` (kF32, kBF16 or kF16 on both backends; the CUDA kernels take the
// 16-bit types on tensor cores for head_dim 64, 80, 96 and 128). Everything else is fp32 / int whatever the storage.
struct AlibiAttentionParams {
  DType storage = DType::kF32;
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
  int64_t query_begin = 0;
  float scale = 0.0f;                    // 1/sqrt(head_dim)
  const void* qkv = nullptr;             // (B, T, H, 3, D): BLOOM's per-head interleaved Q, K, V
  const float* slopes = nullptr;         // (H)
  const int32_t* positions = nullptr;    // (B, T) key positions (cumsum(mask) - 1); null = derive
  const uint8_t* mask = nullptr;         // (B, T) 1 = real token, 0 = padding; null = all real
  void* out = nullptr;                   // (B, T - query_begin, H * D); read by the backward
  float* lse = nullptr;                  // (B, H, T) row log-sum-exp, kept for backward
  HeadStatsAccumulator stats;            // all null = statistics off
  // Backward only.
  const void* dout = nullptr;            // (B, T, H * D)
  void* dqkv = nullptr;                  // (B, T, H, 3, D), overwritten
  // Backward only, optional: per-head weight w_h of an auxiliary "attention sink" loss
  // w_h * sum over real query rows t of -log A[t, first real key] (controlled collapse,
  // docs/REPAIR.md). Its score gradient w_h * (A[t, j] - [j = first]) is added to dS; the caller
  // folds any mean over rows into w_h. Null = no auxiliary loss. On a device it is device memory.
  const float* sink_loss_weight = nullptr;  // (H) or null
  // Falcon's ALiBi (transformers' build_alibi_tensor, then its division by sqrt(head_dim)): when
  // positive, the bias of key j is bf16(slope_h * bf16(pos_j)) / bf16_bias_divisor instead of
  // slope_h * pos_j: the position rounded to the nearest bfloat16 (ties to even; exact below
  // 256), the fp32 product rounded the same way, then divided in fp32; `slopes` hold the
  // unscaled (bfloat16-valued) slopes. Forward and backward. 0 = the exact fp32 product (BLOOM,
  // MPT). CPU only; the CUDA backend refuses it.
  float bf16_bias_divisor = 0.0f;
};

// The attention-sink loss's per-head row sums for one layer (controlled collapse; the loss is in
// model/bloom_backward.h): sums[h] = sum over sequences b and the real query rows t of b of
// lse[b, h, t] - scale * q_t . k_first(b), scale = 1 / sqrt(head_dim) in double, first(b) = the
// first real key of sequence b (0 without a mask; a sequence with no real token adds nothing).
// That is -log A[t, first] summed over rows, since the first real key's ALiBi position is 0.
// qkv and lse are the attention forward's (fp32 only: 16-bit qkv is refused), all pointers in the
// backend's memory; the H sums come back to the host, accumulated in double.
struct AttentionSinkParams {
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
  const float* qkv = nullptr;     // (B, T, H, 3, D): BLOOM's per-head interleaved Q, K, V
  const float* lse = nullptr;     // (B, H, T) row log-sum-exp of the forward
  const uint8_t* mask = nullptr;  // (B, T) 1 = real token, 0 = padding; null = all real
};

// Tied LM head + log-softmax + mean next-token cross-entropy, in vocabulary chunks so the
// (rows, V) logits are never held at once. Storage: hidden, embedding, dhidden; logits,
// row_loss and dembedding are fp32.
struct ClassifierParams {
  DType storage = DType::kF32;
  int64_t rows = 0, width = 0, vocab = 0;
  int64_t vocab_chunk = 8192;
  const void* hidden = nullptr;      // (rows, width) after ln_f
  const void* embedding = nullptr;   // (V, width)
  const int32_t* targets = nullptr;  // (rows), -1 = not scored
  float* logits = nullptr;           // optional (rows, V) output
  float* row_loss = nullptr;         // (rows) -log p(target), 0 for unscored rows
  void* dhidden = nullptr;           // optional: gradient of sum-of-scored-losses * loss_scale
  float* dembedding = nullptr;       // optional, accumulated
  float loss_scale = 1.0f;
};

// AdamW over the compact trainable state: element i of the compact buffers belongs to arena
// element index[i]; frozen elements are simply never listed, so they cannot move.
// Storage: the arena `params`. With 16-bit storage the fp32 masters are required and the arena
// element receives its updated master rounded to nearest even.
struct MaskedAdamWParams {
  DType storage = DType::kF32;
  int64_t n = 0;                     // trainable elements
  const int64_t* index = nullptr;    // (n) arena element offsets
  void* params = nullptr;            // arena base
  float* master = nullptr;           // (n) fp32 master copy, may be null when params are fp32
  const float* grad = nullptr;       // (n)
  float* m = nullptr; float* v = nullptr;  // (n)
  float lr = 0.0f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  float grad_scale = 1.0f;           // multiplies grad (clipping)
  int64_t step = 1;                  // 1-based, for bias correction
};

// The compact gradient's scatter-add (engine/tape.h, CompactGradients::accumulate): for each
// segment s, compact[dst_s + i] += g[row_s * ld + col_s + i] for i < length_s. Segments are the
// trainable stretches of one row of a parameter block; no two segments of a call write the same
// compact element, so every element receives exactly one fp32 add and the result does not depend
// on the order. fp32 throughout.
struct CompactScatterParams {
  int64_t segments = 0;
  const int64_t* segment = nullptr;  // (segments, 4): row, col, dst, length
  const float* g = nullptr;          // the dense block gradient, row stride ld
  int64_t ld = 0;
  float* compact = nullptr;          // the compact gradient buffer
};

// What a backend's allocator holds (Backend::memory_stats). Live memory is what `allocate`
// handed out and the deallocator has not yet taken back: `live_bytes` as requested,
// `live_block_bytes` as the blocks holding it (a caching allocator rounds up to size classes);
// the peaks are the largest values since the backend was made or reset_peak_memory.
struct BackendMemoryStats {
  int64_t live_bytes = 0, live_block_bytes = 0;
  int64_t peak_live_bytes = 0, peak_live_block_bytes = 0;
  int64_t cached_bytes = 0;        // freed blocks kept for reuse
  int64_t device_allocations = 0;  // blocks obtained from the device (e.g. cudaMalloc calls)
  int64_t reuses = 0;              // requests served from a cached block
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string_view name() const = 0;

  // Device memory: `bytes` zeroed bytes aligned to at least 256 (a ResourceExhausted error
  // naming the size when the device is full). It is freed by calling the deallocator (null is
  // fine): a plain function rather than a member, so memory may outlive the Backend object that
  // handed it out (a model's resident weights destroyed after the command's backend).
  using Deallocator = void (*)(void*);
  virtual absl::StatusOr<void*> allocate(size_t bytes) = 0;
  virtual Deallocator deallocator() const = 0;
  // The allocator's bookkeeping (all zero where the backend does not track it: the CPU).
  virtual BackendMemoryStats memory_stats() const { return {}; }
  virtual void reset_peak_memory() {}
  // Copies between host and device memory and within the device; they follow every op
  // enqueued before them, and to_host returns once the bytes are on the host.
  virtual absl::Status copy_to_device(void* device, const void* host, size_t bytes) = 0;
  virtual absl::Status copy_to_host(void* host, const void* device, size_t bytes) = 0;
  virtual absl::Status copy_on_device(void* dst, const void* src, size_t bytes) = 0;
  virtual absl::Status fill_zero(void* device, size_t bytes) = 0;

  virtual absl::Status gemm(const GemmParams& p) = 0;
  virtual absl::Status layernorm_forward(const LayerNormParams& p) = 0;
  virtual absl::Status layernorm_backward(const LayerNormParams& p) = 0;
  virtual absl::Status gelu_forward(const GeluParams& p) = 0;
  virtual absl::Status gelu_backward(const GeluParams& p) = 0;
  virtual absl::Status embedding_forward(const EmbeddingParams& p) = 0;
  virtual absl::Status embedding_backward(const EmbeddingParams& p) = 0;
  virtual absl::Status alibi_attention_forward(const AlibiAttentionParams& p) = 0;
  virtual absl::Status alibi_attention_backward(const AlibiAttentionParams& p) = 0;
  // AttentionSinkParams: the H per-head sums, read back to the host (statistics out).
  virtual absl::StatusOr<std::vector<double>> attention_sink_sums(
      const AttentionSinkParams& p) = 0;
  virtual absl::Status classifier_cross_entropy(const ClassifierParams& p) = 0;
  virtual absl::Status masked_adamw(const MaskedAdamWParams& p) = 0;
  // p[index[i]] -= lr * grad_scale * grad[i] over the compact trainable state (no optimizer
  // state; m, v, betas, eps and weight decay are ignored); with masters, the master is updated
  // and the arena receives it. For ablations and gradient checks.
  virtual absl::Status masked_sgd(const MaskedAdamWParams& p) = 0;
  // sqrt(sum grad[i]^2) over the n values of the compact gradient, accumulated in double in a
  // fixed order, so the result does not depend on the thread count or scheduling (clipping and
  // the non-finite check). Reads the result back to the host.
  virtual absl::StatusOr<double> gradient_norm(const float* grad, int64_t n) = 0;

  // The tape's fp32 gradient bookkeeping (engine/tape.cpp), so gradient buffers may live on the
  // device. y[i] += x[i] for i < n (a residual's second gradient contribution).
  virtual absl::Status add(float* y, const float* x, int64_t n) = 0;
  // out[c] = sum over r < rows of x[r * ld + c] for c < cols, accumulated in double in row order
  // and rounded once (a bias gradient: the column sums of the output gradient).
  virtual absl::Status column_sums(const float* x, int64_t rows, int64_t cols, int64_t ld,
                                   float* out) = 0;
  virtual absl::Status compact_scatter_add(const CompactScatterParams& p) = 0;
  // The storage-typed forms of add and column_sums, for a tape over 16-bit activations (whose
  // activation gradients are 16-bit as the ops store them): y and x hold `storage` elements.
  // add_stored: y[i] = y[i] + x[i] in fp32, rounded once to `storage`. column_sums_stored: each
  // element widened exactly, summed in double in row order, out fp32. F32 storage is add /
  // column_sums, unchanged; a backend without the 16-bit forms says Unimplemented.
  virtual absl::Status add_stored(DType storage, void* y, const void* x, int64_t n) {
    if (storage == DType::kF32) {
      return add(static_cast<float*>(y), static_cast<const float*>(x), n);
    }
    return absl::UnimplementedError("add_stored: 16-bit storage not implemented by this backend");
  }
  virtual absl::Status column_sums_stored(DType storage, const void* x, int64_t rows,
                                          int64_t cols, int64_t ld, float* out) {
    if (storage == DType::kF32) {
      return column_sums(static_cast<const float*>(x), rows, cols, ld, out);
    }
    return absl::UnimplementedError(
        "column_sums_stored: 16-bit storage not implemented by this backend");
  }
};

// The CPU reference backend (fp32 arithmetic, OpenMP, BLAS GEMM; F32 storage is the reference,
// BF16 / F16 storage its twin of the CUDA backend: kernels/cpu/storage.h).
std::unique_ptr<Backend> make_cpu_backend();

}  // namespace engine
