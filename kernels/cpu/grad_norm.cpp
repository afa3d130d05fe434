// global_grad_norm (adamw.h): sqrt(sum g^2) accumulated in double, in fixed blocks whose partial
// sums are added in order, so the result does not depend on the thread count. Memory-bound and
// returning no status, so it is built once, for the baseline, rather than per instruction set.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/adamw.h"

namespace engine::cpu {
namespace {

// Elements per partial sum: large enough to amortise the parallel loop, small enough to spread a
// surgical trainable set over the threads.
constexpr int64_t kNormBlock = 1 << 14;

}  // namespace

double global_grad_norm(const float* grad, int64_t n) {
  const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t end = std::min(n, (b + 1) * kNormBlock);
    double s = 0.0;
    for (int64_t i = b * kNormBlock; i < end; ++i) s += static_cast<double>(grad[i]) * grad[i];
    partial[static_cast<size_t>(b)] = s;
  }
  double sum = 0.0;
  for (double p : partial) sum += p;
  return std::sqrt(sum);
}

}  // namespace engine::cpu
