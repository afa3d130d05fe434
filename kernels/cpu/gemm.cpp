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
//
// 16-bit storage (GemmParams' input_type / output_type, Note [the CPU storage twin] in
// kernels/cpu/storage.h): the product is formed in an fp32 buffer exactly as above (the epilogue
// written first, the product accumulated on top), then rounded once into C. bf16 inputs go
// through OpenBLAS's cblas_sbgemm where the CPU has AVX512_BF16 and the library exports it
// (single-threaded: a reference path), otherwise they are widened to fp32 and take the sgemm
// above; docs/TOLERANCES.md bounds both the same way.
#include "kernels/cpu/ops.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/storage.h"

namespace engine::cpu {
namespace {

// Below this many multiply-adds (about 10 microseconds of one core) a GEMM runs on the calling
// thread: waking the OpenMP team costs microseconds, a scheduler slice on a busy machine.
constexpr double kParallelMinMacs = 1 << 20;
constexpr int64_t kSlabAlign = 16;

bool has_epilogue(const GemmParams& p) { return p.bias != nullptr || p.residual != nullptr; }

// C[r0:r1, c0:c1] = bias + residual (either may be null).
// All of p's pointers are fp32 here (f32_gemm).
void write_epilogue(const GemmParams& p, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  const float* bias = static_cast<const float*>(p.bias);
  for (int64_t r = r0; r < r1; ++r) {
    float* c = static_cast<float*>(p.c) + r * p.ldc;
    const float* res =
        p.residual != nullptr ? static_cast<const float*>(p.residual) + r * p.ldr : nullptr;
    if (bias != nullptr && res != nullptr) {
      for (int64_t j = c0; j < c1; ++j) c[j] = res[j] + bias[j];
    } else if (bias != nullptr) {
      std::copy(bias + c0, bias + c1, c + c0);
    } else if (res != c) {
      std::copy(res + c0, res + c1, c + c0);
    }
  }
}

// The (r1 - r0, c1 - c0) sub-block of C: rows of op(A) (A's rows, or its columns when
// transposed) and columns of op(B) (B's columns, or its rows when transposed).
void block(const GemmParams& p, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  const float* pa = static_cast<const float*>(p.a);
  const float* pb = static_cast<const float*>(p.b);
  const float* a = p.transpose_a ? pa + r0 : pa + r0 * p.lda;
  const float* b = p.transpose_b ? pb + c0 * p.ldb : pb + c0;
  float beta = p.beta;
  if (has_epilogue(p)) {
    write_epilogue(p, r0, r1, c0, c1);
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, p.transpose_a ? CblasTrans : CblasNoTrans,
              p.transpose_b ? CblasTrans : CblasNoTrans, static_cast<int>(r1 - r0),
              static_cast<int>(c1 - c0), static_cast<int>(p.k), p.alpha, a,
              static_cast<int>(p.lda), b, static_cast<int>(p.ldb), beta,
              static_cast<float*>(p.c) + r0 * p.ldc + c0, static_cast<int>(p.ldc));
}

void single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

// The fp32 GEMM (every type F32, arguments checked, m, n > 0).
absl::Status f32_gemm(const GemmParams& p) {
  single_threaded_blas();
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

// Elements spanned by a (rows, cols) matrix with leading dimension ld.
int64_t span(int64_t rows, int64_t cols, int64_t ld) {
  return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols;
}

std::vector<float> widened(DType type, const void* src, int64_t n) {
  std::vector<float> out(static_cast<size_t>(src != nullptr ? n : 0));
  if (!out.empty()) convert_to_f32(type, src, out.data(), out.size());
  return out;
}

// A GEMM with a 16-bit input or output type (arguments checked, m, n > 0).
absl::Status storage_gemm(const GemmParams& p) {
  // The fp32 result: C itself when it is fp32, else an (m, n) buffer (holding C when beta != 0).
  std::vector<float> c_buffer;
  float* c32 = static_cast<float*>(p.c);
  int64_t ldc32 = p.ldc;
  if (p.output_type != DType::kF32) {
    c_buffer.resize(static_cast<size_t>(p.m * p.n));
    c32 = c_buffer.data();
    ldc32 = p.n;
    if (p.beta != 0.0f) {
      for (int64_t r = 0; r < p.m; ++r) {
        convert_to_f32(p.output_type,
                       static_cast<const char*>(p.c) + r * p.ldc * dtype_size(p.output_type),
                       c32 + r * p.n, static_cast<size_t>(p.n));
      }
    }
  }
  const std::vector<float> bias = widened(p.input_type, p.bias, p.n);
  const std::vector<float> residual = widened(p.input_type, p.residual, span(p.m, p.n, p.ldr));
  if (p.input_type == DType::kBF16 && active_bf16_gemm_path() == Bf16GemmPath::kSbgemm) {
    float beta = p.beta;
    if (p.bias != nullptr || p.residual != nullptr) {
      GemmParams e = p;
      e.bias = p.bias != nullptr ? bias.data() : nullptr;
      e.residual = p.residual != nullptr ? residual.data() : nullptr;
      e.c = c32, e.ldc = ldc32;
      write_epilogue(e, 0, p.m, 0, p.n);
      beta = 1.0f;
    }
    single_threaded_blas();
    sbgemm(p.transpose_a, p.transpose_b, p.m, p.n, p.k, p.alpha,
           static_cast<const uint16_t*>(p.a), p.lda, static_cast<const uint16_t*>(p.b), p.ldb,
           beta, c32, ldc32);
  } else {
    const std::vector<float> a = widened(
        p.input_type, p.a, p.transpose_a ? span(p.k, p.m, p.lda) : span(p.m, p.k, p.lda));
    const std::vector<float> b = widened(
        p.input_type, p.b, p.transpose_b ? span(p.n, p.k, p.ldb) : span(p.k, p.n, p.ldb));
    GemmParams q = p;
    q.input_type = q.output_type = DType::kF32;
    q.a = a.data(), q.b = b.data();
    q.bias = p.bias != nullptr ? bias.data() : nullptr;
    q.residual = p.residual != nullptr ? residual.data() : nullptr;
    q.c = c32, q.ldc = ldc32;
    if (absl::Status s = f32_gemm(q); !s.ok()) return s;
  }
  if (p.output_type != DType::kF32) {
    for (int64_t r = 0; r < p.m; ++r) {
      convert_from_f32(p.output_type, c32 + r * p.n,
                       static_cast<char*>(p.c) + r * p.ldc * dtype_size(p.output_type),
                       static_cast<size_t>(p.n));
    }
  }
  return absl::OkStatus();
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
  if (absl::Status s = check_storage(p.input_type, "gemm input"); !s.ok()) return s;
  if (absl::Status s = check_storage(p.output_type, "gemm output"); !s.ok()) return s;
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  if (p.input_type == DType::kF32 && p.output_type == DType::kF32) return f32_gemm(p);
  return storage_gemm(p);
}

}  // namespace engine::cpu
