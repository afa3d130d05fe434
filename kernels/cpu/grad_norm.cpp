// global_grad_norm (adamw.h): sqrt(sum g^2) accumulated in double. Memory-bound and returning no
// status, so it is built once, for the baseline, rather than per instruction set.
#include <cmath>

#include "kernels/cpu/adamw.h"

namespace engine::cpu {

double global_grad_norm(const float* grad, int64_t n) {
  double sum = 0.0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(grad[i]) * grad[i];
  return std::sqrt(sum);
}

}  // namespace engine::cpu
