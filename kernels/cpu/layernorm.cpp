// LayerNorm over the last dimension, forward and backward (fp32 storage, double statistics; the
// 16-bit storage twin widens around these kernels: kernels/cpu/storage.h).
// Contract: forward writes y (rows, width) and, when given, mean and rstd (rows); backward takes
// x, weight, dy (and mean/rstd, recomputed from x when null), writes or accumulates dx, and
// accumulates dweight/dbias. Any gradient pointer may be null when nobody needs it.
#include <cmath>
#include <vector>

#include <omp.h>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/isa_kernels.h"
#include "kernels/cpu/isa_region.h"

ENGINE_CPU_KERNELS_BEGIN
namespace {

struct RowMoments {
  float mean;
  float rstd;
};

// Two passes in double: the mean first, then the centred second moment, so large offsets in x do
// not cancel (a one-pass E[x^2] - E[x]^2 loses the variance when |mean| >> std).
RowMoments row_moments(const float* x, int64_t width, float eps) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < width; ++i) sum += x[i];
  const double mean = sum / static_cast<double>(width);
  double sq = 0.0;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < width; ++i) {
    const double c = x[i] - mean;
    sq += c * c;
  }
  const double var = sq / static_cast<double>(width);
  return {static_cast<float>(mean), static_cast<float>(1.0 / std::sqrt(var + eps))};
}

absl::Status check(const LayerNormParams& p, const char* op) {
  if (p.rows < 0 || p.width <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": bad shape rows=", p.rows, " width=", p.width));
  }
  if (p.x == nullptr || p.weight == nullptr || p.bias == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": x, weight and bias are required"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status layernorm_forward(const LayerNormParams& p) {
  if (absl::Status s = check(p, "layernorm_forward"); !s.ok()) return s;
  if (p.y == nullptr) return absl::InvalidArgumentError("layernorm_forward: y is required");
  const int64_t w = p.width;
  const float* weight = static_cast<const float*>(p.weight);
  const float* bias = static_cast<const float*>(p.bias);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = static_cast<const float*>(p.x) + r * w;
    float* y = static_cast<float*>(p.y) + r * w;
    const RowMoments m = row_moments(x, w, p.eps);
    for (int64_t i = 0; i < w; ++i) y[i] = (x[i] - m.mean) * m.rstd * weight[i] + bias[i];
    if (p.mean != nullptr) p.mean[r] = m.mean;
    if (p.rstd != nullptr) p.rstd[r] = m.rstd;
  }
  return absl::OkStatus();
}

absl::Status layernorm_backward(const LayerNormParams& p) {
  if (absl::Status s = check(p, "layernorm_backward"); !s.ok()) return s;
  if (p.dy == nullptr) return absl::InvalidArgumentError("layernorm_backward: dy is required");
  const int64_t w = p.width;
  const float* weight = static_cast<const float*>(p.weight);
  const bool want_params = p.dweight != nullptr || p.dbias != nullptr;
  const int threads = omp_get_max_threads();
  // Per-thread partial sums for dweight/dbias, reduced after the parallel loop, so the result does
  // not depend on races and each thread writes only its own buffer.
  std::vector<float> partial(want_params ? static_cast<size_t>(threads) * 2 * w : 0, 0.0f);
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
    float* dw_part = want_params ? partial.data() + static_cast<size_t>(tid) * 2 * w : nullptr;
    float* db_part = want_params ? dw_part + w : nullptr;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < p.rows; ++r) {
      const float* x = static_cast<const float*>(p.x) + r * w;
      const float* dy = static_cast<const float*>(p.dy) + r * w;
      RowMoments m;
      if (p.mean != nullptr && p.rstd != nullptr) {
        m = {p.mean[r], p.rstd[r]};
      } else {
        m = row_moments(x, w, p.eps);
      }
      if (want_params) {
        for (int64_t i = 0; i < w; ++i) {
          const float xhat = (x[i] - m.mean) * m.rstd;
          dw_part[i] += dy[i] * xhat;
          db_part[i] += dy[i];
        }
      }
      if (p.dx == nullptr) continue;
      // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight.
      double sum_g = 0.0, sum_gx = 0.0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t i = 0; i < w; ++i) {
        const float g = dy[i] * weight[i];
        sum_g += g;
        sum_gx += g * ((x[i] - m.mean) * m.rstd);
      }
      const float mean_g = static_cast<float>(sum_g / static_cast<double>(w));
      const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(w));
      float* dx = static_cast<float*>(p.dx) + r * w;
      for (int64_t i = 0; i < w; ++i) {
        const float xhat = (x[i] - m.mean) * m.rstd;
        const float v = m.rstd * (dy[i] * weight[i] - mean_g - xhat * mean_gx);
        dx[i] = p.accumulate_dx ? dx[i] + v : v;
      }
    }
  }
  if (want_params) {
    for (int t = 0; t < threads; ++t) {
      const float* dw_part = partial.data() + static_cast<size_t>(t) * 2 * w;
      const float* db_part = dw_part + w;
      for (int64_t i = 0; i < w; ++i) {
        if (p.dweight != nullptr) p.dweight[i] += dw_part[i];
        if (p.dbias != nullptr) p.dbias[i] += db_part[i];
      }
    }
  }
  return absl::OkStatus();
}

ENGINE_CPU_KERNELS_END
