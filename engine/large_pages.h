// Large buffers on transparent huge pages.
//
// The engine's big buffers (the parameter arena, a forward pass's activations) are megabytes to
// gigabytes, written once and then streamed through by GEMMs and kernels. On 4 KiB pages every
// first touch is a page fault (a bloom-560m forward at T = 2048 touches about 150 MiB of fresh
// activations: 38,000 faults, about 5% of its CPU time on the development machine) and the GEMMs
// walk the weights through a TLB that covers a few MiB. Where the kernel runs transparent huge
// pages in "madvise" mode (the common default), asking for them per buffer cuts both by 512x.
// The advice is only advice: without huge pages everything behaves exactly as before.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

namespace engine {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// Allocates `bytes` aligned to a huge page when that is at least one huge page (rounding the
// size up), with MADV_HUGEPAGE applied; otherwise aligned to `small_align`. Free with
// std::free. Returns null when out of memory.
void* allocate_large(size_t bytes, size_t small_align);

// std::allocator for containers that may grow large (std::vector<float, LargePageAllocator<float>>):
// allocations of a huge page or more go through allocate_large. Elements are value-initialised
// as with std::allocator.
template <typename T>
struct LargePageAllocator {
  using value_type = T;
  LargePageAllocator() = default;
  template <typename U>
  LargePageAllocator(const LargePageAllocator<U>&) {}  // NOLINT: rebinding is implicit
  T* allocate(size_t n) {
    if (n > static_cast<size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    void* p = allocate_large(n * sizeof(T), alignof(T) < 64 ? 64 : alignof(T));
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const LargePageAllocator<U>&) const { return true; }
};

// The engine's large float buffers (activations, gradients).
using LargeFloatVector = std::vector<float, LargePageAllocator<float>>;

}  // namespace engine
