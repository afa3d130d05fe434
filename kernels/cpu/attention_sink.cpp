// attention_sink_sums (engine/backend.h AttentionSinkParams): the reference. Per head, sequences
// in order, the real query rows in order, each row's q . k_first accumulated in double over d in
// order; the order of the loop that computed the sink loss's value in model/bloom_backward.cpp
// before it was an op, so the CPU's value keeps its bits. Memory-bound and tiny next to the
// attention itself: built once, not per instruction set.
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/ops.h"

namespace engine::cpu {

absl::StatusOr<std::vector<double>> attention_sink_sums(const AttentionSinkParams& p) {
  const int64_t B = p.batch, T = p.seq, H = p.heads, D = p.head_dim;
  if (B < 0 || T < 0 || H < 0 || D <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("attention_sink_sums: shape B=", B, " T=", T,
                                                   " H=", H, " D=", D));
  }
  std::vector<double> sums(static_cast<size_t>(H), 0.0);
  if (B * T * H == 0) return sums;
  if (p.qkv == nullptr || p.lse == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("attention_sink_sums: null ",
                                                   p.qkv == nullptr ? "qkv" : "lse"));
  }
  const int64_t token_stride = 3 * H * D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t h = 0; h < H; ++h) {
    double sum = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const uint8_t* mask = p.mask == nullptr ? nullptr : p.mask + b * T;
      int64_t first = 0;
      while (first < T && mask != nullptr && mask[first] == 0) ++first;
      if (first == T) continue;
      const float* base = p.qkv + b * T * token_stride + h * 3 * D;
      const float* k_first = base + first * token_stride + D;
      for (int64_t t = first; t < T; ++t) {
        if (mask != nullptr && mask[t] == 0) continue;
        const float* q = base + t * token_stride;
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * k_first[d];
        sum += static_cast<double>(p.lse[(b * H + h) * T + t]) - dot * scale;
      }
    }
    sums[static_cast<size_t>(h)] = sum;
  }
  return sums;
}

}  // namespace engine::cpu
