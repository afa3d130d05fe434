// The CUDA implementations of the Backend ops other than attention (see kernels/cuda/attention.h),
// as free functions so tests and benchmarks can call them with their own streams and storage
// types. Contracts are those of engine/backend.h and the CPU kernels (kernels/cpu/<op>.cpp); all
// pointers are device pointers, every call is enqueued on `stream` (nullptr = the default stream)
// and returns a Status without synchronising, except where a comment says it reads a result back.
// Reductions (LayerNorm parameter gradients, embedding scatter-add, the gradient norm) use a fixed
// summation order, so results do not depend on scheduling.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "kernels/cuda/attention.h"

namespace engine::cuda {

// GEMM through cuBLAS (row-major, as GemmParams, with its input and output storage types). The
// handle's stream is used. F32 throughout: cublasSgemm. Otherwise cublasGemmEx with fp32 compute
// (gemm_mixed); a bias / residual epilogue is summed with the product in fp32 (in an fp32
// scratch buffer when C is 16-bit) and rounded once into C.
absl::Status gemm(cublasHandle_t handle, const GemmParams& p);

// C = alpha op(A) op(B) + beta C, row-major, with per-operand storage types (bf16 / fp16 / fp32)
// and fp32 accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F). Leading dimensions are free, so a
// sub-block of a larger matrix (the trainable rows or columns of one head) is a pointer to its
// first element plus the full matrix's row stride.
struct MixedGemmParams {
  bool transpose_a = false, transpose_b = false;
  int64_t m = 0, n = 0, k = 0;  // op(A) (m, k), op(B) (k, n), C (m, n)
  float alpha = 1.0f, beta = 0.0f;
  StorageType a_type = StorageType::kBF16, b_type = StorageType::kBF16,
              c_type = StorageType::kF32;
  const void* a = nullptr; int64_t lda = 0;
  const void* b = nullptr; int64_t ldb = 0;
  void* c = nullptr; int64_t ldc = 0;
};
absl::Status gemm_mixed(cublasHandle_t handle, const MixedGemmParams& p);

// dst (rows, cols; leading dimension ldd; elements of `to`) = src (fp32, leading dimension lds),
// each element rounded once to nearest even: the one store of a value accumulated in fp32.
absl::Status store_rounded(DType to, int64_t rows, int64_t cols, const float* src, int64_t lds,
                           void* dst, int64_t ldd, cudaStream_t stream);

absl::Status layernorm_forward(const LayerNormParams& p, cudaStream_t stream);
absl::Status layernorm_backward(const LayerNormParams& p, cudaStream_t stream);
absl::Status gelu_forward(const GeluParams& p, cudaStream_t stream);
absl::Status gelu_backward(const GeluParams& p, cudaStream_t stream);
// Ids are checked on the device before anything is written; a bad id is read back (one
// synchronisation) to name its row and value in the error.
absl::Status embedding_forward(const EmbeddingParams& p, cudaStream_t stream);
absl::Status embedding_backward(const EmbeddingParams& p, cudaStream_t stream);
// GEMMs go through `handle` (which must use `stream`); vocabulary chunks as on the CPU.
absl::Status classifier_cross_entropy(const ClassifierParams& p, cublasHandle_t handle,
                                      cudaStream_t stream);
// The classifier's target check (every target in [-1, vocab)), shared with ops.cu's id check.
absl::Status check_targets(const int32_t* targets, int64_t rows, int64_t vocab,
                           cudaStream_t stream);

// Masked AdamW over the compact trainable state. The arena p.params holds elements of
// p.storage; with kBF16 / kF16, p.master (fp32 master copies of the trainable elements) is
// required and the arena receives the master value rounded to nearest even.
absl::Status masked_adamw(const MaskedAdamWParams& p, cudaStream_t stream);

// Masked SGD over the compact trainable state (the CPU's cpu::masked_sgd): arena[index[i]] -=
// lr * grad_scale * grad[i]; storage and masters as for masked_adamw; m, v are not used.
absl::Status masked_sgd(const MaskedAdamWParams& p, cudaStream_t stream);

// sqrt(sum grad[i]^2) in double over n fp32 values (the compact trainable gradient), for
// clipping. Reads the result back (synchronises the stream).
absl::StatusOr<double> global_grad_norm(const float* grad, int64_t n, cudaStream_t stream);

// The attention-sink loss's per-head row sums (engine/backend.h AttentionSinkParams; fp32 qkv):
// one block per head, each row's dot in double in the CPU's order, rows summed in double by a
// fixed tree (docs/TOLERANCES.md bounds the difference from the CPU's row order). Reads the H
// sums back (synchronises the stream).
absl::StatusOr<std::vector<double>> attention_sink_sums(const AttentionSinkParams& p,
                                                        cudaStream_t stream);

// The tape's gradient bookkeeping (engine/backend.h): y += x; column sums in double in row order
// (one thread per column, the CPU's order, so the same bits); the compact scatter-add (one block
// per segment).
absl::Status add(float* y, const float* x, int64_t n, cudaStream_t stream);
absl::Status column_sums(const float* x, int64_t rows, int64_t cols, int64_t ld, float* out,
                         cudaStream_t stream);
absl::Status compact_scatter_add(const CompactScatterParams& p, cudaStream_t stream);
// The storage-typed forms (Backend::add_stored, column_sums_stored); F32 is add / column_sums.
absl::Status add_stored(DType storage, void* y, const void* x, int64_t n, cudaStream_t stream);
absl::Status column_sums_stored(DType storage, const void* x, int64_t rows, int64_t cols,
                                int64_t ld, float* out, cudaStream_t stream);

}  // namespace engine::cuda
