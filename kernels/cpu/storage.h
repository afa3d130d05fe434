// The CPU backend's 16-bit storage twin of the CUDA backend (engine/backend.h, "Storage").
//
// Note [the CPU storage twin]
// With storage kBF16 (or kF16) a CPU op reads its 16-bit tensors, widens them to fp32 (exact),
// runs the very fp32 kernel the F32 path runs, and rounds every tensor it stores back to the
// storage type once, to nearest even (engine/dtype.h's conversions, the only ones on the CPU).
// So the twin's arithmetic is the fp32 reference's by construction, and a twin result differs
// from the fp32 result on the same (16-bit representable) inputs by the output rounding alone;
// the CUDA kernels, which also compute in fp32 and round once on store, are compared with it
// (docs/TOLERANCES.md, "Storage types"). F32 storage calls the fp32 kernel directly, unchanged.
// The widened copies are temporary buffers of the call: the twin is a reference, not a fast
// path; embedding and AdamW store their 16-bit elements directly (no widened table or arena),
// and the classifier widens its embedding table one vocabulary chunk at a time.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "engine/backend.h"
#include "engine/dtype.h"

namespace engine::cpu {

// OK for kF32, kBF16 and kF16; otherwise "<op>: storage must be F32, BF16 or F16, got I32".
absl::Status check_storage(DType storage, const char* op);

// Which tensors of a params struct an op writes: the forward's outputs (y, out) or the
// backward's (dx, dqkv); the others are only read, and a tensor the op does not write is never
// stored back.
enum class Pass { kForward, kBackward };

// Runs `f32_kernel` on p: as is for F32 storage, else on widened copies (the Note above).
template <typename Params>
using F32Kernel = absl::FunctionRef<absl::Status(const Params&)>;
absl::Status on_f32_storage(const LayerNormParams& p, Pass pass, const char* op,
                            F32Kernel<LayerNormParams> f32_kernel);
absl::Status on_f32_storage(const GeluParams& p, Pass pass, const char* op,
                            F32Kernel<GeluParams> f32_kernel);
absl::Status on_f32_storage(const AlibiAttentionParams& p, Pass pass, const char* op,
                            F32Kernel<AlibiAttentionParams> f32_kernel);
// The classifier's one call is both passes: dhidden is its only storage-typed output.
absl::Status on_f32_storage(const ClassifierParams& p, const char* op,
                            F32Kernel<ClassifierParams> f32_kernel);

// How the CPU GEMM multiplies bf16 inputs (kernels/cpu/gemm.cpp).
enum class Bf16GemmPath {
  kWidenSgemm,  // widen the operands to fp32, then the fp32 sgemm (every CPU)
  kSbgemm,      // OpenBLAS cblas_sbgemm, bf16 x bf16 -> fp32 (AVX512_BF16 and a library with it)
};
std::string_view bf16_gemm_path_name(Bf16GemmPath path);
// Whether this process can take `path`: kSbgemm needs the CPU's AVX512_BF16 and an OpenBLAS
// that exports cblas_sbgemm (Debian's 0.3.21 declares it in cblas.h but is built without it).
bool bf16_gemm_path_supported(Bf16GemmPath path);
// The path bf16 GEMMs take: an override (tests), else kSbgemm where supported.
Bf16GemmPath active_bf16_gemm_path();
// Fails, changing nothing, when the path is not supported here. Tests only; call between ops.
absl::Status set_bf16_gemm_path(Bf16GemmPath path);
void clear_bf16_gemm_path_override();
// Row-major cblas_sbgemm (C = alpha op(A) op(B) + beta C, bf16 A and B, fp32 C). Only where
// bf16_gemm_path_supported(kSbgemm).
void sbgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
            const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float beta, float* c,
            int64_t ldc);

}  // namespace engine::cpu
