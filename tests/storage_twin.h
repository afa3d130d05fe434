// Helpers of the storage-type tests (tests/storage_twin_test.cpp on the CPU,
// tests/cuda_storage_test.cpp on the CUDA backend): 16-bit tensors as uint16_t bit patterns,
// inputs that are exactly representable in the storage type, and the bounds of
// docs/TOLERANCES.md, "Storage types".
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/dtype.h"

namespace engine::test {

// Unit roundoff of bf16 (8 significand bits, round to nearest): 2^-8.
inline constexpr double kBf16UnitRoundoff = 0x1p-8;
// Unit roundoff of fp16 (11 significand bits): 2^-11; below 2^-14 fp16 is subnormal, where the
// rounding error is absolute, at most half the spacing 2^-24: 2^-25.
inline constexpr double kF16UnitRoundoff = 0x1p-11;
inline constexpr double kF16SubnormalHalfSpacing = 0x1p-25;

// The largest error of one rounding of x to t (nearest even); 0 for kF32.
inline double rounding_bound(DType t, double x) {
  if (t == DType::kBF16) return kBf16UnitRoundoff * std::fabs(x);
  if (t == DType::kF16) return kF16UnitRoundoff * std::fabs(x) + kF16SubnormalHalfSpacing;
  return 0.0;
}

// t is kBF16 or kF16.
inline std::vector<uint16_t> narrow(DType t, const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  convert_from_f32(t, v.data(), out.data(), v.size());
  return out;
}

inline std::vector<float> widen(DType t, const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  convert_to_f32(t, v.data(), out.data(), v.size());
  return out;
}

// n normal(mean, stddev) values rounded to the storage type: the 16-bit tensor and its exact
// fp32 widening, so the fp32 path and the twin see the same numbers. For kF32, bits is empty.
struct Rounded {
  std::vector<uint16_t> bits;
  std::vector<float> f32;
};
inline Rounded rounded_normal(DType t, size_t n, uint32_t seed, float stddev = 1.0f,
                              float mean = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  if (t == DType::kF32) return {{}, v};
  Rounded r{narrow(t, v), {}};
  r.f32 = widen(t, r.bits);
  return r;
}

// Two fp32 results within `fp32_bound` of each other, each rounded once to bf16 (a and b are the
// rounded values): |a - b| <= fp32_bound + u_bf16 (|a| + |b|) (1 + 2 u_bf16). Each rounding moves
// its value by at most u_bf16 times the unrounded magnitude, which is at most |rounded| (1 + 2u).
// This is the one-ulp flip two nearly equal fp32 values can take across a rounding boundary.
inline double bf16_pair_bound(double fp32_bound, double a, double b) {
  return fp32_bound +
         kBf16UnitRoundoff * (std::fabs(a) + std::fabs(b)) * (1.0 + 2.0 * kBf16UnitRoundoff);
}

inline double max_abs(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

}  // namespace engine::test
