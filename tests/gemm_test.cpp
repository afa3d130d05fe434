// The CPU GEMM (kernels/cpu/gemm.cpp) cuts large products into one slab of C per OpenMP thread
// and writes a linear layer's bias and residual into each slab before accumulating the product.
// These tests compare it with a plain double-precision triple loop over every transpose
// combination, on sizes below and above the threading cut-off, on both split directions (more
// rows than columns and the reverse), on sub-matrices with leading dimensions wider than the
// sizes, and on every epilogue combination, each element within its rounding bound.
#include <omp.h>

#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "engine/backend.h"
#include "error_bounds.h"

namespace engine {
namespace {

std::vector<float> random_values(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

struct Case {
  int64_t m, n, k;
  bool ta, tb;
  bool bias, residual;
  float beta;
};

// Runs one case with padded leading dimensions and checks every element of C, including the
// padding columns, which must be untouched.
void check(Backend& cpu, const Case& c) {
  const int64_t pad = 3;
  const int64_t lda = (c.ta ? c.m : c.k) + pad, ldb = (c.tb ? c.k : c.n) + pad;
  const int64_t ldc = c.n + pad, ldr = c.n + 2 * pad;
  const std::vector<float> a = random_values((c.ta ? c.k : c.m) * lda, 1);
  const std::vector<float> b = random_values((c.tb ? c.n : c.k) * ldb, 2);
  const std::vector<float> bias = random_values(c.n, 3);
  const std::vector<float> residual = random_values(c.m * ldr, 4);
  const std::vector<float> c0 = random_values(c.m * ldc, 5);
  std::vector<float> out = c0;
  GemmParams p;
  p.transpose_a = c.ta, p.transpose_b = c.tb;
  p.m = c.m, p.n = c.n, p.k = c.k;
  p.alpha = 0.5f, p.beta = c.beta;
  p.a = a.data(), p.lda = lda, p.b = b.data(), p.ldb = ldb, p.c = out.data(), p.ldc = ldc;
  if (c.bias) p.bias = bias.data();
  if (c.residual) p.residual = residual.data(), p.ldr = ldr;
  ASSERT_TRUE(cpu.gemm(p).ok());
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const float got = out[i * ldc + j];
      if (j >= c.n) {
        ASSERT_EQ(got, c0[i * ldc + j]) << "padding column " << j << " of row " << i;
        continue;
      }
      double want = 0.0, magnitude = 0.0;
      for (int64_t l = 0; l < c.k; ++l) {
        const double x = c.ta ? a[l * lda + i] : a[i * lda + l];
        const double y = c.tb ? b[j * ldb + l] : b[l * ldb + j];
        want += x * y;
        magnitude += std::abs(x * y);
      }
      want = 0.5 * want + c.beta * c0[i * ldc + j];
      magnitude = 0.5 * magnitude + std::abs(c.beta * c0[i * ldc + j]);
      if (c.bias) want += bias[j], magnitude += std::abs(bias[j]);
      if (c.residual) want += residual[i * ldr + j], magnitude += std::abs(residual[i * ldr + j]);
      // A float dot product of length k in any order, scaled by alpha, plus up to three more
      // terms (beta C, bias, residual): gamma_(k + 4) times the sum of the terms' magnitudes
      // (tests/error_bounds.h). A dropped or misplaced term is 0.5 |a b| ~ 0.1 on average.
      ASSERT_NEAR(got, want, test::float_gamma(c.k + 4) * magnitude)
          << "m=" << c.m << " n=" << c.n << " k=" << c.k << " ta=" << c.ta << " tb=" << c.tb
          << " at (" << i << ", " << j << ")";
    }
  }
}

TEST(CpuGemm, MatchesTripleLoopAcrossShapesTransposesAndEpilogues) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  // Small (one call on this thread), tall (split by rows), wide (split by columns), and sizes
  // that are not multiples of the slab alignment.
  const int64_t shapes[][3] = {{5, 7, 3}, {300, 40, 129}, {33, 517, 96}, {131, 131, 70}};
  for (const auto& s : shapes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        check(*cpu, {s[0], s[1], s[2], ta, tb, false, false, 0.0f});
        check(*cpu, {s[0], s[1], s[2], ta, tb, false, false, 1.0f});
        check(*cpu, {s[0], s[1], s[2], ta, tb, true, false, 0.0f});
        check(*cpu, {s[0], s[1], s[2], ta, tb, false, true, 0.0f});
        check(*cpu, {s[0], s[1], s[2], ta, tb, true, true, 0.0f});
      }
    }
  }
}

TEST(CpuGemm, ResultDoesNotDependOnTheThreadCount) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  const int64_t m = 257, n = 190, k = 64;
  const std::vector<float> a = random_values(m * k, 6), b = random_values(n * k, 7);
  const std::vector<float> bias = random_values(n, 8);
  auto run = [&](int threads) {
    std::vector<float> c(m * n);
    GemmParams p;
    p.transpose_b = true;
    p.m = m, p.n = n, p.k = k;
    p.a = a.data(), p.lda = k, p.b = b.data(), p.ldb = k, p.c = c.data(), p.ldc = n;
    p.bias = bias.data();
    const int before = omp_get_max_threads();
    omp_set_num_threads(threads);
    EXPECT_TRUE(cpu->gemm(p).ok());
    omp_set_num_threads(before);
    return c;
  };
  // Each element is one single-threaded sgemm's dot product whichever slab it lands in, so the
  // results are equal, not merely close.
  EXPECT_EQ(run(1), run(2));
  EXPECT_EQ(run(1), run(3));
}

TEST(CpuGemm, EpilogueIsInPlaceWhenTheResidualIsTheOutput) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  const int64_t m = 64, n = 48, k = 32;
  const std::vector<float> a = random_values(m * k, 9), b = random_values(k * n, 10);
  std::vector<float> c = random_values(m * n, 11);
  const std::vector<float> before = c;
  GemmParams p;
  p.m = m, p.n = n, p.k = k;
  p.a = a.data(), p.lda = k, p.b = b.data(), p.ldb = n, p.c = c.data(), p.ldc = n;
  p.residual = c.data(), p.ldr = n;
  ASSERT_TRUE(cpu->gemm(p).ok());
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double want = before[i * n + j], magnitude = std::abs(want);
      for (int64_t l = 0; l < k; ++l) {
        want += double(a[i * k + l]) * b[l * n + j];
        magnitude += std::abs(double(a[i * k + l]) * b[l * n + j]);
      }
      ASSERT_NEAR(c[i * n + j], want, test::float_gamma(k + 1) * magnitude) << i << ", " << j;
    }
  }
}

TEST(CpuGemm, RejectsAnEpilogueWithNonZeroBetaAndANarrowResidual) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::vector<float> a(4, 1.0f), b(4, 1.0f), c(4, 0.0f), bias(2, 1.0f);
  GemmParams p;
  p.m = 2, p.n = 2, p.k = 2;
  p.a = a.data(), p.lda = 2, p.b = b.data(), p.ldb = 2, p.c = c.data(), p.ldc = 2;
  p.bias = bias.data();
  p.beta = 1.0f;
  absl::Status s = cpu->gemm(p);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("beta"), std::string::npos) << s;
  p.beta = 0.0f;
  p.bias = nullptr;
  p.residual = c.data(), p.ldr = 1;
  s = cpu->gemm(p);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("residual leading dimension 1"), std::string::npos) << s;
  EXPECT_EQ(c, std::vector<float>(4, 0.0f));
}

}  // namespace
}  // namespace engine
