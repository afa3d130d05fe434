// Tests of the CPU layernorm, gelu, embedding and classifier ops against independent naive
// double-precision references written here, and of their backward passes against central finite
// differences of those references.
// Tolerances (float kernel vs double reference):
//   layernorm/gelu forward: abs error <= 1e-5 * max(1, |ref|) (a few float ulps of O(1) values);
//   classifier logits, row losses and dhidden, and the classifier's chunkings and paths against
//   each other: rounding bounds derived per element (classifier_bounds, tests/error_bounds.h);
//   backward vs finite differences in double: abs error <= 1e-4 * max(1, |fd|) (float
//   accumulation over the reduced dimension; the step 1e-4 leaves ~1e-8 truncation error).
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "error_bounds.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"

namespace engine {
namespace {

constexpr double kFdStep = 1e-4;

std::vector<float> random_vector(size_t n, uint32_t seed, float stddev = 1.0f, float mean = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Central difference of f with respect to x[i]; x is restored afterwards.
double central_difference(const std::function<double(const std::vector<double>&)>& f,
                          std::vector<double>& x, size_t i) {
  const double saved = x[i];
  x[i] = saved + kFdStep;
  const double up = f(x);
  x[i] = saved - kFdStep;
  const double down = f(x);
  x[i] = saved;
  return (up - down) / (2 * kFdStep);
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// ---------------------------------------------------------------------------------- layernorm

std::vector<double> naive_layernorm(const std::vector<double>& x, const std::vector<double>& w,
                                    const std::vector<double>& b, int64_t rows, int64_t width,
                                    double eps) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < width; ++i) mean += x[r * width + i];
    mean /= width;
    for (int64_t i = 0; i < width; ++i) var += (x[r * width + i] - mean) * (x[r * width + i] - mean);
    var /= width;
    for (int64_t i = 0; i < width; ++i) {
      y[r * width + i] = (x[r * width + i] - mean) / std::sqrt(var + eps) * w[i] + b[i];
    }
  }
  return y;
}

TEST(LayerNorm, ForwardMatchesNaiveReference) {
  for (auto [rows, width] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {17, 64}, {5, 1024}}) {
    SCOPED_TRACE(width);
    // A large common offset checks that the variance is computed around the mean.
    const std::vector<float> x = random_vector(rows * width, 1, 2.0f, 30.0f);
    const std::vector<float> w = random_vector(width, 2);
    const std::vector<float> b = random_vector(width, 3);
    std::vector<float> y(x.size()), mean(rows), rstd(rows);
    LayerNormParams p;
    p.rows = rows, p.width = width, p.eps = 1e-5f;
    p.x = x.data(), p.weight = w.data(), p.bias = b.data(), p.y = y.data();
    p.mean = mean.data(), p.rstd = rstd.data();
    ASSERT_TRUE(cpu::layernorm_forward(p).ok());
    const std::vector<double> ref =
        naive_layernorm(to_double(x), to_double(w), to_double(b), rows, width, 1e-5);
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_NEAR(y[i], ref[i], 1e-5 * std::max(1.0, std::abs(ref[i]))) << i;
    }
  }
}

TEST(LayerNorm, BackwardMatchesFiniteDifferences) {
  const int64_t rows = 4, width = 24;
  const std::vector<float> x = random_vector(rows * width, 4, 1.5f, 0.5f);
  const std::vector<float> w = random_vector(width, 5);
  const std::vector<float> b = random_vector(width, 6);
  const std::vector<float> dy = random_vector(rows * width, 7);
  for (bool saved_moments : {true, false}) {
    SCOPED_TRACE(saved_moments);
    std::vector<float> y(x.size()), mean(rows), rstd(rows);
    LayerNormParams p;
    p.rows = rows, p.width = width, p.eps = 1e-5f;
    p.x = x.data(), p.weight = w.data(), p.bias = b.data(), p.y = y.data();
    p.mean = mean.data(), p.rstd = rstd.data();
    ASSERT_TRUE(cpu::layernorm_forward(p).ok());
    if (!saved_moments) p.mean = p.rstd = nullptr;
    // dx starts at 1 and is accumulated; dweight/dbias start at 2 and are accumulated.
    std::vector<float> dx(x.size(), 1.0f), dw(width, 2.0f), db(width, 2.0f);
    p.dy = dy.data(), p.dx = dx.data(), p.accumulate_dx = true;
    p.dweight = dw.data(), p.dbias = db.data();
    ASSERT_TRUE(cpu::layernorm_backward(p).ok());

    std::vector<double> xd = to_double(x), wd = to_double(w), bd = to_double(b);
    auto loss = [&](const std::vector<double>&) {
      const std::vector<double> yy = naive_layernorm(xd, wd, bd, rows, width, 1e-5);
      double s = 0.0;
      for (size_t i = 0; i < yy.size(); ++i) s += yy[i] * dy[i];
      return s;
    };
    for (size_t i = 0; i < xd.size(); ++i) {
      const double fd = central_difference(loss, xd, i);
      ASSERT_NEAR(dx[i] - 1.0f, fd, 1e-4 * std::max(1.0, std::abs(fd))) << "dx " << i;
    }
    for (int64_t i = 0; i < width; ++i) {
      const double fdw = central_difference(loss, wd, i);
      const double fdb = central_difference(loss, bd, i);
      ASSERT_NEAR(dw[i] - 2.0f, fdw, 1e-4 * std::max(1.0, std::abs(fdw))) << "dweight " << i;
      ASSERT_NEAR(db[i] - 2.0f, fdb, 1e-4 * std::max(1.0, std::abs(fdb))) << "dbias " << i;
    }
  }
}

// --------------------------------------------------------------------------------------- gelu

double naive_gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(0.79788456 * x * (1.0 + 0.044715 * x * x)));
}

TEST(Gelu, ForwardAndBackwardMatchNaiveReference) {
  // Spans the saturated tails (|x| up to ~12) and the origin.
  std::vector<float> x = random_vector(4099, 8, 4.0f);
  x[0] = 0.0f, x[1] = -12.0f, x[2] = 12.0f, x[3] = 1e-6f;
  const std::vector<float> dy = random_vector(x.size(), 9);
  std::vector<float> y(x.size()), dx(x.size());
  GeluParams p;
  p.n = static_cast<int64_t>(x.size());
  p.x = x.data(), p.y = y.data(), p.dy = dy.data(), p.dx = dx.data();
  ASSERT_TRUE(cpu::gelu_forward(p).ok());
  ASSERT_TRUE(cpu::gelu_backward(p).ok());
  for (size_t i = 0; i < x.size(); ++i) {
    const double ref = naive_gelu(x[i]);
    ASSERT_NEAR(y[i], ref, 1e-5 * std::max(1.0, std::abs(ref))) << "x=" << x[i];
    const double fd = (naive_gelu(x[i] + kFdStep) - naive_gelu(x[i] - kFdStep)) / (2 * kFdStep);
    ASSERT_NEAR(dx[i], fd * dy[i], 1e-4 * std::max(1.0, std::abs(fd * dy[i]))) << "x=" << x[i];
  }
}

// ---------------------------------------------------------------------------------- embedding

TEST(Embedding, ForwardGathersAndBackwardScatterAdds) {
  const int64_t vocab = 11, width = 13, rows = 9;
  const std::vector<float> table = random_vector(vocab * width, 10);
  const std::vector<int32_t> ids = {3, 0, 10, 3, 3, 7, 0, 1, 10};  // repeated ids on purpose
  std::vector<float> out(rows * width);
  EmbeddingParams p;
  p.rows = rows, p.width = width, p.vocab = vocab;
  p.ids = ids.data(), p.table = table.data(), p.out = out.data();
  ASSERT_TRUE(cpu::embedding_forward(p).ok());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < width; ++i) ASSERT_EQ(out[r * width + i], table[ids[r] * width + i]);
  }
  const std::vector<float> dout = random_vector(rows * width, 11);
  std::vector<float> dtable(vocab * width, 0.5f);
  p.dout = dout.data(), p.dtable = dtable.data();
  ASSERT_TRUE(cpu::embedding_backward(p).ok());
  std::vector<double> ref(vocab * width, 0.5);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < width; ++i) ref[ids[r] * width + i] += dout[r * width + i];
  }
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(dtable[i], ref[i], 1e-6) << i;
}

TEST(Embedding, RejectsIdsOutsideTheVocabulary) {
  const std::vector<float> table(4 * 2, 0.0f);
  std::vector<float> out(2 * 2, 0.0f);
  for (int32_t bad : {-1, 4}) {
    const std::vector<int32_t> ids = {1, bad};
    EmbeddingParams p;
    p.rows = 2, p.width = 2, p.vocab = 4;
    p.ids = ids.data(), p.table = table.data(), p.out = out.data();
    const absl::Status s = cpu::embedding_forward(p);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(std::string(s.message()).find("row 1"), std::string::npos) << s;
  }
}

// --------------------------------------------------------------------------------- classifier

struct NaiveClassifier {
  std::vector<double> logits;  // (rows, V)
  std::vector<double> loss;    // (rows)
};

NaiveClassifier naive_classifier(const std::vector<double>& hidden, const std::vector<double>& emb,
                                 const std::vector<int32_t>& targets, int64_t rows, int64_t width,
                                 int64_t vocab) {
  NaiveClassifier r{std::vector<double>(rows * vocab, 0.0), std::vector<double>(rows, 0.0)};
  for (int64_t i = 0; i < rows; ++i) {
    double mx = -INFINITY;
    for (int64_t v = 0; v < vocab; ++v) {
      double z = 0.0;
      for (int64_t k = 0; k < width; ++k) z += hidden[i * width + k] * emb[v * width + k];
      r.logits[i * vocab + v] = z;
      mx = std::max(mx, z);
    }
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(r.logits[i * vocab + v] - mx);
    const double lse = mx + std::log(sum);
    r.loss[i] = targets[i] >= 0 ? lse - r.logits[i * vocab + targets[i]] : 0.0;
  }
  return r;
}

struct ClassifierRun {
  std::vector<float> logits, loss, dhidden, demb;
};

ClassifierRun run_classifier(const std::vector<float>& hidden, const std::vector<float>& emb,
                             const std::vector<int32_t>& targets, int64_t rows, int64_t width,
                             int64_t vocab, int64_t chunk, bool want_logits, bool want_grad,
                             float loss_scale) {
  ClassifierRun r;
  r.loss.assign(rows, -7.0f);
  ClassifierParams p;
  p.rows = rows, p.width = width, p.vocab = vocab, p.vocab_chunk = chunk;
  p.hidden = hidden.data(), p.embedding = emb.data(), p.targets = targets.data();
  p.row_loss = r.loss.data();
  p.loss_scale = loss_scale;
  if (want_logits) {
    r.logits.assign(rows * vocab, -7.0f);
    p.logits = r.logits.data();
  }
  if (want_grad) {
    r.dhidden.assign(rows * width, -7.0f);  // overwritten
    r.demb.assign(vocab * width, 0.25f);    // accumulated
    p.dhidden = r.dhidden.data();
    p.dembedding = r.demb.data();
  }
  const absl::Status s = cpu::classifier_cross_entropy(p);
  EXPECT_TRUE(s.ok()) << s;
  return r;
}

// Rounding bounds of the classifier's forward (docs/TOLERANCES.md, "Bounds from the
// computation"), per element, against the exact result of the same float inputs:
//   logit (r, v): a length-width dot product in float, any order: gamma_width * sum_k |h_k e_k|.
//   row loss: lse - z_t. Moving every logit by at most L (the row's largest logit bound) moves
//     lse and z_t by at most L each; the kernel's own log-sum-exp rounds z - m (relative u on
//     |z - m| <= the row's logit range R), exp_approx (kExpApproxUlps), a float sum of at most
//     `vocab` positive terms (gamma_vocab relative), then lse and the loss once each:
//       2 L + gamma_(R + kExpApproxUlps + vocab) + u (|lse| + |loss|).
// Two runs with different summation orders (chunkings, BLAS kernels) differ by at most the sum
// of their bounds, 2x. A wrong chunk boundary or a dropped vocabulary entry moves a logit by
// O(1) and a loss by that entry's probability (about 1e-3 here), far above these bounds.
struct ClassifierBounds {
  std::vector<double> logits, loss;
};

ClassifierBounds classifier_bounds(const std::vector<float>& hidden, const std::vector<float>& emb,
                                   const NaiveClassifier& ref, int64_t rows, int64_t width,
                                   int64_t vocab) {
  const double u = test::kFloatUnitRoundoff;
  ClassifierBounds b{std::vector<double>(rows * vocab), std::vector<double>(rows)};
  for (int64_t i = 0; i < rows; ++i) {
    double largest = 0.0, lo = INFINITY, hi = -INFINITY, sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) {
      double abs_dot = 0.0;
      for (int64_t k = 0; k < width; ++k) {
        abs_dot += std::abs(double(hidden[i * width + k]) * emb[v * width + k]);
      }
      b.logits[i * vocab + v] = test::float_gamma(width) * abs_dot;
      largest = std::max(largest, b.logits[i * vocab + v]);
      lo = std::min(lo, ref.logits[i * vocab + v]);
      hi = std::max(hi, ref.logits[i * vocab + v]);
    }
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(ref.logits[i * vocab + v] - hi);
    const double lse = hi + std::log(sum);
    const int64_t log_sum_exp_roundings =
        static_cast<int64_t>(std::ceil(hi - lo + test::kExpApproxUlps)) + vocab;
    b.loss[i] = 2.0 * largest + test::float_gamma(log_sum_exp_roundings) +
                u * (std::abs(lse) + std::abs(ref.loss[i]));
  }
  return b;
}

TEST(Classifier, MatchesNaiveReferenceInEveryChunking) {
  // 300 rows cross the 256-row block; vocab 997 is prime, so no chunk size divides it.
  const int64_t rows = 300, width = 32, vocab = 997;
  const std::vector<float> hidden = random_vector(rows * width, 12);
  const std::vector<float> emb = random_vector(vocab * width, 13, 0.3f);
  std::vector<int32_t> targets(rows);
  for (int64_t i = 0; i < rows; ++i) targets[i] = i % 5 == 4 ? -1 : static_cast<int32_t>((i * 37) % vocab);
  const NaiveClassifier ref =
      naive_classifier(to_double(hidden), to_double(emb), targets, rows, width, vocab);
  const ClassifierBounds bound = classifier_bounds(hidden, emb, ref, rows, width, vocab);
  const ClassifierRun whole =
      run_classifier(hidden, emb, targets, rows, width, vocab, vocab, true, false, 1.0f);
  for (int64_t chunk : {vocab, int64_t{7}, int64_t{64}, int64_t{500}, int64_t{100000}}) {
    SCOPED_TRACE(chunk);
    const ClassifierRun got =
        run_classifier(hidden, emb, targets, rows, width, vocab, chunk, true, false, 1.0f);
    const ClassifierRun no_logits =
        run_classifier(hidden, emb, targets, rows, width, vocab, chunk, false, false, 1.0f);
    for (size_t i = 0; i < ref.logits.size(); ++i) {
      ASSERT_NEAR(got.logits[i], ref.logits[i], bound.logits[i]) << i;
      // The same dot product whatever the chunking, but BLAS may use another micro-kernel
      // (summation order) at the edge of a narrower chunk.
      ASSERT_NEAR(got.logits[i], whole.logits[i], 2.0 * bound.logits[i]) << i;
    }
    for (int64_t i = 0; i < rows; ++i) {
      if (targets[i] < 0) {
        ASSERT_EQ(got.loss[i], 0.0f);
        continue;
      }
      ASSERT_NEAR(got.loss[i], ref.loss[i], bound.loss[i]) << "row " << i;
      ASSERT_NEAR(got.loss[i], whole.loss[i], 2.0 * bound.loss[i]) << "row " << i;
      // With or without a logits buffer the kernel runs the same operations on the same values.
      ASSERT_EQ(got.loss[i], no_logits.loss[i]) << "row " << i;
    }
  }
}

TEST(Classifier, GradientsMatchFiniteDifferences) {
  const int64_t rows = 5, width = 6, vocab = 37;
  const float loss_scale = 0.5f;
  const std::vector<float> hidden = random_vector(rows * width, 14);
  const std::vector<float> emb = random_vector(vocab * width, 15, 0.5f);
  const std::vector<int32_t> targets = {3, -1, 36, 0, 3};
  std::vector<double> hd = to_double(hidden), ed = to_double(emb);
  auto total = [&](const std::vector<double>&) {
    const NaiveClassifier r = naive_classifier(hd, ed, targets, rows, width, vocab);
    double s = 0.0;
    for (double l : r.loss) s += l;
    return loss_scale * s;
  };
  for (bool want_logits : {false, true}) {
    for (int64_t chunk : {int64_t{8}, vocab}) {
      SCOPED_TRACE(chunk);
      const ClassifierRun got = run_classifier(hidden, emb, targets, rows, width, vocab, chunk,
                                               want_logits, true, loss_scale);
      for (size_t i = 0; i < hd.size(); ++i) {
        const double fd = central_difference(total, hd, i);
        ASSERT_NEAR(got.dhidden[i], fd, 1e-4 * std::max(1.0, std::abs(fd))) << "dhidden " << i;
      }
      for (size_t i = 0; i < ed.size(); ++i) {
        const double fd = central_difference(total, ed, i);
        ASSERT_NEAR(got.demb[i] - 0.25f, fd, 1e-4 * std::max(1.0, std::abs(fd))) << "demb " << i;
      }
    }
  }
}

// dhidden alone (no logits buffer, no embedding gradient) takes the one-pass path that
// accumulates softmax . embedding with an online rescaling; it must agree with the two-pass path
// and with finite differences, also when the running maximum grows from chunk to chunk (the
// embedding rows grow with their index, so later chunks hold larger logits).
TEST(Classifier, OnePassHiddenGradientMatchesTwoPassAndFiniteDifferences) {
  const int64_t rows = 300, width = 16, vocab = 211;
  const float loss_scale = 0.25f;
  const std::vector<float> hidden = random_vector(rows * width, 16);
  std::vector<float> emb = random_vector(vocab * width, 17, 0.5f);
  for (int64_t v = 0; v < vocab; ++v) {
    for (int64_t k = 0; k < width; ++k) emb[v * width + k] *= 1.0f + 4.0f * v / vocab;
  }
  std::vector<int32_t> targets(rows);
  for (int64_t i = 0; i < rows; ++i) targets[i] = i % 7 == 3 ? -1 : static_cast<int32_t>((i * 13) % vocab);
  const ClassifierRun two_pass =
      run_classifier(hidden, emb, targets, rows, width, vocab, 32, false, true, loss_scale);
  // Bounds per element against the exact result of the same float inputs (see
  // classifier_bounds); the two paths differ by at most twice that. dhidden_r = loss_scale *
  // (sum_v p_v e_v - e_t): each p_v carries the logit bounds (z_v and lse, 2 L relative, L the
  // row's largest logit bound, taken twice for the normalising sum) and the log-sum-exp's
  // roundings (as for the loss, plus one rescale per chunk, at most `vocab`); the product with
  // the embedding is a float sum of `vocab` terms; scaling and subtracting e_t round 3 times:
  //   loss_scale * (4 L + gamma_(R + kExpApproxUlps + 3 vocab + 3)) * (sum_v p_v |e_v| + |e_t|).
  const NaiveClassifier ref =
      naive_classifier(to_double(hidden), to_double(emb), targets, rows, width, vocab);
  const ClassifierBounds bound = classifier_bounds(hidden, emb, ref, rows, width, vocab);
  std::vector<double> dhidden_bound(rows * width, 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    if (targets[i] < 0) continue;
    double largest = 0.0, lo = INFINITY, hi = -INFINITY, sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) {
      largest = std::max(largest, bound.logits[i * vocab + v]);
      lo = std::min(lo, ref.logits[i * vocab + v]);
      hi = std::max(hi, ref.logits[i * vocab + v]);
    }
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(ref.logits[i * vocab + v] - hi);
    const double rel = 4.0 * largest + test::float_gamma(static_cast<int64_t>(std::ceil(
                                           hi - lo + test::kExpApproxUlps)) + 3 * vocab + 3);
    for (int64_t k = 0; k < width; ++k) {
      double weighted = std::abs(emb[targets[i] * width + k]);
      for (int64_t v = 0; v < vocab; ++v) {
        weighted += std::exp(ref.logits[i * vocab + v] - hi) / sum * std::abs(emb[v * width + k]);
      }
      dhidden_bound[i * width + k] = loss_scale * rel * weighted;
    }
  }
  for (int64_t chunk : {int64_t{7}, int64_t{32}, vocab}) {
    SCOPED_TRACE(chunk);
    std::vector<float> loss(rows, -7.0f), dhidden(rows * width, -7.0f);
    ClassifierParams p;
    p.rows = rows, p.width = width, p.vocab = vocab, p.vocab_chunk = chunk;
    p.hidden = hidden.data(), p.embedding = emb.data(), p.targets = targets.data();
    p.row_loss = loss.data(), p.dhidden = dhidden.data(), p.loss_scale = loss_scale;
    ASSERT_TRUE(cpu::classifier_cross_entropy(p).ok());
    for (int64_t i = 0; i < rows; ++i) {
      ASSERT_NEAR(loss[i], two_pass.loss[i], 2.0 * bound.loss[i]) << "row " << i;
    }
    for (size_t i = 0; i < dhidden.size(); ++i) {
      if (targets[i / width] < 0) {
        ASSERT_EQ(dhidden[i], 0.0f) << "dhidden " << i << " of an unscored row";
        continue;
      }
      ASSERT_NEAR(dhidden[i], two_pass.dhidden[i], 2.0 * dhidden_bound[i]) << "dhidden " << i;
    }
  }
  // Finite differences on a few rows of the same problem (the full one is covered above).
  const int64_t fd_rows = 4;
  std::vector<int32_t> fd_targets(targets.begin(), targets.begin() + fd_rows);
  std::vector<double> hd = to_double(std::vector<float>(hidden.begin(), hidden.begin() + fd_rows * width));
  const std::vector<double> ed = to_double(emb);
  auto total = [&](const std::vector<double>&) {
    const NaiveClassifier r = naive_classifier(hd, ed, fd_targets, fd_rows, width, vocab);
    double sum = 0.0;
    for (double l : r.loss) sum += l;
    return loss_scale * sum;
  };
  std::vector<float> loss(fd_rows), dhidden(fd_rows * width);
  ClassifierParams p;
  p.rows = fd_rows, p.width = width, p.vocab = vocab, p.vocab_chunk = 32;
  p.hidden = hidden.data(), p.embedding = emb.data(), p.targets = fd_targets.data();
  p.row_loss = loss.data(), p.dhidden = dhidden.data(), p.loss_scale = loss_scale;
  ASSERT_TRUE(cpu::classifier_cross_entropy(p).ok());
  for (size_t i = 0; i < hd.size(); ++i) {
    const double fd = central_difference(total, hd, i);
    ASSERT_NEAR(dhidden[i], fd, 1e-4 * std::max(1.0, std::abs(fd))) << "dhidden " << i;
  }
}

TEST(Classifier, RejectsTargetsOutsideTheVocabulary) {
  const std::vector<float> hidden(2, 0.0f), emb(3 * 2, 0.0f);
  const std::vector<int32_t> targets = {3};
  std::vector<float> loss(1);
  ClassifierParams p;
  p.rows = 1, p.width = 2, p.vocab = 3;
  p.hidden = hidden.data(), p.embedding = emb.data(), p.targets = targets.data();
  p.row_loss = loss.data();
  EXPECT_FALSE(cpu::classifier_cross_entropy(p).ok());
}

}  // namespace
}  // namespace engine
