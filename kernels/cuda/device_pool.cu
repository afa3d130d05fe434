// The caching device allocator; contract in device_pool.h.
#include "kernels/cuda/device_pool.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"

#if defined(ENGINE_CUDA_EMULATION) && defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ENGINE_POOL_POISON 1
#endif
#endif
#if defined(ENGINE_CUDA_EMULATION) && defined(__SANITIZE_ADDRESS__)
#define ENGINE_POOL_POISON 1
#endif
#if defined(ENGINE_POOL_POISON)
#include <sanitizer/asan_interface.h>
#endif

namespace engine::cuda {
namespace {

constexpr size_t kSmallGranule = 256;
constexpr size_t kSmallLimit = size_t{1} << 20;
constexpr size_t kLargeGranule = size_t{2} << 20;

// Device memory is host memory under the emulator: poisoning it keeps AddressSanitizer's view
// of a block the request's size (on hardware these are no-ops).
void poison(void* p, size_t bytes) {
#if defined(ENGINE_POOL_POISON)
  ASAN_POISON_MEMORY_REGION(p, bytes);
#else
  (void)p, (void)bytes;
#endif
}
void unpoison(void* p, size_t bytes) {
#if defined(ENGINE_POOL_POISON)
  ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#else
  (void)p, (void)bytes;
#endif
}

struct LiveBlock {
  std::shared_ptr<DevicePool> pool;
  size_t bytes = 0, block = 0;
};

// The process-wide table of live blocks, and the one mutex of every pool. Never destroyed, so a
// block freed during static destruction still finds it.
struct Table {
  std::mutex mu;
  std::unordered_map<void*, LiveBlock> live;
};
Table& table() {
  static Table* t = new Table();
  return *t;
}

void raise_peaks(BackendMemoryStats& s) {
  s.peak_live_bytes = std::max(s.peak_live_bytes, s.live_bytes);
  s.peak_live_block_bytes = std::max(s.peak_live_block_bytes, s.live_block_bytes);
}

}  // namespace

size_t pool_block_bytes(size_t bytes) {
  if (bytes <= kSmallLimit) {
    return std::max(kSmallGranule, (bytes + kSmallGranule - 1) / kSmallGranule * kSmallGranule);
  }
  return (bytes + kLargeGranule - 1) / kLargeGranule * kLargeGranule;
}

DevicePool::~DevicePool() {
  // The last reference: nobody else can reach the free lists (close() emptied them already when
  // the backend went first; this covers a pool never closed).
  for (auto& [block, list] : free_) {
    for (void* p : list) {
      unpoison(p, block);
      cudaFree(p);
    }
  }
}

absl::StatusOr<void*> DevicePool::allocate(const std::shared_ptr<DevicePool>& self, size_t bytes) {
  const size_t block = pool_block_bytes(bytes);
  // The pool's device for the cudaMalloc and for the zeroing of a reused block.
  if (cudaError_t e = cudaSetDevice(self->device_); e != cudaSuccess) {
    return absl::InternalError(absl::StrCat("cudaSetDevice: ", cudaGetErrorString(e)));
  }
  Table& t = table();
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(t.mu);
    auto it = self->free_.find(block);
    if (it != self->free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      self->stats_.cached_bytes -= static_cast<int64_t>(block);
      ++self->stats_.reuses;
    }
  }
  if (p == nullptr) {
    if (cudaMalloc(&p, block) != cudaSuccess) {
      cudaGetLastError();  // an allocation failure is not sticky; clear it for the next call
      {
        std::lock_guard<std::mutex> lock(t.mu);
        self->release_cached_locked();
      }
      if (cudaMalloc(&p, block) != cudaSuccess) {
        cudaGetLastError();
        return absl::ResourceExhaustedError(absl::StrCat(
            "cuda:", self->device_, ": out of device memory allocating ", bytes, " bytes"));
      }
    }
    std::lock_guard<std::mutex> lock(t.mu);
    ++self->stats_.device_allocations;
  }
  unpoison(p, bytes);
  poison(static_cast<std::byte*>(p) + bytes, block - bytes);
  if (cudaError_t e = cudaMemset(p, 0, bytes); e != cudaSuccess) {
    unpoison(p, block);
    cudaFree(p);
    return absl::InternalError(absl::StrCat("cudaMemset: ", cudaGetErrorString(e)));
  }
  std::lock_guard<std::mutex> lock(t.mu);
  t.live[p] = LiveBlock{self, bytes, block};
  self->stats_.live_bytes += static_cast<int64_t>(bytes);
  self->stats_.live_block_bytes += static_cast<int64_t>(block);
  raise_peaks(self->stats_);
  return p;
}

void DevicePool::free_block(void* p) {
  if (p == nullptr) return;
  Table& t = table();
  std::shared_ptr<DevicePool> pool;  // released after the lock: it may be the last reference
  {
    std::lock_guard<std::mutex> lock(t.mu);
    auto it = t.live.find(p);
    if (it == t.live.end()) {
      cudaFree(p);  // not the pool's (errors cannot be reported from a deallocation)
      return;
    }
    LiveBlock b = std::move(it->second);
    t.live.erase(it);
    pool = std::move(b.pool);
    pool->stats_.live_bytes -= static_cast<int64_t>(b.bytes);
    pool->stats_.live_block_bytes -= static_cast<int64_t>(b.block);
    if (pool->closed_) {
      unpoison(p, b.block);
      cudaFree(p);
    } else {
      poison(p, b.block);
      pool->free_[b.block].push_back(p);
      pool->stats_.cached_bytes += static_cast<int64_t>(b.block);
    }
  }
}

void DevicePool::release_cached_locked() {
  for (auto& [block, list] : free_) {
    for (void* p : list) {
      unpoison(p, block);
      cudaFree(p);
    }
    list.clear();
  }
  free_.clear();
  stats_.cached_bytes = 0;
}

void DevicePool::close() {
  std::lock_guard<std::mutex> lock(table().mu);
  closed_ = true;
  release_cached_locked();
}

BackendMemoryStats DevicePool::stats() const {
  std::lock_guard<std::mutex> lock(table().mu);
  return stats_;
}

void DevicePool::reset_peak() {
  std::lock_guard<std::mutex> lock(table().mu);
  stats_.peak_live_bytes = stats_.live_bytes;
  stats_.peak_live_block_bytes = stats_.live_block_bytes;
}

}  // namespace engine::cuda
