// Emulation build only: the subset of the CUDA runtime and of the device-side language that the
// engine's kernels/cuda sources use, implemented on the host (kernels/cuda/emulation/*.cpp). Names,
// types and semantics follow the CUDA Runtime API; device memory is host memory and every stream
// is synchronous (a call returns when its work is done). What is and is not modelled:
// docs/CUDA.md, "The emulator".
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/emulation/emulator.h"

// ---- qualifiers: host code in this build --------------------------------------------------------
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Static shared memory: one instance per OS thread, and a block's fibers all run on one OS thread
// and one block at a time, so this is per-block storage as CUDA defines it.
#define __shared__ static thread_local

// ---- vector types
// ---------------------------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
// CUDA's vector types carry their natural alignment: a misaligned vector load is an error there,
// and here too (the emulated kernels are built with -fsanitize=alignment).
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

// ---- built-in variables -------------------------------------------------------------------------
#define threadIdx (::engine::cuda::emulation::thread_index())
#define blockIdx (::engine::cuda::emulation::block_index())
#define blockDim (::engine::cuda::emulation::block_dim())
#define gridDim (::engine::cuda::emulation::grid_dim())
constexpr int warpSize = 32;

// ---- errors, memory, streams, events ------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int major;
  int minor;
  int multiProcessorCount;
};

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);

cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream);
// The runtime's typed conveniences (cuda_runtime.h has the same templates).
template <typename T>
cudaError_t cudaMalloc(T** ptr, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(ptr), bytes);
}
template <typename T>
cudaError_t cudaMallocAsync(T** ptr, size_t bytes, cudaStream_t stream) {
  return cudaMallocAsync(reinterpret_cast<void**>(ptr), bytes, stream);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

cudaError_t cudaFuncSetAttribute(const void* function, cudaFuncAttribute attribute, int value);
template <typename T>
cudaError_t cudaFuncSetAttribute(T* function, cudaFuncAttribute attribute, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(function), attribute, value);
}

// ---- device functions ---------------------------------------------------------------------------
inline void __syncthreads() { ::engine::cuda::emulation::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::engine::cuda::emulation::warp_collective(::engine::cuda::emulation::Collective::kSyncWarp, mask,
                                             0, 0, 32);
}

namespace engine::cuda::emulation {
template <typename T>
T shuffle(Collective kind, unsigned mask, T var, int arg, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t),
                "warp shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = warp_collective(kind, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
}  // namespace engine::cuda::emulation

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return ::engine::cuda::emulation::shuffle(::engine::cuda::emulation::Collective::kShuffleIndex,
                                            mask, var, src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::engine::cuda::emulation::shuffle(::engine::cuda::emulation::Collective::kShuffleUp, mask,
                                            var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::engine::cuda::emulation::shuffle(::engine::cuda::emulation::Collective::kShuffleDown,
                                            mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return ::engine::cuda::emulation::shuffle(::engine::cuda::emulation::Collective::kShuffleXor,
                                            mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(::engine::cuda::emulation::warp_collective(
      ::engine::cuda::emulation::Collective::kBallot, mask, predicate != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int predicate) {
  return static_cast<int>(::engine::cuda::emulation::warp_collective(
      ::engine::cuda::emulation::Collective::kAny, mask, predicate != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int predicate) {
  return static_cast<int>(::engine::cuda::emulation::warp_collective(
      ::engine::cuda::emulation::Collective::kAll, mask, predicate != 0, 0, 32));
}

// Atomics: blocks run on several OS threads at once, so these are real atomic operations.
template <typename T>
T emulated_atomic_update(T* address, T value, T (*op)(T, T)) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(address, &old, op(old, value), false, __ATOMIC_SEQ_CST,
                                      __ATOMIC_RELAXED)) {
  }
  return old;
}
inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  return emulated_atomic_update<unsigned long long>(
      address, value, [](unsigned long long a, unsigned long long b) { return b < a ? b : a; });
}
inline int atomicMin(int* address, int value) {
  return emulated_atomic_update<int>(address, value, [](int a, int b) { return b < a ? b : a; });
}
inline int atomicMax(int* address, int value) {
  return emulated_atomic_update<int>(address, value, [](int a, int b) { return b > a ? b : a; });
}
inline int atomicAdd(int* address, int value) {
  return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}
inline float atomicAdd(float* address, float value) {
  float old = 0.0f;
  unsigned* bits = reinterpret_cast<unsigned*>(address);
  unsigned expected = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    std::memcpy(&old, &expected, sizeof old);
    const float updated = old + value;
    unsigned desired = 0;
    std::memcpy(&desired, &updated, sizeof desired);
    if (__atomic_compare_exchange_n(bits, &expected, desired, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_RELAXED)) {
      return old;
    }
  }
}

// ---- math: the device library's names on the host
// ------------------------------------------------
// __expf is the hardware's approximate exponential (ex2.approx, about 2 ulp); the emulator uses
// the exact one, so results can differ from a GPU's in the last bits (docs/CUDA.md).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
// CUDA's min / max accept mixed integer and floating operands; so do these.
template <typename A, typename B>
constexpr std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B>
constexpr std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
