#include "engine/large_pages.h"

#include <sys/mman.h>

namespace engine {

void* allocate_large(size_t bytes, size_t small_align) {
  if (bytes < kHugePageBytes) {
    const size_t size = (bytes + small_align - 1) / small_align * small_align;
    return std::aligned_alloc(small_align, size == 0 ? small_align : size);
  }
  const size_t size = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  void* p = std::aligned_alloc(kHugePageBytes, size);
  if (p != nullptr) madvise(p, size, MADV_HUGEPAGE);  // advice: failure changes nothing
  return p;
}

}  // namespace engine
