// Shared by the emulator's translation units (scheduler.cpp, runtime.cpp, cublas.cpp): the
// emulated device's limits and the per-host-thread error record. Not included by kernels.
#pragma once

#include <cstddef>
#include <string>

namespace engine::cuda::emulation {

// The emulated device: an sm_90 part (H100), which is what the kernels are tuned for.
constexpr int kComputeMajor = 9, kComputeMinor = 0;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned long long kMaxGridDim[3] = {2147483647ull, 65535ull, 65535ull};
constexpr size_t kDefaultDynamicSharedBytes = 48 * 1024;  // without the opt-in attribute
constexpr size_t kMaxSharedBytesOptIn = 232448;           // 227 KiB per block on sm_90
constexpr int kWarpLanes = 32;

// The dynamic shared memory a kernel may use after cudaFuncSetAttribute (0 when never set).
size_t max_dynamic_shared_bytes(const void* function);

// Records an error for this host thread: cudaGetLastError returns `code` once, and
// cudaGetErrorString(code) returns `detail` until another error is recorded. Returns `code`.
int record_error(int code, std::string detail);

}  // namespace engine::cuda::emulation
