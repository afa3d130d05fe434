// Internal to kernels/cuda/attention*.cu: the argument block every attention kernel receives, the
// row-layout helpers (positions, mask, first real key) they share, and the tensor-core launchers
// that attention.cu's dispatch calls. Not part of the library's interface.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/attention.h"

namespace engine::cuda::attention_detail {

// Plain, trivially copyable: passed by value as a kernel argument. Element pointers are untyped
// because one block serves all storage types; each kernel casts to its own type.
struct KernelArgs {
  int64_t batch, seq, heads, head_dim, query_begin;
  float scale;
  const void* qkv;            // (B, T, H, 3, D)
  const float* slopes;        // (H)
  const int32_t* positions;   // (B, T), or null: position = index (no mask)
  const int32_t* first_real;  // (B), or null: 0 (no mask)
  const uint8_t* mask;        // (B, T), or null: every key real
  void* out;                  // (B, T - query_begin, H * D)
  float* lse;                 // (B, H, T)
  float* row_entropy;         // (B, H, T), or null: entropy not wanted
  const void* dout;           // (B, T, H * D)
  void* dqkv;                 // (B, T, H, 3, D)
  const float* delta;         // (B, H, T): dout_i . out_i
  const float* uniform_dv;    // (B, H, D): dV share of fully padded query rows, or null
  // (H): per-head weight w_h of the auxiliary sink loss (AlibiAttentionParams::sink_loss_weight),
  // or null. Its score gradient w_h (P[i, j] - [j = first real key]) for real query rows i is
  // split in two: delta_kernel folds -w_h into delta (so P (dP - delta) gains w_h P), and the
  // dS of the first real key gains -w_h (times scale, as dS is stored), via sink_first_key.
  const float* sink_weight;
};

__host__ __device__ inline int64_t token_stride(const KernelArgs& a) {
  return 3 * a.heads * a.head_dim;
}

#if defined(__CUDACC__) || defined(ENGINE_CUDA_EMULATION)
__device__ inline bool key_is_real(const KernelArgs& a, int64_t b, int64_t j) {
  return a.mask == nullptr || a.mask[b * a.seq + j] != 0;
}
__device__ inline float key_position(const KernelArgs& a, int64_t b, int64_t j) {
  return static_cast<float>(a.positions == nullptr ? j : a.positions[b * a.seq + j]);
}
__device__ inline int64_t first_real_key(const KernelArgs& a, int64_t b) {
  return a.first_real == nullptr ? 0 : a.first_real[b];
}
// The sink loss's term at the first real key, as dS * scale is stored: -w_h * scale when query
// row i is real and key j is the first real key `first` (0 otherwise, and without a sink loss).
__device__ inline float sink_first_key(const KernelArgs& a, int64_t b, int64_t h, int64_t i,
                                       int64_t j, int64_t first) {
  if (a.sink_weight == nullptr || j != first || !key_is_real(a, b, i)) return 0.0f;
  return -a.sink_weight[h] * a.scale;
}
#endif

// Tensor-core kernels (attention_mma.cu). head_dim must satisfy tensor_core_head_dim_supported;
// storage is kBF16 or kF16. The forward writes out, lse and (when non-null) row_entropy for rows
// at or after the first real key; the backward writes dQ for every row and dK, dV for every key.
absl::Status launch_mma_forward(const KernelArgs& a, StorageType storage, cudaStream_t stream);
absl::Status launch_mma_backward(const KernelArgs& a, StorageType storage, cudaStream_t stream);

}  // namespace engine::cuda::attention_detail
