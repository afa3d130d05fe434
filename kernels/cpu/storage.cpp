// The CPU storage twin (kernels/cpu/storage.h, Note [the CPU storage twin]) and the choice of the
// bf16 GEMM path.
#include "kernels/cpu/storage.h"

#include <cblas.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace engine::cpu {
namespace {

// fp32 copies of one call's 16-bit tensors. Each buffer is a vector of its own, so a pointer
// handed out stays valid while later ones are added (moving a vector keeps its data).
class Widened {
 public:
  explicit Widened(DType storage) : storage_(storage) {}
  // The n elements at src widened; null stays null.
  const float* in(const void* src, int64_t n) {
    if (src == nullptr) return nullptr;
    float* dst = add(n);
    if (n > 0) convert_to_f32(storage_, src, dst, static_cast<size_t>(n));
    return dst;
  }
  // An fp32 buffer for an output the kernel overwrites; null stays null.
  float* out(const void* dst, int64_t n) { return dst == nullptr ? nullptr : add(n); }
  // An fp32 copy of a tensor the kernel reads and writes (accumulation).
  float* in_out(const void* src, int64_t n) { return const_cast<float*>(in(src, n)); }

 private:
  float* add(int64_t n) {
    buffers_.emplace_back(static_cast<size_t>(n > 0 ? n : 1));
    return buffers_.back().data();
  }
  DType storage_;
  std::vector<std::vector<float>> buffers_;
};

// Rounds n fp32 values into dst (storage type), once, to nearest even; null dst: nothing.
void store(DType storage, const float* src, void* dst, int64_t n) {
  if (dst != nullptr && n > 0) convert_from_f32(storage, src, dst, static_cast<size_t>(n));
}

constexpr int kNoOverride = -1;
std::atomic<int> gemm_path_override{kNoOverride};

// cblas_sbgemm's signature (cblas.h).
using SbgemmFn = void (*)(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, blasint m, blasint n,
                          blasint k, float alpha, const bfloat16* a, blasint lda, const bfloat16* b,
                          blasint ldb, float beta, float* c, blasint ldc);

}  // namespace

absl::Status check_storage(DType storage, const char* op) {
  if (storage == DType::kF32 || storage == DType::kBF16 || storage == DType::kF16) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": storage must be F32, BF16 or F16, got ", dtype_name(storage)));
}

absl::Status on_f32_storage(const LayerNormParams& p, Pass pass, const char* op,
                            F32Kernel<LayerNormParams> f32_kernel) {
  if (absl::Status s = check_storage(p.storage, op); !s.ok()) return s;
  if (p.storage == DType::kF32) return f32_kernel(p);
  if (p.rows < 0 || p.width <= 0) return f32_kernel(p);  // the kernel names the bad shape
  const int64_t size = p.rows * p.width;
  Widened w(p.storage);
  LayerNormParams q = p;
  q.storage = DType::kF32;
  q.x = w.in(p.x, size);
  q.weight = w.in(p.weight, p.width);
  q.bias = w.in(p.bias, p.width);
  if (pass == Pass::kForward) {
    q.y = w.out(p.y, size);
  } else {
    q.dy = w.in(p.dy, size);
    q.dx = p.accumulate_dx ? w.in_out(p.dx, size) : w.out(p.dx, size);
  }
  if (absl::Status s = f32_kernel(q); !s.ok()) return s;
  if (pass == Pass::kForward) {
    store(p.storage, static_cast<const float*>(q.y), p.y, size);
  } else {
    store(p.storage, static_cast<const float*>(q.dx), p.dx, size);
  }
  return absl::OkStatus();
}

absl::Status on_f32_storage(const GeluParams& p, Pass pass, const char* op,
                            F32Kernel<GeluParams> f32_kernel) {
  if (absl::Status s = check_storage(p.storage, op); !s.ok()) return s;
  if (p.storage == DType::kF32 || p.n < 0) return f32_kernel(p);  // the kernel names a bad n
  Widened w(p.storage);
  GeluParams q = p;
  q.storage = DType::kF32;
  q.x = w.in(p.x, p.n);
  if (pass == Pass::kForward) {
    q.y = w.out(p.y, p.n);
  } else {
    q.dy = w.in(p.dy, p.n);
    q.dx = w.out(p.dx, p.n);
  }
  if (absl::Status s = f32_kernel(q); !s.ok()) return s;
  if (pass == Pass::kForward) {
    store(p.storage, static_cast<const float*>(q.y), p.y, p.n);
  } else {
    store(p.storage, static_cast<const float*>(q.dx), p.dx, p.n);
  }
  return absl::OkStatus();
}

absl::Status on_f32_storage(const AlibiAttentionParams& p, Pass pass, const char* op,
                            F32Kernel<AlibiAttentionParams> f32_kernel) {
  if (absl::Status s = check_storage(p.storage, op); !s.ok()) return s;
  if (p.storage == DType::kF32) return f32_kernel(p);
  if (p.batch < 0 || p.seq < 0 || p.heads < 0 || p.head_dim < 0 || p.query_begin < 0 ||
      p.query_begin > p.seq) {
    return f32_kernel(p);  // the kernel's shape check names the bad field, reading nothing
  }
  const int64_t qkv_size = p.batch * p.seq * p.heads * 3 * p.head_dim;
  const int64_t out_size = p.batch * (p.seq - p.query_begin) * p.heads * p.head_dim;
  Widened w(p.storage);
  AlibiAttentionParams q = p;
  q.storage = DType::kF32;
  q.qkv = w.in(p.qkv, qkv_size);
  if (pass == Pass::kForward) {
    q.out = w.out(p.out, out_size);
  } else {
    q.out = const_cast<float*>(w.in(p.out, out_size));
    q.dout = w.in(p.dout, out_size);
    q.dqkv = w.out(p.dqkv, qkv_size);
  }
  if (absl::Status s = f32_kernel(q); !s.ok()) return s;
  if (pass == Pass::kForward) {
    store(p.storage, static_cast<const float*>(q.out), p.out, out_size);
  } else {
    store(p.storage, static_cast<const float*>(q.dqkv), p.dqkv, qkv_size);
  }
  return absl::OkStatus();
}

absl::Status on_f32_storage(const ClassifierParams& p, const char* op,
                            F32Kernel<ClassifierParams> f32_kernel) {
  if (absl::Status s = check_storage(p.storage, op); !s.ok()) return s;
  if (p.storage == DType::kF32) return f32_kernel(p);
  if (p.rows < 0 || p.width <= 0 || p.vocab <= 0) return f32_kernel(p);  // names the shape
  Widened w(p.storage);
  // The kernel widens the (V, W) table a vocabulary chunk at a time (kernels/cpu/classifier.cpp):
  // q keeps the storage type, which the kernel applies to the embedding alone, and carries the
  // widened activations.
  ClassifierParams q = p;
  q.hidden = w.in(p.hidden, p.rows * p.width);
  q.dhidden = w.out(p.dhidden, p.rows * p.width);
  if (absl::Status s = f32_kernel(q); !s.ok()) return s;
  store(p.storage, static_cast<const float*>(q.dhidden), p.dhidden, p.rows * p.width);
  return absl::OkStatus();
}

std::string_view bf16_gemm_path_name(Bf16GemmPath path) {
  switch (path) {
    case Bf16GemmPath::kWidenSgemm:
      return "widen+sgemm";
    case Bf16GemmPath::kSbgemm:
      return "sbgemm";
  }
  return "unknown";
}

// The library's cblas_sbgemm, or null where it exports none (looked up at run time: cblas.h
// declares it whether or not the library was built with bfloat16 support).
SbgemmFn sbgemm_function() {
  static const SbgemmFn fn = reinterpret_cast<SbgemmFn>(dlsym(RTLD_DEFAULT, "cblas_sbgemm"));
  return fn;
}

bool bf16_gemm_path_supported(Bf16GemmPath path) {
  if (path == Bf16GemmPath::kWidenSgemm) return true;
  __builtin_cpu_init();
  static const bool sbgemm = __builtin_cpu_supports("avx512bf16") && sbgemm_function() != nullptr;
  return sbgemm;
}

Bf16GemmPath active_bf16_gemm_path() {
  const int forced = gemm_path_override.load(std::memory_order_relaxed);
  if (forced != kNoOverride) return static_cast<Bf16GemmPath>(forced);
  return bf16_gemm_path_supported(Bf16GemmPath::kSbgemm) ? Bf16GemmPath::kSbgemm
                                                         : Bf16GemmPath::kWidenSgemm;
}

absl::Status set_bf16_gemm_path(Bf16GemmPath path) {
  if (!bf16_gemm_path_supported(path)) {
    return absl::FailedPreconditionError(
        absl::StrCat("set_bf16_gemm_path(", std::string(bf16_gemm_path_name(path)),
                     "): this CPU or OpenBLAS build does not support it"));
  }
  gemm_path_override.store(static_cast<int>(path), std::memory_order_relaxed);
  return absl::OkStatus();
}

void clear_bf16_gemm_path_override() {
  gemm_path_override.store(kNoOverride, std::memory_order_relaxed);
}

void sbgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
            const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float beta, float* c,
            int64_t ldc) {
  sbgemm_function()(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans,
                    transpose_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
                    static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
                    static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
                    static_cast<blasint>(ldc));
}

}  // namespace engine::cpu
