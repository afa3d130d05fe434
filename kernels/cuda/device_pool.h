// DevicePool: the caching allocator behind CudaBackend::allocate and its deallocator. The tape
// allocates and frees a gradient buffer per block per step, and cudaFree synchronises the
// device; a freed block is kept for the next request of its size class instead.
// Contract:
// - allocate(bytes): `bytes` zeroed bytes, aligned to 256 (cudaMalloc's alignment), carved from
//   a block of `bytes`' size class (pool_block_bytes: multiples of 256 B up to 1 MiB, multiples of
//   2 MiB above, at least 256 B). A free block of that class is reused (zeroed again, in stream
//   order on the legacy default stream, which all of the backend's work uses, so no
//   synchronisation is needed) before a new cudaMalloc; when cudaMalloc fails, the pool's cached
//   blocks are released and it is tried once more; then a ResourceExhausted error naming the size.
// - free_block(p) is a plain function (Backend::Deallocator): a process-wide table maps every
//   live block to its pool through a shared_ptr, so a pool lives as long as its backend or any of
//   its blocks. close() (the backend's destructor) releases the cached blocks at once; blocks
//   still live then (memory that outlives the backend) are released by cudaFree when freed.
//   Null is fine; a pointer the pool did not hand out goes to cudaFree.
// - stats(): bytes handed out and live (as requested and as whole blocks), the peaks of both
//   since creation or reset_peak(), bytes cached in free lists, and the counts of cudaMalloc
//   calls and of reuses.
// - Under the CUDA emulator with AddressSanitizer, the bytes of a block past the request and
//   every cached block are poisoned, so a kernel's overrun or a use after free still reports.
// Thread-safe: one process-wide mutex guards the table and every pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace engine::cuda {

// The size class (block bytes) of a request of `bytes`.
size_t pool_block_bytes(size_t bytes);

class DevicePool {
 public:
  explicit DevicePool(int device) : device_(device) {}
  ~DevicePool();
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // `self` is the shared_ptr this pool is owned by (blocks keep it alive).
  static absl::StatusOr<void*> allocate(const std::shared_ptr<DevicePool>& self, size_t bytes);
  static void free_block(void* p);
  void close();
  BackendMemoryStats stats() const;
  void reset_peak();

 private:
  void release_cached_locked();

  const int device_;
  bool closed_ = false;
  std::map<size_t, std::vector<void*>> free_;  // block bytes -> cached blocks
  BackendMemoryStats stats_;
};

}  // namespace engine::cuda
