// Backend selection (the CUDA ops against the CPU reference are in cuda_ops_test.cpp).
#include "engine/device.h"

#include <gtest/gtest.h>

#include <string>

namespace engine {
namespace {

TEST(Device, CpuBackendAlwaysAvailable) {
  auto b = make_backend("cpu");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->kind(), DeviceKind::kCpu);
}

TEST(Device, RejectsUnknownDeviceNames) {
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda0", "cuda:-1", ""}) {
    auto b = make_backend(bad);
    EXPECT_FALSE(b.ok()) << bad;
    EXPECT_NE(b.status().message().find("--device"), absl::string_view::npos) << bad;
  }
}

// Without a device (or without CUDA in the build) asking for one is an error, not a crash; with
// one (a GPU, or the emulator's device) the backend comes up, and a device index past the last is
// an error naming the flag.
TEST(Device, CudaBackendExactlyWhenADeviceIsVisible) {
  const int count = cuda_device_count();
  auto b = make_backend("cuda");
  EXPECT_EQ(b.ok(), count > 0) << b.status();
  if (b.ok()) EXPECT_EQ((*b)->kind(), DeviceKind::kCuda);
  auto past = make_backend("cuda:" + std::to_string(count));
  ASSERT_FALSE(past.ok());
  EXPECT_NE(past.status().message().find("--device"), absl::string_view::npos) << past.status();
}

}  // namespace
}  // namespace engine
