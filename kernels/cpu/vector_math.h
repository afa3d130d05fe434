// Elementwise float math written so that GCC/Clang vectorise the loops that call it.
// Contract: exp_approx(x) equals expf(x) to within a few ulp for x in [kExpMinArg, kExpMaxArg]
// and is clamped outside that range (so it never returns inf or a denormal); callers that need an
// exact zero for masked entries select it themselves.
// exp_approx also takes a FloatVec (one vector register of kVecLanes floats, same arithmetic per
// lane) for code that writes its vector loops explicitly. The library is built with
// -fno-trapping-math, without which GCC does not if-convert the clamps below and the scalar form
// never vectorises.
// Built once per instruction set (kernels/cpu/isa_region.h): FloatVec is 8 lanes in the AVX2
// build and 16 in the AVX-512 build; the arithmetic of each lane, and so every exp_approx
// result, is the same in both.
//
// Why not std::exp: without -ffast-math the libm call cannot be vectorised, and in the attention
// inner loop one exp per score costs more than the head_dim-long dot product that made the score.
#pragma once

#include <cstdint>

#include "kernels/cpu/isa_region.h"

ENGINE_CPU_KERNELS_BEGIN

// exp underflows to a denormal below about -87.34 and overflows above about 88.72; clamping
// keeps the exponent-bit construction below inside the normal range.
inline constexpr float kExpMinArg = -87.0f;
inline constexpr float kExpMaxArg = 88.0f;

// kVecLanes floats / int32 in one vector register, 256-bit (AVX2) or 512-bit (AVX-512), as a
// GCC/Clang vector extension. Arithmetic, comparisons (lane masks), `mask ? a : b` and
// __builtin_bit_cast work lane by lane, so code written on them vectorises by construction
// instead of relying on the auto-vectoriser.
using FloatVec = float __attribute__((vector_size(ENGINE_CPU_VECTOR_BYTES)));
using IntVec = int32_t __attribute__((vector_size(ENGINE_CPU_VECTOR_BYTES)));
inline constexpr int64_t kVecLanes = ENGINE_CPU_VECTOR_BYTES / sizeof(float);

// The body of exp_approx for F = float (I = int32_t) and for F = FloatVec (I = IntVec).
template <typename F, typename I>
inline F exp_approx_lanes(F x) {
  constexpr float kLog2e = 1.44269504088896341f;
  // ln 2 split into a part exact in float and a remainder (Cody-Waite range reduction).
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  // Adding 1.5 * 2^23 rounds to the nearest integer and leaves that integer in the low mantissa
  // bits, which gives both n (as float) and its int32 form without a conversion instruction.
  constexpr float kRoundMagic = 12582912.0f;
  // Minimax coefficients of (exp(r) - 1 - r) / r^2 on |r| <= ln2 / 2 (Cephes expf).
  constexpr float kC0 = 5.0000001201e-1f, kC1 = 1.6666665459e-1f, kC2 = 4.1665795894e-2f,
                  kC3 = 8.3334519073e-3f, kC4 = 1.3981999507e-3f, kC5 = 1.9875691500e-4f;
  constexpr int32_t kExponentBias = 127;
  constexpr int kMantissaBits = 23;

  x = x < kExpMinArg ? F{} + kExpMinArg : x;
  x = x > kExpMaxArg ? F{} + kExpMaxArg : x;
  const F t = x * kLog2e + kRoundMagic;
  const F n = t - kRoundMagic;
  const F r = (x - n * kLn2Hi) - n * kLn2Lo;
  F p = F{} + kC5;
  p = p * r + kC4;
  p = p * r + kC3;
  p = p * r + kC2;
  p = p * r + kC1;
  p = p * r + kC0;
  const F er = p * (r * r) + r + 1.0f;
  // __builtin_bit_cast rather than std::bit_cast: a std:: template is compiled for the baseline
  // target even when called from the AVX-512 build, and one taking or returning a 512-bit vector
  // would have a different calling convention from its caller if it were ever not inlined.
  const I ni = __builtin_bit_cast(I, t) - __builtin_bit_cast(int32_t, kRoundMagic);
  const F scale = __builtin_bit_cast(F, (ni + kExponentBias) << kMantissaBits);
  return er * scale;
}

inline float exp_approx(float x) { return exp_approx_lanes<float, int32_t>(x); }
inline FloatVec exp_approx(FloatVec x) { return exp_approx_lanes<FloatVec, IntVec>(x); }

ENGINE_CPU_KERNELS_END
