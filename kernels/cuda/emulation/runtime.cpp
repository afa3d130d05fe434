// The CUDA runtime subset of include/cuda_runtime.h on the host: one emulated device (sm_90),
// device memory as host memory with a registry of allocations (so copies and frees are checked
// against what was allocated, as the driver does), synchronous streams and events, per-kernel
// attributes, and the per-host-thread error record.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/emulation/emulator.h"
#include "kernels/cuda/emulation/emulator_internal.h"
#include "kernels/cuda/emulation/include/cuda_runtime.h"

struct CUstream_st {
  unsigned flags = 0;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point at{};
  bool recorded = false;
};

namespace engine::cuda::emulation {
namespace {

// Device allocations are 256-byte aligned, as cudaMalloc's.
constexpr size_t kAllocationAlignment = 256;
constexpr size_t kEmulatedMemoryBytes = size_t{80} << 30;  // what cudaDeviceProp reports

struct ErrorRecord {
  cudaError_t last = cudaSuccess;
  cudaError_t detail_code = cudaSuccess;
  std::string detail;
};
thread_local ErrorRecord errors;
thread_local int current_device = 0;
constexpr int kMaxEmulatedDevices = 8;

// ENGINE_CUDA_EMULATION_DEVICES (1 to 8, default 1): how many devices the emulator shows, so that
// one-GPU-per-rank code (the NCCL transport) can run several ranks on one machine.
int device_count() {
  static const int count = [] {
    const char* env = std::getenv("ENGINE_CUDA_EMULATION_DEVICES");
    const int n = env != nullptr ? std::atoi(env) : 1;
    return std::clamp(n, 1, kMaxEmulatedDevices);
  }();
  return count;
}

class Registry {
 public:
  static Registry& instance() {
    static Registry* r = new Registry();
    return *r;
  }
  void add(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    blocks_[reinterpret_cast<uintptr_t>(p)] = bytes;
  }
  bool remove(void* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    return blocks_.erase(reinterpret_cast<uintptr_t>(p)) == 1;
  }
  // Whether p lies in [base, base + size] of one allocation (one past the end included).
  bool points_into(const void* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = blocks_.upper_bound(a);
    if (it == blocks_.begin()) return false;
    --it;
    return a >= it->first && a <= it->first + it->second;
  }
  // Whether [p, p + bytes) lies inside one allocation.
  bool contains(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = blocks_.upper_bound(a);
    if (it == blocks_.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
  }

 private:
  std::mutex mutex_;
  std::map<uintptr_t, size_t> blocks_;
};

struct AttributeTable {
  std::mutex mutex;
  std::map<const void*, size_t> max_dynamic_shared;
};
AttributeTable& attributes() {
  static AttributeTable* t = new AttributeTable();
  return *t;
}

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError:
      return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection:
      return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    case cudaErrorIllegalAddress:
      return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources:
      return "cudaErrorLaunchOutOfResources";
    case cudaErrorMisalignedAddress:
      return "cudaErrorMisalignedAddress";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

cudaError_t fail(cudaError_t code, const std::string& what) {
  return static_cast<cudaError_t>(record_error(code, absl::StrCat(error_name(code), ": ", what)));
}

// Checks one side of a copy or memset: device pointers must lie inside an allocation.
cudaError_t check_device_range(const void* p, size_t bytes, const char* call, const char* side) {
  if (bytes == 0) return cudaSuccess;
  if (!Registry::instance().contains(p, bytes)) {
    return fail(cudaErrorInvalidValue, absl::StrCat(call, ": the ", side, " range of ", bytes,
                                                    " bytes is not inside one device allocation"));
  }
  return cudaSuccess;
}

cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* call) {
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) {
    return fail(cudaErrorInvalidMemcpyDirection,
                absl::StrCat(call, ": kind ", static_cast<int>(kind)));
  }
  if (bytes > 0 && (dst == nullptr || src == nullptr)) {
    return fail(cudaErrorInvalidValue, absl::StrCat(call, ": null pointer"));
  }
  if (dst_device) {
    if (cudaError_t e = check_device_range(dst, bytes, call, "destination"); e != cudaSuccess)
      return e;
  }
  if (src_device) {
    if (cudaError_t e = check_device_range(src, bytes, call, "source"); e != cudaSuccess) return e;
  }
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

}  // namespace

int record_error(int code, std::string detail) {
  errors.last = static_cast<cudaError_t>(code);
  errors.detail_code = static_cast<cudaError_t>(code);
  errors.detail = std::move(detail);
  return code;
}

bool is_device_pointer(const void* p) { return Registry::instance().points_into(p); }

size_t max_dynamic_shared_bytes(const void* function) {
  AttributeTable& t = attributes();
  std::lock_guard<std::mutex> lock(t.mutex);
  auto it = t.max_dynamic_shared.find(function);
  return it == t.max_dynamic_shared.end() ? 0 : it->second;
}

}  // namespace engine::cuda::emulation

using engine::cuda::emulation::fail;
using engine::cuda::emulation::Registry;

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return fail(cudaErrorInvalidValue, "cudaGetDeviceCount: null count");
  *count = engine::cuda::emulation::device_count();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  const int count = engine::cuda::emulation::device_count();
  if (device < 0 || device >= count) {
    return fail(cudaErrorInvalidDevice, absl::StrCat("cudaSetDevice(", device, "): the emulator has ",
                                                     count, " device(s)"));
  }
  engine::cuda::emulation::current_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return fail(cudaErrorInvalidValue, "cudaGetDevice: null device");
  *device = engine::cuda::emulation::current_device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  namespace emu = engine::cuda::emulation;
  if (prop == nullptr || device < 0 || device >= emu::device_count()) {
    return fail(cudaErrorInvalidDevice, absl::StrCat("cudaGetDeviceProperties(", device, ")"));
  }
  *prop = cudaDeviceProp{};
  std::strncpy(prop->name, "CUDA emulator (sm_90, host CPU)", sizeof prop->name - 1);
  prop->totalGlobalMem = emu::kEmulatedMemoryBytes;
  prop->sharedMemPerBlock = emu::kDefaultDynamicSharedBytes;
  prop->sharedMemPerBlockOptin = emu::kMaxSharedBytesOptIn;
  prop->regsPerBlock = 65536;
  prop->warpSize = emu::kWarpLanes;
  prop->maxThreadsPerBlock = static_cast<int>(emu::kMaxThreadsPerBlock);
  for (int i = 0; i < 3; ++i) {
    prop->maxThreadsDim[i] = static_cast<int>(emu::kMaxBlockDim[i]);
    prop->maxGridSize[i] = static_cast<int>(emu::kMaxGridDim[i]);
  }
  prop->major = emu::kComputeMajor;
  prop->minor = emu::kComputeMinor;
  prop->multiProcessorCount = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaGetLastError() {
  const cudaError_t e = engine::cuda::emulation::errors.last;
  engine::cuda::emulation::errors.last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return engine::cuda::emulation::errors.last; }
const char* cudaGetErrorName(cudaError_t error) {
  return engine::cuda::emulation::error_name(error);
}
// The emulator's errors carry their reason (which kernel, which thread, what went wrong): the
// string of the most recent error of this code on this host thread is that reason.
const char* cudaGetErrorString(cudaError_t error) {
  const auto& e = engine::cuda::emulation::errors;
  if (error != cudaSuccess && error == e.detail_code && !e.detail.empty()) return e.detail.c_str();
  return engine::cuda::emulation::error_name(error);
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (ptr == nullptr) return fail(cudaErrorInvalidValue, "cudaMalloc: null result pointer");
  // Exactly the bytes asked for (at least one): a sanitizer build then sees kernel overruns.
  const size_t rounded = std::max<size_t>(1, bytes);
  void* p = ::operator new(rounded, std::align_val_t(engine::cuda::emulation::kAllocationAlignment),
                           std::nothrow);
  if (p == nullptr) {
    *ptr = nullptr;
    return fail(cudaErrorMemoryAllocation, absl::StrCat("cudaMalloc of ", bytes, " bytes"));
  }
  Registry::instance().add(p, bytes);
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  if (!Registry::instance().remove(ptr)) {
    return fail(cudaErrorInvalidDevicePointer, "cudaFree: not a pointer cudaMalloc returned");
  }
  ::operator delete(ptr, std::align_val_t(engine::cuda::emulation::kAllocationAlignment));
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t) {
  return cudaMalloc(ptr, bytes);
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return cudaFree(ptr); }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return engine::cuda::emulation::copy(dst, src, bytes, kind, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
  return engine::cuda::emulation::copy(dst, src, bytes, kind, "cudaMemcpyAsync");
}
cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  if (cudaError_t e =
          engine::cuda::emulation::check_device_range(ptr, bytes, "cudaMemset", "target");
      e != cudaSuccess) {
    return e;
  }
  if (bytes > 0) std::memset(ptr, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  return cudaMemset(ptr, value, bytes);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  if (stream == nullptr) return fail(cudaErrorInvalidValue, "cudaStreamCreate: null stream");
  *stream = new CUstream_st{flags};
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: null");
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (event == nullptr) return fail(cudaErrorInvalidValue, "cudaEventCreate: null event");
  *event = new CUevent_st{};
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (event == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: null");
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  if (event == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: null");
  event->at = std::chrono::steady_clock::now();
  event->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: null");
  return cudaSuccess;
}
// Host time between the two records: the emulator says nothing about GPU speed.
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr || start == nullptr || end == nullptr || !start->recorded || !end->recorded) {
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: unrecorded event");
  }
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* function, cudaFuncAttribute attribute, int value) {
  namespace emu = engine::cuda::emulation;
  if (function == nullptr)
    return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: null function");
  if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > emu::kMaxSharedBytesOptIn) {
      return fail(cudaErrorInvalidValue,
                  absl::StrCat("cudaFuncSetAttribute: ", value,
                               " bytes of dynamic shared memory, above the device's ",
                               emu::kMaxSharedBytesOptIn));
    }
    emu::AttributeTable& t = emu::attributes();
    std::lock_guard<std::mutex> lock(t.mutex);
    t.max_dynamic_shared[function] = static_cast<size_t>(value);
  }
  return cudaSuccess;
}
