// CPU GEMM: row-major sgemm through CBLAS (OpenBLAS), threaded by the engine's own OpenMP pool.
//
// OpenBLAS (Debian's pthread build) keeps a second pool of worker threads that spin and yield
// while waiting for work. On a machine with as many cores as threads, those workers and the
// OpenMP workers of the kernels between two GEMMs take turns descheduling each other (the
// profile of a bloom-560m forward showed about a tenth of all CPU time in the scheduler, in
// sched_yield and in libgomp's spin loop). So OpenBLAS is set to one thread once, and a large
// GEMM is cut here into one slab of C per OpenMP thread, each a single-threaded sgemm: one pool
// for the whole process. The slabs split the larger of C's two dimensions in multiples of 16,
// so every thread's sgemm still has full-width register tiles, and each slab is a plain
// sub-matrix (pointer plus the full leading dimension), so no data moves. A linear layer's
// bias and residual (the epilogue of GemmParams) are written into each thread's own slab of C
// before its product is accumulated on top (beta = 1): the write is parallel and touches C
// while the slab is about to be used.
#include "kernels/cpu/ops.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace engine::cpu {
namespace {

// Below this many multiply-adds (about 10 microseconds of one core) a GEMM runs on the calling
// thread: waking the OpenMP team costs microseconds, a scheduler slice on a busy machine.
constexpr double kParallelMinMacs = 1 << 20;
constexpr int64_t kSlabAlign = 16;

bool has_epilogue(const GemmParams& p) { return p.bias != nullptr || p.residual != nullptr; }

// C[r0:r1, c0:c1] = bias + residual (either may be null).
void write_epilogue(const GemmParams& p, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t r = r0; r < r1; ++r) {
    float* c = p.c + r * p.ldc;
    const float* res = p.residual != nullptr ? p.residual + r * p.ldr : nullptr;
    if (p.bias != nullptr && res != nullptr) {
      for (int64_t j = c0; j < c1; ++j) c[j] = res[j] + p.bias[j];
    } else if (p.bias != nullptr) {
      std::copy(p.bias + c0, p.bias + c1, c + c0);
    } else if (res != c) {
      std::copy(res + c0, res + c1, c + c0);
    }
  }
}

// The (r1 - r0, c1 - c0) sub-block of C: rows of op(A) (A's rows, or its columns when
// transposed) and columns of op(B) (B's columns, or its rows when transposed).
void block(const GemmParams& p, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  const float* a = p.transpose_a ? p.a + r0 : p.a + r0 * p.lda;
  const float* b = p.transpose_b ? p.b + c0 * p.ldb : p.b + c0;
  float beta = p.beta;
  if (has_epilogue(p)) {
    write_epilogue(p, r0, r1, c0, c1);
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, p.transpose_a ? CblasTrans : CblasNoTrans,
              p.transpose_b ? CblasTrans : CblasNoTrans, static_cast<int>(r1 - r0),
              static_cast<int>(c1 - c0), static_cast<int>(p.k), p.alpha, a,
              static_cast<int>(p.lda), b, static_cast<int>(p.ldb), beta, p.c + r0 * p.ldc + c0,
              static_cast<int>(p.ldc));
}

}  // namespace

absl::Status gemm(const GemmParams& p) {
  if (p.m < 0 || p.n < 0 || p.k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("gemm: negative size m=", p.m, " n=", p.n,
                                                   " k=", p.k));
  }
  if (has_epilogue(p) && p.beta != 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("gemm: a bias or residual needs beta = 0, got beta=", p.beta));
  }
  if (p.residual != nullptr && p.ldr < p.n) {
    return absl::InvalidArgumentError(
        absl::StrCat("gemm: residual leading dimension ", p.ldr, " is below n=", p.n));
  }
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  static std::once_flag single_threaded_blas;
  std::call_once(single_threaded_blas, [] { openblas_set_num_threads(1); });

  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const double macs = static_cast<double>(p.m) * static_cast<double>(p.n) * static_cast<double>(p.k);
  const bool split_rows = p.m >= p.n;
  const int64_t extent = split_rows ? p.m : p.n;
  if (threads <= 1 || macs < kParallelMinMacs || extent < 2 * kSlabAlign) {
    block(p, 0, p.m, 0, p.n);
    return absl::OkStatus();
  }
  const int slabs = static_cast<int>(std::min<int64_t>(threads, extent / kSlabAlign));
  const int64_t aligned_units = (extent + kSlabAlign - 1) / kSlabAlign;
  const int64_t per = (aligned_units + slabs - 1) / slabs * kSlabAlign;
#pragma omp parallel for num_threads(slabs) schedule(static, 1)
  for (int s = 0; s < slabs; ++s) {
    const int64_t begin = std::min<int64_t>(extent, s * per);
    const int64_t end = std::min<int64_t>(extent, begin + per);
    if (begin >= end) continue;
    if (split_rows) {
      block(p, begin, end, 0, p.n);
    } else {
      block(p, 0, p.m, begin, end);
    }
  }
  return absl::OkStatus();
}

}  // namespace engine::cpu
