// engine/large_pages.h: large buffers are huge-page aligned and advised, small ones are plain
// aligned allocations, and the allocator behaves as std::allocator for containers.
#include "engine/large_pages.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace engine {
namespace {

// The VmFlags line of the /proc/self/smaps mapping that contains `p` ("" if none is found).
std::string vm_flags_of(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto addr = reinterpret_cast<uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') != 8) {
      inside = addr >= lo && addr < hi;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}

bool transparent_huge_pages_available() {
  std::ifstream mode("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string text;
  std::getline(mode, text);
  return !text.empty() && text.find("[never]") == std::string::npos;
}

TEST(LargePages, LargeAllocationsAreHugePageAlignedAndAdvised) {
  const size_t bytes = 3 * kHugePageBytes + 123;
  void* p = allocate_large(bytes, 64);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kHugePageBytes, 0u);
  // The whole rounded-up size is usable.
  static_cast<char*>(p)[4 * kHugePageBytes - 1] = 1;
  if (transparent_huge_pages_available()) {
    const std::string flags = vm_flags_of(p);
    EXPECT_NE(flags.find(" hg"), std::string::npos) << "no MADV_HUGEPAGE advice: " << flags;
  }
  std::free(p);
}

TEST(LargePages, SmallAllocationsUseTheSmallAlignment) {
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{100}, kHugePageBytes - 1}) {
    void* p = allocate_large(bytes, 64);
    ASSERT_NE(p, nullptr) << bytes;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u) << bytes;
    std::free(p);
  }
}

TEST(LargePages, VectorsValueInitialiseAndGrowAcrossTheThreshold) {
  std::vector<float, LargePageAllocator<float>> v(10);
  for (float x : v) EXPECT_EQ(x, 0.0f);
  v.assign(kHugePageBytes / sizeof(float) + 7, 2.0f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % kHugePageBytes, 0u);
  v.resize(v.size() + 5);
  EXPECT_EQ(v[kHugePageBytes / sizeof(float)], 2.0f);
  EXPECT_EQ(v.back(), 0.0f);
  std::vector<float, LargePageAllocator<float>> copy = v;
  EXPECT_EQ(copy, v);
}

}  // namespace
}  // namespace engine
