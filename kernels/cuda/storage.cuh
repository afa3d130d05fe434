// Device-side conversions between the storage types of kernels/cuda (fp32, bf16, fp16) and the
// fp32 every kernel computes in. Conversions to 16 bits round to nearest even. with_storage()
// turns a call's storage type into the element type its kernels are instantiated for.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/dtype.h"

namespace engine::cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename Elem>
__device__ __forceinline__ Elem from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// The element type of one storage type, as a value a generic lambda can take.
template <typename T>
struct ElemTag {
  using type = T;
};

// Calls f(ElemTag<float>), f(ElemTag<__nv_bfloat16>) or f(ElemTag<__half>) for kF32, kBF16 or
// kF16; any other type is "<op>: storage must be F32, BF16 or F16, got I32".
template <typename F>
absl::Status with_storage(DType storage, const char* op, F&& f) {
  switch (storage) {
    case DType::kF32:
      return f(ElemTag<float>{});
    case DType::kBF16:
      return f(ElemTag<__nv_bfloat16>{});
    case DType::kF16:
      return f(ElemTag<__half>{});
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": storage must be F32, BF16 or F16, got ", dtype_name(storage)));
}

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kWarpSize = 32;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(kFullWarp, v, offset);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, offset));
  }
  return v;
}

}  // namespace engine::cuda
