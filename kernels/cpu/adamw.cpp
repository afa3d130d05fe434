// Masked AdamW and SGD (contracts in adamw.h), built once per instruction set (isa_region.h).
// The arena's storage type (MaskedAdamWParams::storage, checked by the entry points in isa.cpp):
// F32 arenas may do without masters; a 16-bit arena requires them and receives each updated
// master rounded to nearest even (engine/dtype.h), the one store of the element.
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "engine/dtype.h"
#include "kernels/cpu/isa_kernels.h"
#include "kernels/cpu/isa_region.h"

ENGINE_CPU_KERNELS_BEGIN

namespace {
absl::Status check(const MaskedAdamWParams& p, bool needs_state) {
  if (p.n < 0) return absl::InvalidArgumentError(absl::StrCat("masked optimizer: n = ", p.n));
  if (p.n > 0 && (p.index == nullptr || p.params == nullptr || p.grad == nullptr)) {
    return absl::InvalidArgumentError("masked optimizer: null index, params or grad");
  }
  if (needs_state && p.n > 0 && (p.m == nullptr || p.v == nullptr)) {
    return absl::InvalidArgumentError("masked AdamW: null moment buffers");
  }
  if (p.storage != DType::kF32 && p.n > 0 && p.master == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("masked optimizer: a ", dtype_name(p.storage),
                                                   " arena needs fp32 master copies"));
  }
  if (needs_state && p.step < 1) {
    return absl::InvalidArgumentError(absl::StrCat("masked AdamW: step ", p.step, " (1-based)"));
  }
  return absl::OkStatus();
}

// Arena element i of a 16-bit arena (bit patterns as uint16_t) or an fp32 one.
inline void store_element(float* arena, int64_t i, float w) { arena[i] = w; }
inline void store_element(uint16_t* arena, int64_t i, float w, DType storage) {
  arena[i] = storage == DType::kBF16 ? f32_to_bf16(w) : f32_to_f16(w);
}

}  // namespace

absl::Status masked_adamw(const MaskedAdamWParams& p) {
  if (auto s = check(p, true); !s.ok()) return s;
  // Bias corrections in double: 1 - beta^t loses precision in float for small t and beta near 1.
  const double correction1 = 1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step));
  const double correction2 = 1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step));
  const float step_size = static_cast<float>(p.lr / correction1);
  const float inv_sqrt_correction2 = static_cast<float>(1.0 / std::sqrt(correction2));
  const float decay = 1.0f - p.lr * p.weight_decay;
  float* arena = static_cast<float*>(p.params);
  uint16_t* arena16 = static_cast<uint16_t*>(p.params);
  const bool f32 = p.storage == DType::kF32;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n; ++i) {
    float w = p.master != nullptr ? p.master[i] : arena[p.index[i]];
    const float g = p.grad[i] * p.grad_scale;
    const float m = p.beta1 * p.m[i] + (1.0f - p.beta1) * g;
    const float v = p.beta2 * p.v[i] + (1.0f - p.beta2) * g * g;
    p.m[i] = m;
    p.v[i] = v;
    w *= decay;
    w -= step_size * m / (std::sqrt(v) * inv_sqrt_correction2 + p.eps);
    if (p.master != nullptr) p.master[i] = w;
    if (f32) {
      store_element(arena, p.index[i], w);
    } else {
      store_element(arena16, p.index[i], w, p.storage);
    }
  }
  return absl::OkStatus();
}

absl::Status masked_sgd(const MaskedAdamWParams& p) {
  if (auto s = check(p, false); !s.ok()) return s;
  const float scale = p.lr * p.grad_scale;
  float* arena = static_cast<float*>(p.params);
  uint16_t* arena16 = static_cast<uint16_t*>(p.params);
  const bool f32 = p.storage == DType::kF32;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n; ++i) {
    float w = p.master != nullptr ? p.master[i] : arena[p.index[i]];
    w -= scale * p.grad[i];
    if (p.master != nullptr) p.master[i] = w;
    if (f32) {
      store_element(arena, p.index[i], w);
    } else {
      store_element(arena16, p.index[i], w, p.storage);
    }
  }
  return absl::OkStatus();
}

ENGINE_CPU_KERNELS_END
