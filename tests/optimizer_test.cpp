// Masked AdamW / SGD against an independent double-precision AdamW, and the LR schedule.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>
#include <omp.h>

#include "engine/schedule.h"
#include "kernels/cpu/adamw.h"

namespace engine {
namespace {

// PyTorch's AdamW written out in double for one element.
struct ReferenceAdamW {
  double w, m = 0, v = 0;
  void step(double g, int64_t t, double lr, double b1, double b2, double eps, double wd) {
    w -= lr * wd * w;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double mhat = m / (1 - std::pow(b1, t));
    const double vhat = v / (1 - std::pow(b2, t));
    w -= lr * mhat / (std::sqrt(vhat) + eps);
  }
};

TEST(MaskedAdamW, MatchesReferenceAndNeverTouchesFrozenElements) {
  const int64_t total = 1000;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> params(total);
  for (float& x : params) x = dist(rng);
  const std::vector<float> initial = params;
  std::vector<int64_t> index;
  for (int64_t i = 3; i < total; i += 7) index.push_back(i);
  const int64_t n = static_cast<int64_t>(index.size());
  std::vector<float> m(n, 0.0f), v(n, 0.0f), grad(n);
  std::vector<ReferenceAdamW> ref;
  for (int64_t i : index) ref.push_back(ReferenceAdamW{initial[i]});

  MaskedAdamWParams p;
  p.n = n;
  p.index = index.data();
  p.params = params.data();
  p.grad = grad.data();
  p.m = m.data();
  p.v = v.data();
  p.lr = 1e-2f;
  p.weight_decay = 0.1f;
  for (int64_t t = 1; t <= 20; ++t) {
    for (float& g : grad) g = dist(rng);
    p.step = t;
    ASSERT_TRUE(cpu::masked_adamw(p).ok());
    for (int64_t i = 0; i < n; ++i) ref[i].step(grad[i], t, 1e-2, 0.9, 0.999, 1e-8, 0.1);
  }
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(params[index[i]], ref[i].w, 1e-5 * (1 + std::fabs(ref[i].w))) << i;
  }
  size_t next = 0;
  for (int64_t e = 0; e < total; ++e) {
    if (next < index.size() && index[next] == e) {
      ++next;
      continue;
    }
    ASSERT_EQ(std::memcmp(&params[e], &initial[e], sizeof(float)), 0) << "frozen element " << e;
  }
}

TEST(MaskedAdamW, MasterCopyDrivesTheUpdate) {
  std::vector<float> params = {1.0f, 2.0f, 3.0f};
  std::vector<int64_t> index = {1};
  std::vector<float> master = {2.5f}, grad = {0.5f}, m = {0.0f}, v = {0.0f};
  MaskedAdamWParams p;
  p.n = 1;
  p.index = index.data();
  p.params = params.data();
  p.master = master.data();
  p.grad = grad.data();
  p.m = m.data();
  p.v = v.data();
  p.lr = 0.1f;
  ASSERT_TRUE(cpu::masked_adamw(p).ok());
  // First Adam step moves by lr * sign(g) (bias-corrected m/sqrt(v) = 1) from the master value.
  EXPECT_NEAR(master[0], 2.4f, 1e-6f);
  EXPECT_EQ(params[1], master[0]);
  EXPECT_EQ(params[0], 1.0f);
  EXPECT_EQ(params[2], 3.0f);
}

TEST(MaskedAdamW, RejectsBadArguments) {
  MaskedAdamWParams p;
  p.n = 2;
  EXPECT_FALSE(cpu::masked_adamw(p).ok());
  p.n = -1;
  EXPECT_FALSE(cpu::masked_sgd(p).ok());
}

TEST(MaskedSgd, SubtractsScaledGradient) {
  std::vector<float> params = {1.0f, 2.0f, 3.0f, 4.0f};
  std::vector<int64_t> index = {0, 3};
  std::vector<float> grad = {0.5f, -1.0f};
  MaskedAdamWParams p;
  p.n = 2;
  p.index = index.data();
  p.params = params.data();
  p.grad = grad.data();
  p.lr = 1.0f;
  p.grad_scale = 0.5f;
  ASSERT_TRUE(cpu::masked_sgd(p).ok());
  EXPECT_EQ(params, (std::vector<float>{0.75f, 2.0f, 3.0f, 4.5f}));
}

TEST(GradNorm, IsTheEuclideanNorm) {
  std::vector<float> g = {3.0f, 4.0f, 0.0f, 12.0f};
  EXPECT_DOUBLE_EQ(cpu::global_grad_norm(g.data(), 4), 13.0);
}

// Clipping and the non-finite check read the norm: it must be the same number with any thread
// count (fixed blocks summed in order), and the exact norm to double rounding.
TEST(GradNorm, DoesNotDependOnTheThreadCount) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> g(5 * (1 << 14) + 123);  // several blocks and a partial one
  for (float& x : g) x = dist(rng);
  const int threads = omp_get_max_threads();
  std::vector<double> norms;
  for (int t : {1, 2, 3}) {
    omp_set_num_threads(t);
    norms.push_back(cpu::global_grad_norm(g.data(), static_cast<int64_t>(g.size())));
  }
  omp_set_num_threads(threads);
  EXPECT_EQ(norms[0], norms[1]);
  EXPECT_EQ(norms[0], norms[2]);
  long double exact = 0.0L;
  for (float x : g) exact += static_cast<long double>(x) * x;
  EXPECT_NEAR(norms[0], std::sqrt(static_cast<double>(exact)), 1e-12 * norms[0]);
}

TEST(LrSchedule, WarmupThenCosineToZero) {
  LrSchedule s{1.0, 100, LrSchedule::default_warmup(100), ScheduleKind::kCosine};
  EXPECT_EQ(s.warmup, 25);
  EXPECT_DOUBLE_EQ(s.lr(1), 1.0 / 25);
  EXPECT_DOUBLE_EQ(s.lr(25), 1.0);
  EXPECT_NEAR(s.lr(25 + 75 / 2.0), 0.5, 0.03);
  EXPECT_NEAR(s.lr(100), 0.0, 1e-12);
  EXPECT_NEAR(s.lr(1000), 0.0, 1e-12);
  EXPECT_EQ(LrSchedule::default_warmup(10000), 100);
  LrSchedule c{2.0, 50, 10, ScheduleKind::kConstant};
  EXPECT_DOUBLE_EQ(c.lr(5), 1.0);
  EXPECT_DOUBLE_EQ(c.lr(49), 2.0);
  EXPECT_EQ(s.lr(0), 0.0);
}

}  // namespace
}  // namespace engine
