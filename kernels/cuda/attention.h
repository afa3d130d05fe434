// Fused causal ALiBi attention on CUDA: one params struct for the kernel family, two entry points.
// Contract: identical to engine/backend.h's AlibiAttentionParams and the CPU kernel
// (kernels/cpu/attention.cpp), for three storage types of qkv / out / dout / dqkv:
//   kF32  : plain fp32 kernels (one warp per row, no tensor cores), the CudaBackend's path;
//   kBF16 / kF16 : tensor-core kernels (mma.sync m16n8k16, fp32 accumulation) for head_dim
//           64, 80, 96 or 128 (80 native, not padded); any other head_dim is an error.
// Softmax statistics (row max, sum, lse, entropy accumulator) are fp32 in every variant; lse is
// always fp32, (B, H, T). The per-(row, head) statistics are reduced on the device into the
// HeadStatsAccumulator (device pointers, double), deterministically (fixed summation order).
// Fully padded query rows follow the CPU kernel's Note [fully padded query rows].
// All pointers are device pointers; every call is enqueued on `stream` and returns without
// synchronising. Temporary buffers (derived positions, per-row entropy, delta) come from the
// stream-ordered allocator and are released on the same stream. qkv, out, dout and dqkv of the
// 16-bit variants must be 16-byte aligned.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "engine/backend.h"
#include "engine/dtype.h"

namespace engine::cuda {

// The engine's one element-type enum (engine/dtype.h). The kernels store kF32, kBF16 or kF16;
// every entry point rejects the integer types (storage_supported).
using StorageType = DType;
inline bool storage_supported(StorageType t) {
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16;
}

// The attention family's params (engine/backend.h's AlibiAttentionParams: shapes, storage, the
// pointers, which are device pointers here) and the stream the kernels are enqueued on.
struct AttentionParams : AlibiAttentionParams {
  cudaStream_t stream = nullptr;
};

absl::Status attention_forward(const AttentionParams& p);
absl::Status attention_backward(const AttentionParams& p);

// Head dims the tensor-core variants are instantiated for.
bool tensor_core_head_dim_supported(int64_t head_dim);

}  // namespace engine::cuda
