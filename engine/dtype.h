// Element types the engine stores and the conversions between them.
// Contract: every dtype has a fixed byte size and a canonical safetensors spelling; the
// half-precision conversions are exact for f16/bf16 -> f32 and round-to-nearest-even back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace engine {

enum class DType : uint8_t { kF32, kBF16, kF16, kI32, kU32, kI64, kU8 };

// Byte size of one element.
constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: case DType::kI32: case DType::kU32: return 4;
    case DType::kBF16: case DType::kF16: return 2;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
  }
  return 0;
}

// Spelling used in safetensors headers ("F32", "BF16", ...).
const char* dtype_name(DType t);
// Inverse of dtype_name; nullopt for strings the engine does not handle.
std::optional<DType> dtype_from_name(std::string_view name);
// The floating-point storage types as the CLI's --dtype and the API spell them: "f32", "bf16",
// "f16"; nullopt for anything else.
std::optional<DType> float_dtype_from_flag(std::string_view name);

inline float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // keep NaN a (quiet) NaN
  }
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float f);

// Converts n elements of `src` (dtype `from`) into f32 at `dst`. Supports f32, bf16, f16.
void convert_to_f32(DType from, const void* src, float* dst, size_t n);
// Converts n f32 elements into dtype `to` (f32, bf16, f16).
void convert_from_f32(DType to, const float* src, void* dst, size_t n);

}  // namespace engine
