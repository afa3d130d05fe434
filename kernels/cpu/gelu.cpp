// tanh-form GELU as BLOOM defines it: y = 0.5 x (1 + tanh(c x (1 + a x^2))), c = 0.79788456
// (sqrt(2/pi) rounded as in the released model code), a = 0.044715.
// Contract: forward y = gelu(x); backward dx = gelu'(x) * dy (the exact derivative of the same
// formula); x and y, or x and dx, may alias.
//
// Note [GELU in sigmoid form]: with u = c x (1 + a x^2) and s = (1 + tanh u) / 2 = sigmoid(2u),
//   gelu(x) = x s,  gelu'(x) = s + x * 2 s (1 - s) * du/dx,  as (1 - tanh^2 u) / 2 = 2 s (1 - s).
// s and 1 - s are computed from e = exp(-2|u|) in (0, 1]: 1 / (1 + e) and e / (1 + e), assigned by
// the sign of u. No step subtracts nearly equal numbers, so both keep their relative accuracy in
// the tails; 1 + tanh u from a rounded tanh u does not (for x = -4.7 it is 20% off, and gelu'
// with it). kernels/cuda/ops.cu computes the same way.
#include <cmath>

#include "kernels/cpu/gelu_check.h"
#include "kernels/cpu/isa_kernels.h"
#include "kernels/cpu/isa_region.h"
#include "kernels/cpu/vector_math.h"

ENGINE_CPU_KERNELS_BEGIN
namespace {

constexpr float kGeluC = 0.79788456f;
constexpr float kGeluA = 0.044715f;

}  // namespace

absl::Status gelu_forward(const GeluParams& p) {
  if (absl::Status s = check_gelu_params(p, "gelu_forward", false); !s.ok()) return s;
  const float* xs = static_cast<const float*>(p.x);
  float* ys = static_cast<float*>(p.y);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < p.n; ++i) {
    const float x = xs[i];
    const float u = kGeluC * x * (1.0f + kGeluA * x * x);
    const float e = exp_approx(-2.0f * std::fabs(u));
    const float inv = 1.0f / (1.0f + e);
    const float s = u >= 0.0f ? inv : e * inv;
    ys[i] = x * s;
  }
  return absl::OkStatus();
}

absl::Status gelu_backward(const GeluParams& p) {
  if (absl::Status s = check_gelu_params(p, "gelu_backward", true); !s.ok()) return s;
  constexpr float kThreeA = 3.0f * kGeluA;
  const float* xs = static_cast<const float*>(p.x);
  const float* dys = static_cast<const float*>(p.dy);
  float* dxs = static_cast<float*>(p.dx);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < p.n; ++i) {
    const float x = xs[i];
    const float u = kGeluC * x * (1.0f + kGeluA * x * x);
    const float e = exp_approx(-2.0f * std::fabs(u));
    const float inv = 1.0f / (1.0f + e);
    const float s = u >= 0.0f ? inv : e * inv;       // sigmoid(2u)
    const float s_rest = u >= 0.0f ? e * inv : inv;  // 1 - sigmoid(2u)
    const float du = kGeluC * (1.0f + kThreeA * x * x);
    const float grad = s + 2.0f * x * s * s_rest * du;
    dxs[i] = grad * dys[i];
  }
  return absl::OkStatus();
}

ENGINE_CPU_KERNELS_END
