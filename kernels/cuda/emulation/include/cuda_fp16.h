// Emulation build only: the IEEE binary16 type and the conversions the kernels use, bit-exact with
// the CUDA toolkit's cuda_fp16.h: float -> half rounds to nearest even (overflow to infinity,
// subnormal halves produced exactly), every NaN becomes 0x7fff; half -> float is exact.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"

struct alignas(2) __half {
  unsigned short __x;
};
typedef __half half;

inline __half __float2half_rn(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t mag = u & 0x7fffffffu;
  __half r;
  if (mag > 0x7f800000u) {  // NaN
    r.__x = 0x7fff;
    return r;
  }
  if (mag == 0x7f800000u) {  // infinity
    r.__x = static_cast<unsigned short>(sign | 0x7c00u);
    return r;
  }
  const int exponent = static_cast<int>(mag >> 23) - 127;  // unbiased, float
  uint32_t kept = 0, dropped = 0, half_ulp = 0;
  if (exponent >= -14) {
    // Normal half (or overflow): keep 10 mantissa bits, the half exponent is exponent + 15.
    const uint32_t rebased = mag - ((127u - 15u) << 23);
    kept = rebased >> 13;
    dropped = rebased & 0x1fffu;
    half_ulp = 0x1000u;
  } else if (exponent >= -25) {
    // Subnormal half: value = m * 2^-24 with m = significand >> shift.
    const uint32_t significand = (mag & 0x7fffffu) | 0x800000u;
    const int shift = -exponent - 1;  // 14..24
    kept = significand >> shift;
    dropped = significand & ((1u << shift) - 1u);
    half_ulp = 1u << (shift - 1);
  } else {
    // Below half the smallest subnormal: rounds to zero.
    r.__x = static_cast<unsigned short>(sign);
    return r;
  }
  const bool up = dropped > half_ulp || (dropped == half_ulp && (kept & 1u) != 0);
  kept += up ? 1u : 0u;
  if (kept >= 0x7c00u) kept = 0x7c00u;  // overflow rounds to infinity
  r.__x = static_cast<unsigned short>(sign | kept);
  return r;
}
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.__x & 0x8000u) << 16;
  const uint32_t exponent = (h.__x >> 10) & 0x1fu;
  uint32_t mantissa = h.__x & 0x3ffu;
  uint32_t u = 0;
  if (exponent == 0x1fu) {
    u = sign | 0x7f800000u | (mantissa << 13);  // infinity, or NaN with its payload
  } else if (exponent != 0) {
    u = sign | ((exponent + 127u - 15u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    u = sign;
  } else {  // subnormal half: normalise
    int e = -14;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    u = sign | (static_cast<uint32_t>(e + 127) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short bits) {
  __half r;
  r.__x = bits;
  return r;
}
