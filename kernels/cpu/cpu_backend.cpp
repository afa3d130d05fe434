// CpuBackend: the reference backend, forwarding to kernels/cpu/<op>.cpp.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/large_pages.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/storage.h"

namespace engine {
namespace {

class CpuBackend final : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::kCpu; }
  std::string_view name() const override { return "cpu"; }

  // "Device" memory is host memory: large buffers on huge pages, as the activations always were.
  absl::StatusOr<void*> allocate(size_t bytes) override {
    void* p = allocate_large(bytes > 0 ? bytes : 1, 256);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cpu: out of memory allocating ", bytes, " bytes"));
    }
    std::memset(p, 0, bytes);
    return p;
  }
  Deallocator deallocator() const override { return &std::free; }
  absl::Status copy_to_device(void* device, const void* host, size_t bytes) override {
    if (bytes > 0) std::memcpy(device, host, bytes);
    return absl::OkStatus();
  }
  absl::Status copy_to_host(void* host, const void* device, size_t bytes) override {
    if (bytes > 0) std::memcpy(host, device, bytes);
    return absl::OkStatus();
  }
  absl::Status copy_on_device(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memmove(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status fill_zero(void* device, size_t bytes) override {
    if (bytes > 0) std::memset(device, 0, bytes);
    return absl::OkStatus();
  }
  absl::Status gemm(const GemmParams& p) override { return cpu::gemm(p); }
  absl::Status layernorm_forward(const LayerNormParams& p) override {
    return cpu::layernorm_forward(p);
  }
  absl::Status layernorm_backward(const LayerNormParams& p) override {
    return cpu::layernorm_backward(p);
  }
  absl::Status gelu_forward(const GeluParams& p) override {
    return cpu::gelu_forward(p);
  }
  absl::Status gelu_backward(const GeluParams& p) override {
    return cpu::gelu_backward(p);
  }
  absl::Status embedding_forward(const EmbeddingParams& p) override {
    return cpu::embedding_forward(p);
  }
  absl::Status embedding_backward(const EmbeddingParams& p) override {
    return cpu::embedding_backward(p);
  }
  absl::Status alibi_attention_forward(const AlibiAttentionParams& p) override {
    return cpu::alibi_attention_forward(p);
  }
  absl::Status alibi_attention_backward(const AlibiAttentionParams& p) override {
    return cpu::alibi_attention_backward(p);
  }
  absl::StatusOr<std::vector<double>> attention_sink_sums(const AttentionSinkParams& p) override {
    return cpu::attention_sink_sums(p);
  }
  absl::Status classifier_cross_entropy(const ClassifierParams& p) override {
    return cpu::classifier_cross_entropy(p);
  }
  absl::Status masked_adamw(const MaskedAdamWParams& p) override { return cpu::masked_adamw(p); }
  absl::Status masked_sgd(const MaskedAdamWParams& p) override { return cpu::masked_sgd(p); }
  absl::StatusOr<double> gradient_norm(const float* grad, int64_t n) override {
    if (n < 0) return absl::InvalidArgumentError(absl::StrCat("gradient_norm: n = ", n));
    if (n > 0 && grad == nullptr) return absl::InvalidArgumentError("gradient_norm: null grad");
    return cpu::global_grad_norm(grad, n);
  }
  // The tape's loops as they ran on the host before they were backend ops (same order, so the
  // same bits).
  absl::Status add(float* y, const float* x, int64_t n) override {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
    return absl::OkStatus();
  }
  absl::Status column_sums(const float* x, int64_t rows, int64_t cols, int64_t ld,
                           float* out) override {
    std::vector<double> sum(static_cast<size_t>(cols), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x + r * ld;
      for (int64_t c = 0; c < cols; ++c) sum[c] += row[c];
    }
    for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<float>(sum[c]);
    return absl::OkStatus();
  }
  // The 16-bit forms: widen exactly, the fp32 loop's arithmetic, one rounding per stored element.
  absl::Status add_stored(DType storage, void* y, const void* x, int64_t n) override {
    if (storage == DType::kF32) return add(static_cast<float*>(y), static_cast<const float*>(x), n);
    if (absl::Status s = cpu::check_storage(storage, "add"); !s.ok()) return s;
    auto* yy = static_cast<uint16_t*>(y);
    const auto* xx = static_cast<const uint16_t*>(x);
    const bool bf16 = storage == DType::kBF16;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float sum = bf16 ? bf16_to_f32(yy[i]) + bf16_to_f32(xx[i])
                             : f16_to_f32(yy[i]) + f16_to_f32(xx[i]);
      yy[i] = bf16 ? f32_to_bf16(sum) : f32_to_f16(sum);
    }
    return absl::OkStatus();
  }
  absl::Status column_sums_stored(DType storage, const void* x, int64_t rows, int64_t cols,
                                  int64_t ld, float* out) override {
    if (storage == DType::kF32) {
      return column_sums(static_cast<const float*>(x), rows, cols, ld, out);
    }
    if (absl::Status s = cpu::check_storage(storage, "column_sums"); !s.ok()) return s;
    const auto* xx = static_cast<const uint16_t*>(x);
    const bool bf16 = storage == DType::kBF16;
    std::vector<double> sum(static_cast<size_t>(cols), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const uint16_t* row = xx + r * ld;
      for (int64_t c = 0; c < cols; ++c) sum[c] += bf16 ? bf16_to_f32(row[c]) : f16_to_f32(row[c]);
    }
    for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<float>(sum[c]);
    return absl::OkStatus();
  }
  absl::Status compact_scatter_add(const CompactScatterParams& p) override {
    // Segments write disjoint compact ranges: parallel without changing any sum.
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < p.segments; ++s) {
      const int64_t* seg = p.segment + 4 * s;
      const float* g = p.g + seg[0] * p.ld + seg[1];
      float* dst = p.compact + seg[2];
      for (int64_t i = 0; i < seg[3]; ++i) dst[i] += g[i];
    }
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace engine
