// Rounding-error bounds for tests that compare float computations (docs/TOLERANCES.md, "Bounds
// from the computation"). A bound is derived from the operation, not measured on one CPU: any
// summation order (BLAS kernel family, vector width, chunking, thread count) stays inside it,
// while a dropped, duplicated or misplaced term moves the result by the size of a term, far more.
#pragma once

#include <cstdint>

namespace engine::test {

// Unit roundoff of float (round to nearest): 2^-24.
inline constexpr double kFloatUnitRoundoff = 0x1p-24;

// gamma_n = n u / (1 - n u): |fl(sum of n terms, any order) - exact sum| <= gamma_(n-1) sum|t_i|,
// and a length-n dot product in float, FMA or not, in any order: <= gamma_n sum |a_i b_i|
// (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1).
inline double float_gamma(int64_t n) {
  const double nu = static_cast<double>(n) * kFloatUnitRoundoff;
  return nu / (1.0 - nu);
}

// Relative error of exp_approx (kernels/cpu/vector_math.h) against exp, in units of u: measured
// 1.36 u at worst over [-87, 88]; the contract says "a few ulp".
inline constexpr double kExpApproxUlps = 2.0;

}  // namespace engine::test
