// The CUDA backend's caching allocator (kernels/cuda/device_pool.h): size classes, reuse of
// freed blocks (zeroed again), the statistics, and memory that outlives the backend. Runs on a
// GPU or under the CUDA emulator (label gpu); under the sanitizer build the pool poisons what a
// request does not own, so overruns and uses after free still report.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "engine/device.h"
#include "kernels/cuda/device_pool.h"

namespace engine {
namespace {

std::unique_ptr<Backend> cuda_backend() {
  absl::StatusOr<std::unique_ptr<Backend>> b = make_backend("cuda");
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *std::move(b) : nullptr;
}

TEST(CudaAllocator, SizeClassesAre256BytesThen2MiB) {
  using cuda::pool_block_bytes;
  EXPECT_EQ(pool_block_bytes(0), 256u);
  EXPECT_EQ(pool_block_bytes(1), 256u);
  EXPECT_EQ(pool_block_bytes(256), 256u);
  EXPECT_EQ(pool_block_bytes(257), 512u);
  EXPECT_EQ(pool_block_bytes(1000), 1024u);
  EXPECT_EQ(pool_block_bytes(size_t{1} << 20), size_t{1} << 20);
  EXPECT_EQ(pool_block_bytes((size_t{1} << 20) + 1), size_t{2} << 20);
  EXPECT_EQ(pool_block_bytes(size_t{3} << 20), size_t{4} << 20);
  EXPECT_EQ(pool_block_bytes(size_t{4} << 20), size_t{4} << 20);
}

TEST(CudaAllocator, FreedBlocksAreReusedZeroedAndCounted) {
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  const Backend::Deallocator free_fn = cuda->deallocator();
  absl::StatusOr<void*> a = cuda->allocate(1000);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(*a) % 256, 0u);
  BackendMemoryStats s = cuda->memory_stats();
  EXPECT_EQ(s.live_bytes, 1000);
  EXPECT_EQ(s.live_block_bytes, 1024);
  EXPECT_EQ(s.device_allocations, 1);
  EXPECT_EQ(s.reuses, 0);
  std::vector<uint8_t> ones(1000, 0xab);
  ASSERT_TRUE(cuda->copy_to_device(*a, ones.data(), ones.size()).ok());
  free_fn(*a);
  s = cuda->memory_stats();
  EXPECT_EQ(s.live_bytes, 0);
  EXPECT_EQ(s.cached_bytes, 1024);
  EXPECT_EQ(s.peak_live_bytes, 1000);

  // Same class (769..1024 bytes): the cached block, zeroed again; no new device allocation.
  absl::StatusOr<void*> b = cuda->allocate(900);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*b, *a);
  std::vector<uint8_t> back(900, 0x11);
  ASSERT_TRUE(cuda->copy_to_host(back.data(), *b, back.size()).ok());
  EXPECT_EQ(back, std::vector<uint8_t>(900, 0));
  s = cuda->memory_stats();
  EXPECT_EQ(s.device_allocations, 1);
  EXPECT_EQ(s.reuses, 1);
  EXPECT_EQ(s.cached_bytes, 0);
  // Another class: a new block, 256-aligned.
  absl::StatusOr<void*> c = cuda->allocate(1025);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NE(*c, *b);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(*c) % 256, 0u);
  s = cuda->memory_stats();
  EXPECT_EQ(s.device_allocations, 2);
  EXPECT_EQ(s.live_bytes, 900 + 1025);
  EXPECT_EQ(s.live_block_bytes, 1024 + 1280);
  EXPECT_EQ(s.peak_live_bytes, 900 + 1025);
  free_fn(*b);
  free_fn(*c);
  cuda->reset_peak_memory();
  s = cuda->memory_stats();
  EXPECT_EQ(s.peak_live_bytes, 0);
  EXPECT_EQ(s.cached_bytes, 1024 + 1280);
  free_fn(nullptr);  // fine
}

// The tape's pattern: every step allocates and frees the same gradient buffers. After the first
// step every request is served from the cache.
TEST(CudaAllocator, RepeatedStepsStopAllocatingFromTheDevice) {
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  const Backend::Deallocator free_fn = cuda->deallocator();
  const std::vector<size_t> sizes = {4096, 196608, 3 << 20, 4096, 777};
  int64_t after_first = 0;
  for (int step = 0; step < 5; ++step) {
    std::vector<void*> live;
    for (size_t n : sizes) {
      absl::StatusOr<void*> p = cuda->allocate(n);
      ASSERT_TRUE(p.ok()) << p.status();
      live.push_back(*p);
    }
    for (void* p : live) free_fn(p);
    if (step == 0) after_first = cuda->memory_stats().device_allocations;
  }
  const BackendMemoryStats s = cuda->memory_stats();
  EXPECT_EQ(after_first, static_cast<int64_t>(sizes.size()));
  EXPECT_EQ(s.device_allocations, after_first);
  EXPECT_EQ(s.reuses, 4 * static_cast<int64_t>(sizes.size()));
  EXPECT_EQ(s.live_bytes, 0);
  int64_t requested = 0;
  for (size_t n : sizes) requested += static_cast<int64_t>(n);
  EXPECT_EQ(s.peak_live_bytes, requested);
}

// Memory may outlive the backend (engine/backend.h): freeing it afterwards releases it, and the
// backend's destruction released its cached blocks. Under the emulator a cudaFree of a pointer
// that is no longer an allocation is an error, which shows both.
TEST(CudaAllocator, BlocksOutliveTheBackendAndNothingStaysCached) {
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  const Backend::Deallocator free_fn = cuda->deallocator();
  absl::StatusOr<void*> cached = cuda->allocate(5000);
  absl::StatusOr<void*> live = cuda->allocate(300);
  ASSERT_TRUE(cached.ok() && live.ok());
  free_fn(*cached);
  EXPECT_EQ(cuda->memory_stats().cached_bytes, 5120);
  cuda.reset();
#if defined(ENGINE_CUDA_EMULATION)
  // Probed while the live block still holds the pool: the backend's destruction released it.
  EXPECT_NE(cudaFree(*cached), cudaSuccess) << "the cached block outlived the backend";
  cudaGetLastError();
#endif
  // The live block is still usable, then freed through the plain function.
  std::vector<uint8_t> host(300, 7), back(300, 0);
  ASSERT_EQ(cudaMemcpy(*live, host.data(), 300, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(back.data(), *live, 300, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, host);
  free_fn(*live);
#if defined(ENGINE_CUDA_EMULATION)
  EXPECT_NE(cudaFree(*live), cudaSuccess) << "the live block was not released when freed";
  cudaGetLastError();
#endif
}

}  // namespace
}  // namespace engine
