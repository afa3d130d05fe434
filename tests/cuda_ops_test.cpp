// The CUDA backend's fp32 ops (GEMM, its epilogue, GELU) against the CPU backend, through the
// Backend interface. A GPU test (CTest label gpu): it runs on a GPU or under the emulator.
#ifdef ENGINE_HAVE_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "engine/device.h"
#include "tests/cuda_device_buffer.h"

namespace engine {
namespace {

using DeviceBuffer = test_support::DeviceBuffer<float>;

std::vector<float> random_vector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

class CudaOps : public test_support::CudaAndCpuBackends {};

// fp32 GEMM: cuBLAS and OpenBLAS agree to accumulated rounding (tolerance in docs/TOLERANCES.md).
TEST_F(CudaOps, GemmMatchesCpuAllTransposes) {
  const int64_t m = 37, n = 53, k = 71;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      auto a = random_vector(m * k, 1), b = random_vector(k * n, 2);
      std::vector<float> c_cpu(m * n, 0.0f);
      GemmParams p;
      p.transpose_a = ta;
      p.transpose_b = tb;
      p.m = m;
      p.n = n;
      p.k = k;
      p.lda = ta ? m : k;
      p.ldb = tb ? k : n;
      p.ldc = n;
      p.a = a.data();
      p.b = b.data();
      p.c = c_cpu.data();
      ASSERT_TRUE(cpu_->gemm(p).ok());
      DeviceBuffer da(a), db(b);
      DeviceBuffer dc{std::vector<float>(m * n, 0.0f)};
      p.a = da.ptr;
      p.b = db.ptr;
      p.c = dc.ptr;
      ASSERT_TRUE(gpu_->gemm(p).ok());
      auto c_gpu = dc.read();
      for (int64_t i = 0; i < m * n; ++i) ASSERT_NEAR(c_gpu[i], c_cpu[i], 1e-4f) << i;
    }
  }
}

// The linear-layer epilogue (bias over every row plus a residual with its own leading
// dimension) gives what the CPU backend gives.
TEST_F(CudaOps, GemmEpilogueMatchesCpu) {
  const int64_t m = 29, n = 41, k = 17, ldr = n + 5;
  auto a = random_vector(m * k, 11), b = random_vector(n * k, 12);
  auto bias = random_vector(n, 13), residual = random_vector(m * ldr, 14);
  std::vector<float> c_cpu(m * n, 0.0f);
  GemmParams p;
  p.transpose_b = true;
  p.m = m;
  p.n = n;
  p.k = k;
  p.lda = k;
  p.ldb = k;
  p.ldc = n;
  p.ldr = ldr;
  p.a = a.data();
  p.b = b.data();
  p.c = c_cpu.data();
  p.bias = bias.data();
  p.residual = residual.data();
  ASSERT_TRUE(cpu_->gemm(p).ok());
  DeviceBuffer da(a), db(b), dbias(bias), dres(residual);
  DeviceBuffer dc{std::vector<float>(m * n, 0.0f)};
  p.a = da.ptr;
  p.b = db.ptr;
  p.c = dc.ptr;
  p.bias = dbias.ptr;
  p.residual = dres.ptr;
  ASSERT_TRUE(gpu_->gemm(p).ok());
  auto c_gpu = dc.read();
  for (int64_t i = 0; i < m * n; ++i) ASSERT_NEAR(c_gpu[i], c_cpu[i], 1e-4f) << i;
}

// Masked SGD through both backends: the same update on the listed elements (one product and a
// subtraction: within 2u of |w| + |lr s g| of each other, u = 2^-24), every other element
// untouched; the gradient norm of both within 1e-12 relative (double sums of the same squares).
TEST_F(CudaOps, MaskedSgdAndGradientNormMatchCpu) {
  const int64_t arena = 300, n = 70;
  std::vector<int64_t> index(n);
  for (int64_t i = 0; i < n; ++i) index[i] = 3 * i + 2;
  const std::vector<float> params = random_vector(arena, 21), grad = random_vector(n, 22);
  MaskedAdamWParams p;
  p.n = n, p.index = index.data(), p.lr = 0.05f, p.grad_scale = 0.7f;
  std::vector<float> cpu_params = params;
  p.params = cpu_params.data(), p.grad = grad.data();
  ASSERT_TRUE(cpu_->masked_sgd(p).ok());
  int64_t* dindex = nullptr;
  ASSERT_EQ(cudaMalloc(&dindex, n * sizeof(int64_t)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dindex, index.data(), n * sizeof(int64_t), cudaMemcpyHostToDevice),
            cudaSuccess);
  DeviceBuffer dparams(params), dgrad(grad);
  MaskedAdamWParams g = p;
  g.index = dindex, g.params = dparams.ptr, g.grad = dgrad.ptr;
  ASSERT_TRUE(gpu_->masked_sgd(g).ok());
  const std::vector<float> got = dparams.read();
  for (int64_t e = 0; e < arena; ++e) {
    if (e % 3 != 2 || e >= 3 * n) {
      ASSERT_EQ(got[e], params[e]) << "frozen element " << e << " moved";
      continue;
    }
    const double step = std::fabs(static_cast<double>(p.lr) * p.grad_scale * grad[(e - 2) / 3]);
    EXPECT_LE(std::fabs(got[e] - cpu_params[e]), 4.0 / (1 << 24) * (std::fabs(params[e]) + step))
        << e;
    EXPECT_NE(got[e], params[e]) << "trainable element " << e << " did not move";
  }
  absl::StatusOr<double> want = cpu_->gradient_norm(grad.data(), n);
  absl::StatusOr<double> norm = gpu_->gradient_norm(dgrad.ptr, n);
  ASSERT_TRUE(want.ok() && norm.ok()) << want.status() << norm.status();
  EXPECT_NEAR(*norm, *want, 1e-12 * *want);
  cudaFree(dindex);
}

TEST_F(CudaOps, GeluMatchesFormula) {
  const size_t n = 1000;
  auto x = random_vector(n, 3);
  DeviceBuffer dx(x);
  DeviceBuffer dy{std::vector<float>(n)};
  GeluParams p;
  p.n = n;
  p.x = dx.ptr;
  p.y = dy.ptr;
  ASSERT_TRUE(gpu_->gelu_forward(p).ok());
  auto y = dy.read();
  for (size_t i = 0; i < n; ++i) {
    const double v = x[i];
    const double ref = 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    ASSERT_NEAR(y[i], ref, 1e-6) << i;
  }
}

}  // namespace
}  // namespace engine

#endif  // ENGINE_HAVE_CUDA
