// The erf form of GELU that Falcon and MPT use (torch's nn.GELU(approximate="none")):
//   gelu(x) = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2,   gelu'(x) = Phi(x) + x phi(x),
// phi(x) = exp(-x^2 / 2) / sqrt(2 pi). fp32 storage only (the storage twin widens around it).
// Contract: as gelu.cpp's; x and y, or x and dx, may alias.
// Phi is formed as erfc(-x / sqrt 2) / 2, which keeps its relative accuracy in the left tail
// (1 + erf(x / sqrt 2) cancels there); std::erfc is within a few ulp in float.
#include <cmath>

#include "kernels/cpu/gelu_check.h"
#include "kernels/cpu/ops.h"

namespace engine::cpu {
namespace {

constexpr float kInvSqrt2 = 0.70710678f;
constexpr float kInvSqrt2Pi = 0.39894228f;

}  // namespace

absl::Status gelu_erf_forward(const GeluParams& p) {
  if (absl::Status s = check_gelu_params(p, "gelu_forward", false); !s.ok()) return s;
  const float* xs = static_cast<const float*>(p.x);
  float* ys = static_cast<float*>(p.y);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n; ++i) {
    const float x = xs[i];
    ys[i] = x * (0.5f * std::erfc(-x * kInvSqrt2));
  }
  return absl::OkStatus();
}

absl::Status gelu_erf_backward(const GeluParams& p) {
  if (absl::Status s = check_gelu_params(p, "gelu_backward", true); !s.ok()) return s;
  const float* xs = static_cast<const float*>(p.x);
  const float* dys = static_cast<const float*>(p.dy);
  float* dxs = static_cast<float*>(p.dx);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n; ++i) {
    const float x = xs[i];
    const float cdf = 0.5f * std::erfc(-x * kInvSqrt2);
    const float pdf = kInvSqrt2Pi * std::exp(-0.5f * x * x);
    dxs[i] = (cdf + x * pdf) * dys[i];
  }
  return absl::OkStatus();
}

}  // namespace engine::cpu
