// CPU GEMM through CBLAS (OpenBLAS): row-major sgemm with optional transposes.
#include "kernels/cpu/ops.h"

#include <cblas.h>

#include "absl/strings/str_cat.h"

namespace engine::cpu {

absl::Status gemm(const GemmParams& p) {
  if (p.m < 0 || p.n < 0 || p.k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("gemm: negative size m=", p.m, " n=", p.n,
                                                   " k=", p.k));
  }
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  cblas_sgemm(CblasRowMajor, p.transpose_a ? CblasTrans : CblasNoTrans,
              p.transpose_b ? CblasTrans : CblasNoTrans, static_cast<int>(p.m),
              static_cast<int>(p.n), static_cast<int>(p.k), p.alpha, p.a, static_cast<int>(p.lda),
              p.b, static_cast<int>(p.ldb), p.beta, p.c, static_cast<int>(p.ldc));
  return absl::OkStatus();
}

}  // namespace engine::cpu
