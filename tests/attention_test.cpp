// Tests of the CPU fused ALiBi attention (kernels/cpu/attention.cpp) against an independent naive
// double-precision reference that materialises the full (T, T) probability matrix.
// Tolerances (float kernel vs double reference, inputs ~N(0, 1), |scores| up to ~100 from ALiBi):
//   outputs and lse: abs error <= 5e-5 * max(1, |ref|), since a float score of magnitude ~100
//     carries ~1e-5 absolute rounding that moves each probability by that relative amount;
//   statistics (means over rows): abs error <= 1e-5;
//   backward vs central finite differences of the double reference: abs error <= 2e-4 * max(1, |fd|).
// Falcon's rounded bias (AlibiAttentionParams::bf16_bias_divisor) is checked with the same bounds
// against a reference that rounds the product to bfloat16 independently (round_to_bf16 below);
// its bias is at most ~75 there, so the kernel's fp32 division adds < 1e-5 to a score, inside them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"

namespace engine {
namespace {

enum class Padding { kNone, kLeft, kRight };

struct Case {
  int64_t batch, seq, heads, head_dim;
  Padding padding;
};

// BLOOM's slopes (METHOD.md section 1), written out independently of the model code.
std::vector<float> slopes_for(int64_t n) {
  int64_t p = 1;
  while (p * 2 <= n) p *= 2;
  std::vector<float> s;
  for (int64_t k = 1; k <= p; ++k) s.push_back(static_cast<float>(std::pow(2.0, -8.0 * k / p)));
  for (int64_t j = 1; j <= n - p; ++j) {
    s.push_back(static_cast<float>(std::pow(2.0, -4.0 * (2 * j - 1) / p)));
  }
  return s;
}

struct Inputs {
  Case c;
  std::vector<float> qkv;      // (B, T, H, 3, D)
  std::vector<uint8_t> mask;   // (B, T)
  std::vector<float> slopes;   // (H)
  float bias_divisor = 0.0f;   // AlibiAttentionParams::bf16_bias_divisor
};

// x rounded to 8 significant bits, ties to even (bfloat16 for normal finite x), in double.
double round_to_bf16(double x) {
  if (x == 0.0) return x;
  int e = 0;
  std::frexp(x, &e);  // |x| in [2^(e-1), 2^e)
  return std::ldexp(std::nearbyint(std::ldexp(x, 8 - e)), e - 8);
}

// The bias of a key at `pos`: slope * pos, or Falcon's bf16(slope * bf16(pos)) / divisor (torch
// multiplies bfloat16 slopes by integer positions in bfloat16: the position is rounded too).
double key_bias(float slope, int64_t pos, float divisor) {
  if (divisor == 0.0f) return static_cast<double>(slope) * static_cast<double>(pos);
  return round_to_bf16(static_cast<double>(slope) * round_to_bf16(static_cast<double>(pos))) /
         divisor;
}

Inputs make_inputs(const Case& c, uint32_t seed) {
  Inputs in{c, {}, {}, slopes_for(c.heads)};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  in.qkv.resize(c.batch * c.seq * c.heads * 3 * c.head_dim);
  for (float& x : in.qkv) x = normal(rng);
  in.mask.assign(c.batch * c.seq, 1);
  for (int64_t b = 0; b < c.batch; ++b) {
    // Batch row b gets b * 3 padding tokens (capped so at least one real token remains), so rows
    // differ and row 0 is unpadded.
    const int64_t pad = std::min<int64_t>(b * 3, c.seq - 1);
    for (int64_t k = 0; k < pad; ++k) {
      if (c.padding == Padding::kLeft) in.mask[b * c.seq + k] = 0;
      if (c.padding == Padding::kRight) in.mask[b * c.seq + c.seq - 1 - k] = 0;
    }
  }
  return in;
}

struct Reference {
  std::vector<double> out;  // (B, T, H * D)
  std::vector<double> lse;  // (B, H, T)
  std::vector<double> bos, entropy, local;  // (B, H) means over real rows
};

// Naive attention in double: full probability rows, transformers' semantics including uniform
// attention over all T keys for a query with no real key at or before it.
Reference naive_attention(const Case& c, const std::vector<double>& qkv,
                          const std::vector<uint8_t>& mask, const std::vector<float>& slopes,
                          float bias_divisor = 0.0f) {
  const int64_t B = c.batch, T = c.seq, H = c.heads, D = c.head_dim;
  Reference ref;
  ref.out.assign(B * T * H * D, 0.0);
  ref.lse.assign(B * H * T, 0.0);
  ref.bos.assign(B * H, 0.0);
  ref.entropy.assign(B * H, 0.0);
  ref.local.assign(B * H, 0.0);
  auto at = [&](int64_t b, int64_t t, int64_t h, int64_t part, int64_t d) {
    return qkv[(((b * T + t) * H + h) * 3 + part) * D + d];
  };
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> pos(T);
    int64_t count = 0, first = -1, real_rows = 0;
    for (int64_t t = 0; t < T; ++t) {
      const bool real = mask[b * T + t] != 0;
      if (real && first < 0) first = t;
      count += real;
      pos[t] = real ? count - 1 : 0;
      real_rows += real;
    }
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> prob(T, 0.0), s(T, 0.0);
        double mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          if (!mask[b * T + j]) continue;
          double dotp = 0.0;
          for (int64_t d = 0; d < D; ++d) dotp += at(b, i, h, 0, d) * at(b, j, h, 1, d);
          s[j] = dotp * scale + key_bias(slopes[h], pos[j], bias_divisor);
          mx = std::max(mx, s[j]);
        }
        double lse;
        if (mx == -INFINITY) {
          for (int64_t j = 0; j < T; ++j) prob[j] = 1.0 / T;
          lse = std::log(static_cast<double>(T));
        } else {
          double sum = 0.0;
          for (int64_t j = 0; j <= i; ++j) {
            if (mask[b * T + j]) sum += std::exp(s[j] - mx);
          }
          lse = mx + std::log(sum);
          for (int64_t j = 0; j <= i; ++j) {
            if (mask[b * T + j]) prob[j] = std::exp(s[j] - lse);
          }
        }
        ref.lse[(b * H + h) * T + i] = lse;
        for (int64_t j = 0; j < T; ++j) {
          for (int64_t d = 0; d < D; ++d) {
            ref.out[((b * T + i) * H + h) * D + d] += prob[j] * at(b, j, h, 2, d);
          }
        }
        if (!mask[b * T + i]) continue;
        ref.bos[b * H + h] += prob[first] / real_rows;
        double ent = 0.0, loc = 0.0;
        for (int64_t j = 0; j <= i; ++j) {
          if (prob[j] > 0.0) ent -= prob[j] * std::log(prob[j]);
          if (mask[b * T + j] && pos[j] >= pos[i] - 2) loc += prob[j];
        }
        ref.entropy[b * H + h] += ent / real_rows;
        ref.local[b * H + h] += loc / real_rows;
      }
    }
  }
  return ref;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

struct KernelResult {
  std::vector<float> out, lse;
  std::vector<double> bos, entropy, local;
  std::vector<int64_t> rows;
};

KernelResult run_kernel(const Inputs& in, bool stats, int64_t query_begin = 0) {
  const Case& c = in.c;
  KernelResult r;
  r.out.assign(c.batch * (c.seq - query_begin) * c.heads * c.head_dim, -7.0f);
  r.lse.assign(c.batch * c.heads * c.seq, -7.0f);
  r.bos.assign(c.batch * c.heads, 0.0);
  r.entropy = r.bos;
  r.local = r.bos;
  r.rows.assign(c.batch, 0);
  AlibiAttentionParams p;
  p.batch = c.batch, p.seq = c.seq, p.heads = c.heads, p.head_dim = c.head_dim;
  p.query_begin = query_begin;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  p.qkv = in.qkv.data();
  p.slopes = in.slopes.data();
  p.bf16_bias_divisor = in.bias_divisor;
  p.mask = in.mask.data();
  p.out = r.out.data();
  p.lse = r.lse.data();
  if (stats) {
    p.stats.bos_mass_sum = r.bos.data();
    p.stats.entropy_sum = r.entropy.data();
    p.stats.local_mass_sum = r.local.data();
    p.stats.rows = r.rows.data();
  }
  absl::Status s = cpu::alibi_attention_forward(p);
  EXPECT_TRUE(s.ok()) << s;
  return r;
}

std::string describe(const Case& c) {
  const char* pad[] = {"none", "left", "right"};
  return "B=" + std::to_string(c.batch) + " T=" + std::to_string(c.seq) +
         " H=" + std::to_string(c.heads) + " D=" + std::to_string(c.head_dim) +
         " pad=" + pad[static_cast<int>(c.padding)];
}

std::vector<Case> sweep() {
  std::vector<Case> cases;
  const int64_t dims[] = {8, 16, 64, 80, 96, 128};
  const int64_t seqs[] = {1, 2, 3, 17, 64, 65, 200};
  int k = 0;
  for (int64_t d : dims) {
    for (int64_t t : seqs) {
      for (Padding pad : {Padding::kNone, Padding::kLeft, Padding::kRight}) {
        const int64_t heads = 1 + (k++ % 6);
        cases.push_back({2, t, heads, d, pad});
      }
    }
  }
  return cases;
}

TEST(AlibiAttentionForward, MatchesNaiveReferenceWithStatistics) {
  uint32_t seed = 1;
  for (const Case& c : sweep()) {
    SCOPED_TRACE(describe(c));
    const Inputs in = make_inputs(c, seed++);
    const Reference ref = naive_attention(c, to_double(in.qkv), in.mask, in.slopes);
    const KernelResult got = run_kernel(in, /*stats=*/true);
    for (size_t i = 0; i < ref.out.size(); ++i) {
      ASSERT_NEAR(got.out[i], ref.out[i], 5e-5 * std::max(1.0, std::abs(ref.out[i]))) << "out " << i;
    }
    for (size_t i = 0; i < ref.lse.size(); ++i) {
      ASSERT_NEAR(got.lse[i], ref.lse[i], 5e-5 * std::max(1.0, std::abs(ref.lse[i]))) << "lse " << i;
    }
    for (int64_t b = 0; b < c.batch; ++b) {
      int64_t real = 0;
      for (int64_t t = 0; t < c.seq; ++t) real += in.mask[b * c.seq + t];
      ASSERT_EQ(got.rows[b], real);
      for (int64_t h = 0; h < c.heads; ++h) {
        const int64_t bh = b * c.heads + h;
        EXPECT_NEAR(got.bos[bh] / real, ref.bos[bh], 1e-5) << "bos b=" << b << " h=" << h;
        EXPECT_NEAR(got.entropy[bh] / real, ref.entropy[bh], 1e-5) << "entropy b=" << b << " h=" << h;
        EXPECT_NEAR(got.local[bh] / real, ref.local[bh], 1e-5) << "local b=" << b << " h=" << h;
      }
    }
  }
}

TEST(AlibiAttentionForward, PaddingBetweenRealTokens) {
  // Holes in the mask: local_mass then reaches real keys more than two tokens back (their
  // positions do not advance over the padding), and key tiles cross the holes.
  Case c{2, 150, 3, 16, Padding::kNone};
  Inputs in = make_inputs(c, 21);
  for (int64_t t : {5, 6, 7, 70, 127, 128, 129, 140}) in.mask[t] = 0;
  for (int64_t t = 60; t < 100; t += 2) in.mask[c.seq + t] = 0;
  const Reference ref = naive_attention(c, to_double(in.qkv), in.mask, in.slopes);
  const KernelResult got = run_kernel(in, true);
  for (size_t i = 0; i < ref.out.size(); ++i) {
    ASSERT_NEAR(got.out[i], ref.out[i], 5e-5 * std::max(1.0, std::abs(ref.out[i]))) << "out " << i;
  }
  for (int64_t b = 0; b < c.batch; ++b) {
    int64_t real = 0;
    for (int64_t t = 0; t < c.seq; ++t) real += in.mask[b * c.seq + t];
    for (int64_t h = 0; h < c.heads; ++h) {
      const int64_t bh = b * c.heads + h;
      EXPECT_NEAR(got.bos[bh] / real, ref.bos[bh], 1e-5) << "bos b=" << b << " h=" << h;
      EXPECT_NEAR(got.entropy[bh] / real, ref.entropy[bh], 1e-5) << "entropy b=" << b << " h=" << h;
      EXPECT_NEAR(got.local[bh] / real, ref.local[bh], 1e-5) << "local b=" << b << " h=" << h;
    }
  }
}

TEST(AlibiAttentionForward, StatisticsDoNotChangeOutputs) {
  for (const Case& c : {Case{2, 65, 3, 64, Padding::kLeft}, Case{3, 130, 2, 80, Padding::kRight}}) {
    SCOPED_TRACE(describe(c));
    const Inputs in = make_inputs(c, 99);
    const KernelResult off = run_kernel(in, false);
    const KernelResult on = run_kernel(in, true);
    ASSERT_EQ(0, std::memcmp(off.out.data(), on.out.data(), off.out.size() * sizeof(float)));
    ASSERT_EQ(0, std::memcmp(off.lse.data(), on.lse.data(), off.lse.size() * sizeof(float)));
  }
}

TEST(AlibiAttentionForward, SharpAttentionKeepsEntropyAccurate) {
  // Large scores (|q|, |k| ~ 6) make rows nearly one-hot: entropy is then a small difference of
  // large numbers unless the running sum of p * s is kept relative to the running max.
  Case c{1, 150, 4, 16, Padding::kNone};
  Inputs in = make_inputs(c, 5);
  for (float& x : in.qkv) x *= 6.0f;
  const Reference ref = naive_attention(c, to_double(in.qkv), in.mask, in.slopes);
  const KernelResult got = run_kernel(in, true);
  for (int64_t h = 0; h < c.heads; ++h) {
    EXPECT_NEAR(got.entropy[h] / c.seq, ref.entropy[h], 1e-5) << "h=" << h;
    EXPECT_NEAR(got.bos[h] / c.seq, ref.bos[h], 1e-5) << "h=" << h;
    EXPECT_NEAR(got.local[h] / c.seq, ref.local[h], 1e-5) << "h=" << h;
  }
}

TEST(AlibiAttentionForward, QueryBeginComputesTheTailRowsOnly) {
  Case c{2, 90, 3, 16, Padding::kRight};
  const Inputs in = make_inputs(c, 11);
  const KernelResult full = run_kernel(in, false);
  for (int64_t begin : {0, 1, 63, 64, 89}) {
    SCOPED_TRACE(begin);
    const KernelResult tail = run_kernel(in, false, begin);
    const int64_t width = c.heads * c.head_dim;
    for (int64_t b = 0; b < c.batch; ++b) {
      for (int64_t t = begin; t < c.seq; ++t) {
        for (int64_t x = 0; x < width; ++x) {
          ASSERT_EQ(tail.out[(b * (c.seq - begin) + t - begin) * width + x],
                    full.out[(b * c.seq + t) * width + x]);
        }
      }
    }
  }
}

// Falcon's inputs: 12 heads (four slopes not powers of two), slopes rounded to bfloat16 as
// transformers' build_alibi_tensor does, divisor sqrt(D).
Inputs falcon_inputs(const Case& c, uint32_t seed) {
  Inputs in = make_inputs(c, seed);
  for (float& s : in.slopes) s = static_cast<float>(round_to_bf16(s));
  in.bias_divisor = std::sqrt(static_cast<float>(c.head_dim));
  return in;
}

// Past 256 positions (where even power-of-two slopes' products round) with padding on both
// sides; the reference without the rounding is far outside the bound, so the check tells them
// apart.
TEST(AlibiAttentionForward, RoundedFalconBiasMatchesNaiveReference) {
  for (const Case& c : {Case{2, 300, 12, 8, Padding::kLeft}, Case{2, 270, 12, 16, Padding::kRight}}) {
    SCOPED_TRACE(describe(c));
    const Inputs in = falcon_inputs(c, 7);
    const Reference ref = naive_attention(c, to_double(in.qkv), in.mask, in.slopes, in.bias_divisor);
    std::vector<float> scaled(in.slopes);
    for (float& s : scaled) s /= in.bias_divisor;
    const Reference unrounded = naive_attention(c, to_double(in.qkv), in.mask, scaled);
    const KernelResult got = run_kernel(in, /*stats=*/true);
    double apart = 0.0;
    for (size_t i = 0; i < ref.out.size(); ++i) {
      ASSERT_NEAR(got.out[i], ref.out[i], 5e-5 * std::max(1.0, std::abs(ref.out[i]))) << "out " << i;
      apart = std::max(apart, std::abs(unrounded.out[i] - ref.out[i]));
    }
    EXPECT_GT(apart, 100 * 5e-5) << "the rounding does not matter in this case";
    for (size_t i = 0; i < ref.lse.size(); ++i) {
      ASSERT_NEAR(got.lse[i], ref.lse[i], 5e-5 * std::max(1.0, std::abs(ref.lse[i]))) << "lse " << i;
    }
    for (int64_t b = 0; b < c.batch; ++b) {
      const int64_t real = got.rows[b];
      for (int64_t h = 0; h < c.heads; ++h) {
        const int64_t bh = b * c.heads + h;
        EXPECT_NEAR(got.bos[bh] / real, ref.bos[bh], 1e-5) << "bos b=" << b << " h=" << h;
        EXPECT_NEAR(got.entropy[bh] / real, ref.entropy[bh], 1e-5) << "entropy b=" << b << " h=" << h;
        EXPECT_NEAR(got.local[bh] / real, ref.local[bh], 1e-5) << "local b=" << b << " h=" << h;
      }
    }
  }
}

TEST(AlibiAttentionForward, RejectsABadBiasDivisor) {
  const Case c{1, 4, 1, 8, Padding::kNone};
  Inputs in = make_inputs(c, 3);
  for (float bad : {-1.0f, std::numeric_limits<float>::infinity(), std::nanf("")}) {
    std::vector<float> out(c.seq * c.head_dim), lse(c.seq);
    AlibiAttentionParams p;
    p.batch = c.batch, p.seq = c.seq, p.heads = c.heads, p.head_dim = c.head_dim;
    p.scale = 1.0f, p.qkv = in.qkv.data(), p.slopes = in.slopes.data();
    p.out = out.data(), p.lse = lse.data();
    p.bf16_bias_divisor = bad;
    const absl::Status s = cpu::alibi_attention_forward(p);
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_NE(std::string(s.message()).find("bf16_bias_divisor"), std::string::npos) << s;
  }
}

TEST(AlibiAttentionForward, RejectsBadShapes) {
  AlibiAttentionParams p;
  p.batch = 1, p.seq = 4, p.heads = 0, p.head_dim = 8;
  EXPECT_FALSE(cpu::alibi_attention_forward(p).ok());
  p.heads = 1;
  p.query_begin = 5;
  EXPECT_FALSE(cpu::alibi_attention_forward(p).ok());
}

// The params struct carries a storage type for every device; the CPU takes F32, BF16 and F16
// (the 16-bit twin: tests/storage_twin_test.cpp) and refuses an integer type by name, before
// touching memory.
TEST(AlibiAttentionForward, RefusesIntegerStorageByName) {
  std::vector<float> qkv(3 * 8), out(8), slopes(1, 0.5f), lse(1);
  AlibiAttentionParams p;
  p.batch = 1, p.seq = 1, p.heads = 1, p.head_dim = 8, p.scale = 0.35f;
  p.qkv = qkv.data(), p.out = out.data(), p.slopes = slopes.data(), p.lse = lse.data();
  ASSERT_TRUE(cpu::alibi_attention_forward(p).ok());
  p.storage = DType::kBF16;
  ASSERT_TRUE(cpu::alibi_attention_forward(p).ok());
  p.storage = DType::kU8;
  const absl::Status s = cpu::alibi_attention_forward(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("U8"), std::string::npos) << s;
  EXPECT_NE(std::string(s.message()).find("alibi_attention_forward"), std::string::npos) << s;
}

// sum_{b,t,h,d} w * out for the double reference: the scalar whose gradient the backward computes
// when dout = w.
double weighted_output(const Case& c, const std::vector<double>& qkv,
                       const std::vector<uint8_t>& mask, const std::vector<float>& slopes,
                       const std::vector<float>& w, float bias_divisor = 0.0f) {
  const Reference ref = naive_attention(c, qkv, mask, slopes, bias_divisor);
  double sum = 0.0;
  for (size_t i = 0; i < w.size(); ++i) sum += w[i] * ref.out[i];
  return sum;
}

// Runs the CPU backward with output gradient `dout` (and the sink-loss weights, when not null)
// and checks dqkv against central finite differences of `objective` (a function of the inputs
// in double) at up to 300 random elements; *largest gets the largest |finite difference| seen.
// Finite differences are exact to ~1e-9 at this step in double; checking every element of the
// larger cases would be slow, so those check a fixed random subset.
void expect_backward_matches_fd(const Case& c, const Inputs& in, const std::vector<float>& dout,
                                const float* sink_weight, std::mt19937& rng,
                                const std::function<double(const std::vector<double>&)>& objective,
                                double* largest) {
  constexpr double kStep = 1e-4;
  constexpr size_t kMaxChecked = 300;
  KernelResult fwd = run_kernel(in, false);
  std::vector<float> dqkv(in.qkv.size(), -7.0f);
  AlibiAttentionParams p;
  p.batch = c.batch, p.seq = c.seq, p.heads = c.heads, p.head_dim = c.head_dim;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  p.qkv = in.qkv.data();
  p.slopes = in.slopes.data();
  p.bf16_bias_divisor = in.bias_divisor;
  p.mask = in.mask.data();
  p.out = fwd.out.data();
  p.lse = fwd.lse.data();
  p.dout = dout.data();
  p.dqkv = dqkv.data();
  p.sink_loss_weight = sink_weight;
  ASSERT_TRUE(cpu::alibi_attention_backward(p).ok());

  std::vector<size_t> idx(in.qkv.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::shuffle(idx.begin(), idx.end(), rng);
  if (idx.size() > kMaxChecked) idx.resize(kMaxChecked);
  std::vector<double> x = to_double(in.qkv);
  *largest = 0.0;
  for (size_t i : idx) {
    const double saved = x[i];
    x[i] = saved + kStep;
    const double up = objective(x);
    x[i] = saved - kStep;
    const double down = objective(x);
    x[i] = saved;
    const double fd = (up - down) / (2 * kStep);
    *largest = std::max(*largest, std::abs(fd));
    ASSERT_NEAR(dqkv[i], fd, 2e-4 * std::max(1.0, std::abs(fd))) << "element " << i;
  }
}

TEST(AlibiAttentionBackward, MatchesFiniteDifferencesOfNaiveReference) {
  const Case cases[] = {
      {1, 1, 1, 8, Padding::kNone},   {2, 3, 2, 8, Padding::kLeft},
      {2, 17, 3, 16, Padding::kRight}, {2, 17, 2, 8, Padding::kLeft},
      {1, 70, 2, 16, Padding::kNone},  {2, 65, 1, 64, Padding::kLeft},
  };
  uint32_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(describe(c));
    const Inputs in = make_inputs(c, seed++);
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> dout(c.batch * c.seq * c.heads * c.head_dim);
    for (float& x : dout) x = normal(rng);
    double largest = 0.0;
    expect_backward_matches_fd(
        c, in, dout, nullptr, rng,
        [&](const std::vector<double>& x) { return weighted_output(c, x, in.mask, in.slopes, dout); },
        &largest);
    if (HasFatalFailure()) return;
  }
}

// The backward with Falcon's rounded bias against finite differences of the rounded reference
// (the rounding is constant in q, k and v, so the derivative sees it only through the scores).
TEST(AlibiAttentionBackward, RoundedFalconBiasMatchesFiniteDifferences) {
  for (const Case& c : {Case{2, 40, 12, 8, Padding::kLeft}, Case{1, 70, 12, 8, Padding::kNone}}) {
    SCOPED_TRACE(describe(c));
    const Inputs in = falcon_inputs(c, 31);
    std::mt19937 rng(32);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> dout(c.batch * c.seq * c.heads * c.head_dim);
    for (float& x : dout) x = normal(rng);
    double largest = 0.0;
    expect_backward_matches_fd(
        c, in, dout, nullptr, rng,
        [&](const std::vector<double>& x) {
          return weighted_output(c, x, in.mask, in.slopes, dout, in.bias_divisor);
        },
        &largest);
    if (HasFatalFailure()) return;
  }
}

// The auxiliary sink loss of controlled collapse in double, from full score rows:
// sum_h w_h * sum over real query rows t of -log A[t, first real key].
double sink_objective(const Case& c, const std::vector<double>& qkv,
                      const std::vector<uint8_t>& mask, const std::vector<float>& slopes,
                      const std::vector<float>& weight) {
  const int64_t B = c.batch, T = c.seq, H = c.heads, D = c.head_dim;
  auto at = [&](int64_t b, int64_t t, int64_t h, int64_t part, int64_t d) {
    return qkv[(((b * T + t) * H + h) * 3 + part) * D + d];
  };
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  double total = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> pos(T);
    int64_t count = 0, first = -1;
    for (int64_t t = 0; t < T; ++t) {
      const bool real = mask[b * T + t] != 0;
      if (real && first < 0) first = t;
      count += real;
      pos[t] = real ? count - 1 : 0;
    }
    if (first < 0) continue;
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = first; i < T; ++i) {
        if (!mask[b * T + i]) continue;
        std::vector<double> s;
        double s_first = 0.0;
        for (int64_t j = 0; j <= i; ++j) {
          if (!mask[b * T + j]) continue;
          double dotp = 0.0;
          for (int64_t d = 0; d < D; ++d) dotp += at(b, i, h, 0, d) * at(b, j, h, 1, d);
          s.push_back(dotp * scale + static_cast<double>(slopes[h]) * pos[j]);
          if (j == first) s_first = s.back();
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double sum = 0.0;
        for (double v : s) sum += std::exp(v - mx);
        total += weight[h] * (mx + std::log(sum) - s_first);
      }
    }
  }
  return total;
}

// The sink loss's value (cpu::attention_sink_sums: per head, the sum over real query rows of
// lse - scale q_t . k_first, on the kernel's fp32 lse) against sink_objective's full score rows in
// double, one head at a time, with left padding that moves the first real key per sequence. The
// op's own arithmetic is double; the difference is the kernel lse's error, at most
// 5e-5 max(1, |lse|) per row (the bound above), summed over the rows.
TEST(AttentionSinkSums, MatchesNaiveSinkObjective) {
  const Case cases[] = {{3, 40, 2, 32, Padding::kLeft}, {2, 17, 3, 16, Padding::kNone}};
  for (const Case& c : cases) {
    SCOPED_TRACE(describe(c));
    const Inputs in = make_inputs(c, 61);
    const KernelResult k = run_kernel(in, false);
    AttentionSinkParams p;
    p.batch = c.batch, p.seq = c.seq, p.heads = c.heads, p.head_dim = c.head_dim;
    p.qkv = in.qkv.data(), p.lse = k.lse.data(), p.mask = in.mask.data();
    absl::StatusOr<std::vector<double>> sums = cpu::attention_sink_sums(p);
    ASSERT_TRUE(sums.ok()) << sums.status();
    ASSERT_EQ(sums->size(), static_cast<size_t>(c.heads));
    const std::vector<double> qkv = to_double(in.qkv);
    const Reference ref = naive_attention(c, qkv, in.mask, in.slopes);
    for (int64_t h = 0; h < c.heads; ++h) {
      std::vector<float> one_head(c.heads, 0.0f);
      one_head[h] = 1.0f;
      const double want = sink_objective(c, qkv, in.mask, in.slopes, one_head);
      double bound = 0.0;
      for (int64_t b = 0; b < c.batch; ++b) {
        for (int64_t t = 0; t < c.seq; ++t) {
          if (in.mask[b * c.seq + t] == 0) continue;
          bound += 5e-5 * std::max(1.0, std::abs(ref.lse[(b * c.heads + h) * c.seq + t]));
        }
      }
      EXPECT_LE(std::abs((*sums)[h] - want), bound) << "head " << h;
    }
  }
  AttentionSinkParams bad;
  bad.batch = 1, bad.seq = 4, bad.heads = 2, bad.head_dim = 0;
  absl::StatusOr<std::vector<double>> refused = cpu::attention_sink_sums(bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("D=0"), std::string::npos)
      << refused.status();
}

// The sink-loss term of the backward (AlibiAttentionParams::sink_loss_weight) against central
// finite differences of sum(dout * out) + sink_objective, with and without the dout term, and
// with a zero weight on one head (that head's gradient must be the plain backward's).
TEST(AlibiAttentionBackward, SinkLossMatchesFiniteDifferences) {
  const Case cases[] = {
      {1, 5, 2, 8, Padding::kNone},
      {2, 17, 3, 16, Padding::kLeft},
      {2, 70, 2, 16, Padding::kRight},
  };
  uint32_t seed = 500;
  for (const Case& c : cases) {
    for (bool with_dout : {false, true}) {
      SCOPED_TRACE(describe(c) + (with_dout ? " with dout" : " sink loss only"));
      const Inputs in = make_inputs(c, seed++);
      std::mt19937 rng(seed);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      std::vector<float> dout(c.batch * c.seq * c.heads * c.head_dim, 0.0f);
      if (with_dout) {
        for (float& x : dout) x = normal(rng);
      }
      std::vector<float> weight(c.heads);
      for (int64_t h = 0; h < c.heads; ++h) weight[h] = h == 0 ? 0.0f : 0.25f * h;

      double largest = 0.0;
      expect_backward_matches_fd(
          c, in, dout, weight.data(), rng,
          [&](const std::vector<double>& x) {
            return weighted_output(c, x, in.mask, in.slopes, dout) +
                   sink_objective(c, x, in.mask, in.slopes, weight);
          },
          &largest);
      if (HasFatalFailure()) return;
      // The sink loss alone has a gradient to check (the comparison above is not vacuous).
      EXPECT_GT(largest, 1e-2);
    }
  }
}

}  // namespace
}  // namespace engine
