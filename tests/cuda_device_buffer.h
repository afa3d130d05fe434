// GPU tests (tests/cuda_*_test.cpp): a device copy of a host vector, owned by the test; read()
// synchronises and copies it back. Every CUDA call is checked with a gtest expectation.
// CudaAndCpuBackends: the fixture of tests that run an op on both backends through the Backend
// interface (skipped where no CUDA device is visible).
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

#include "engine/backend.h"
#include "engine/device.h"

namespace engine::test_support {

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemset(ptr, 0, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    EXPECT_EQ(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr); }
  std::vector<T> read() const {
    std::vector<T> out(n);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(out.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
};

class CudaAndCpuBackends : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    auto g = make_backend("cuda");
    ASSERT_TRUE(g.ok()) << g.status();
    gpu_ = std::move(*g);
    cpu_ = make_cpu_backend();
  }
  std::unique_ptr<Backend> gpu_, cpu_;
};

}  // namespace engine::test_support
