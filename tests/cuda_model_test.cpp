// The model on the CUDA backend against the CPU reference, end to end: sliding-window perplexity
// (eval), corpus statistics and classes (diagnose) and greedy decoding with a device KV cache
// (generate), on models the size the tensor-core kernels take (head_dim 64 and 80). Runs on a GPU
// or under the CUDA emulator (label gpu). Bounds: docs/TOLERANCES.md, "The model on the CUDA
// backend".
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/frozen_mask.h"
#include "include/engine/engine.h"
#include "model/bloom_backward.h"
#include "model/bloom_forward.h"
#include "model/bloom_init.h"
#include "model/device_model.h"
#include "model/perplexity.h"
#include "surgery/corpus_scan.h"
#include "surgery/diagnosis.h"

namespace engine {
namespace {

// End-to-end bounds (TOLERANCES.md): fp32 on both sides, differing in summation order (cuBLAS vs
// OpenBLAS, 32- vs 64-key attention tiles) and in exp (expf vs the CPU's exp_approx).
constexpr double kNllBound = 1e-5;     // per-token mean negative log-likelihood, absolute
constexpr double kLogitBound = 1e-4;   // per logit, absolute (logits here are O(1))
constexpr double kStatBound = 1e-5;    // per head mean statistic, absolute
// bf16 storage, device vs the CPU twin, and the twin vs fp32 (TOLERANCES.md, "bf16 storage"):
// in units of bf16's unit roundoff, scaled by the model's logit magnitude on the data.
constexpr double kBf16U = 1.0 / 256;  // 2^-8

struct Shape {
  const char* name;
  int64_t n_layer, n_head, head_dim;
};

class CudaModel : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override {
    const Shape& s = GetParam();
    BloomConfig c;
    c.vocab_size = 311;
    c.n_layer = s.n_layer;
    c.n_head = s.n_head;
    c.hidden_size = s.n_head * s.head_dim;
    absl::StatusOr<BloomModel> m = allocate_bloom_model(c);
    ASSERT_TRUE(m.ok()) << m.status();
    // A larger spread than BLOOM's initialisation, so attention rows are far from uniform and
    // the heads differ from one another.
    ASSERT_TRUE(init_bloom_weights(*m, 17, 0.08).ok());
    model_ = std::make_unique<BloomModel>(std::move(*m));
    cpu_ = make_cpu_backend();
    absl::StatusOr<std::unique_ptr<Backend>> cuda = make_backend("cuda");
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    cuda_ = *std::move(cuda);
    ASSERT_TRUE(make_resident(*model_, *cuda_).ok());
  }

  std::vector<std::vector<int32_t>> documents(int count, int64_t min_len, int64_t max_len,
                                              uint64_t seed) const {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(model_->config.vocab_size - 1));
    std::uniform_int_distribution<int64_t> len(min_len, max_len);
    std::vector<std::vector<int32_t>> docs(count);
    for (auto& d : docs) {
      d.resize(len(rng));
      for (int32_t& t : d) t = id(rng);
    }
    return docs;
  }

  std::unique_ptr<BloomModel> model_;
  std::unique_ptr<Backend> cpu_, cuda_;
};

TEST_P(CudaModel, EvalNllMatchesTheCpu) {
  // Windows of different lengths in one batch: right padding, the mask and unscored targets
  // all travel to the device.
  const auto docs = documents(5, 9, 40, 1);
  PerplexityOptions o;
  o.seq_len = 24, o.stride = 12, o.batch = 3;
  absl::StatusOr<PerplexityResult> want = sliding_window_perplexity(*model_, *cpu_, docs, o);
  absl::StatusOr<PerplexityResult> got = sliding_window_perplexity(*model_, *cuda_, docs, o);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->tokens_scored, want->tokens_scored);
  EXPECT_EQ(got->windows, want->windows);
  EXPECT_NEAR(got->mean_nll(), want->mean_nll(), kNllBound);
  // Per position, through the forward directly (the loss of every row and the logits).
  const std::vector<int32_t> ids(docs[0].begin(), docs[0].begin() + 9);
  const std::vector<int32_t> targets = next_token_targets(ids.data(), nullptr, 1, 9);
  ForwardInputs in;
  in.batch = 1, in.seq = 9, in.ids = ids.data(), in.targets = targets.data();
  in.want_logits = true;
  absl::StatusOr<ForwardResult> a = bloom_forward(*model_, *cpu_, in);
  absl::StatusOr<ForwardResult> b = bloom_forward(*model_, *cuda_, in);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->logits.size(), b->logits.size());
  for (size_t i = 0; i < a->logits.size(); ++i) {
    ASSERT_NEAR(b->logits[i], a->logits[i], kLogitBound) << "logit " << i;
  }
  for (size_t r = 0; r < a->row_loss.size(); ++r) {
    EXPECT_NEAR(b->row_loss[r], a->row_loss[r], kLogitBound) << "row " << r;
  }
  // Left padding (real tokens after padded ones, as a batch of prompts is laid out): the mask
  // and the ALiBi key positions (cumsum(mask) - 1) decide every real row's scores.
  const std::vector<uint8_t> mask = {0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  std::vector<int32_t> two(docs[1].begin(), docs[1].begin() + 9);
  two.insert(two.end(), docs[2].begin(), docs[2].begin() + 9);
  const std::vector<int32_t> padded_targets = next_token_targets(two.data(), mask.data(), 2, 9);
  in.batch = 2, in.ids = two.data(), in.mask = mask.data(), in.targets = padded_targets.data();
  in.want_logits = false;
  a = bloom_forward(*model_, *cpu_, in);
  b = bloom_forward(*model_, *cuda_, in);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->scored, b->scored);
  for (size_t r = 0; r < a->row_loss.size(); ++r) {
    EXPECT_NEAR(b->row_loss[r], a->row_loss[r], kLogitBound) << "padded batch, row " << r;
  }
}

TEST_P(CudaModel, DiagnoseStatisticsAndClassesMatchTheCpu) {
  // Sequences of different lengths, two per batch: the padded path and its mask.
  const auto seqs = documents(6, 12, 33, 2);
  DiagnoseOptions o;
  o.seq_len = 33, o.batch = 2;
  absl::StatusOr<DiagnosisReport> want = diagnose_sequences(*model_, *cpu_, seqs, o);
  ASSERT_TRUE(want.ok()) << want.status();
  // A sink threshold in the widest gap between the middle half of the heads' bos_mass values,
  // so that the classes split into SINK and HEALTHY with every head far from the boundary.
  std::vector<double> bos;
  for (const HeadSummary& h : want->heads) bos.push_back(h.bos_mass.mean);
  std::sort(bos.begin(), bos.end());
  size_t best = bos.size() / 4;
  for (size_t i = bos.size() / 4; i + 1 < 3 * bos.size() / 4 + 1 && i + 1 < bos.size(); ++i) {
    if (bos[i + 1] - bos[i] > bos[best + 1] - bos[best]) best = i;
  }
  ASSERT_GT(bos[best + 1] - bos[best], 4 * kStatBound) << "no head-separating gap";
  o.thresholds.sink = 0.5 * (bos[best] + bos[best + 1]);
  o.thresholds.dead = std::max(o.thresholds.sink, 0.95);
  o.thresholds.low_entropy = 0.0;
  want = diagnose_sequences(*model_, *cpu_, seqs, o);
  absl::StatusOr<DiagnosisReport> got = diagnose_sequences(*model_, *cuda_, seqs, o);
  ASSERT_TRUE(want.ok() && got.ok()) << got.status();
  ASSERT_EQ(got->heads.size(), want->heads.size());
  EXPECT_GT(want->counts.sink + want->counts.dead, 0);
  EXPECT_GT(want->counts.healthy, 0);
  for (size_t i = 0; i < want->heads.size(); ++i) {
    const HeadSummary& w = want->heads[i];
    const HeadSummary& g = got->heads[i];
    EXPECT_NEAR(g.bos_mass.mean, w.bos_mass.mean, kStatBound) << "layer " << w.layer << " head " << w.head;
    EXPECT_NEAR(g.entropy.mean, w.entropy.mean, kStatBound) << "layer " << w.layer << " head " << w.head;
    EXPECT_NEAR(g.local_mass.mean, w.local_mass.mean, kStatBound) << "layer " << w.layer << " head " << w.head;
    EXPECT_EQ(g.cls, w.cls) << "layer " << w.layer << " head " << w.head;
  }
  EXPECT_EQ(got->tokens, want->tokens);
}

TEST_P(CudaModel, GreedyGenerationWithADeviceKvCacheMatchesTheCpu) {
  const std::vector<int32_t> prompt = documents(1, 6, 6, 3)[0];
  constexpr int kNew = 10;
  KvCache cpu_cache(model_->config, 6 + kNew), cuda_cache(model_->config, 6 + kNew);
  std::vector<int32_t> cpu_ids = prompt, cuda_ids = prompt;
  for (int i = 0; i < kNew; ++i) {
    const int64_t count = i == 0 ? 6 : 1;
    absl::StatusOr<std::vector<float>> a = bloom_decode_step(
        *model_, *cpu_, cpu_cache, cpu_ids.data() + cpu_ids.size() - count, count);
    absl::StatusOr<std::vector<float>> b = bloom_decode_step(
        *model_, *cuda_, cuda_cache, cuda_ids.data() + cuda_ids.size() - count, count);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    for (size_t v = 0; v < a->size(); ++v) ASSERT_NEAR((*b)[v], (*a)[v], kLogitBound) << v;
    // The premise of comparing tokens: the CPU's top two differ by more than both bounds.
    std::vector<float> sorted = *a;
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    ASSERT_GT(sorted[0] - sorted[1], 2 * kLogitBound) << "step " << i << ": a near tie";
    cpu_ids.push_back(static_cast<int32_t>(std::max_element(a->begin(), a->end()) - a->begin()));
    cuda_ids.push_back(static_cast<int32_t>(std::max_element(b->begin(), b->end()) - b->begin()));
  }
  EXPECT_EQ(cuda_ids, cpu_ids);
  // The cache lives on the device it was first used with.
  EXPECT_FALSE(bloom_decode_step(*model_, *cpu_, cuda_cache, prompt.data(), 0).ok());
  KvCache fresh(model_->config, 4);
  ASSERT_TRUE(bloom_decode_step(*model_, *cuda_, fresh, prompt.data(), 1).ok());
  absl::StatusOr<std::vector<float>> wrong = bloom_decode_step(*model_, *cpu_, fresh, prompt.data(), 1);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("lives on cuda"), std::string::npos) << wrong.status();
}

// bf16 storage (the default on a device): the CUDA backend against the CPU's bf16-storage twin,
// which rounds every stored activation and weight to bf16 exactly where the device does, and
// both against the fp32 reference (what bf16 costs). Bounds: TOLERANCES.md, "bf16 storage".
TEST_P(CudaModel, Bf16StorageMatchesTheCpuTwin) {
  BloomConfig c = model_->config;
  absl::StatusOr<BloomModel> twin_model = allocate_bloom_model(c);
  ASSERT_TRUE(twin_model.ok());
  ASSERT_TRUE(init_bloom_weights(*twin_model, 17, 0.08).ok());
  BloomModel f32_model = *allocate_bloom_model(c);
  ASSERT_TRUE(init_bloom_weights(f32_model, 17, 0.08).ok());
  ASSERT_TRUE(make_resident(*model_, *cuda_, DType::kBF16).ok());
  ASSERT_TRUE(make_resident(*twin_model, *cpu_, DType::kBF16).ok());
  EXPECT_EQ(storage_on(*model_, *cuda_), DType::kBF16);
  EXPECT_EQ(storage_on(*twin_model, *cpu_), DType::kBF16);

  const auto docs = documents(4, 12, 30, 5);
  PerplexityOptions o;
  o.seq_len = 24, o.stride = 12, o.batch = 2;
  absl::StatusOr<PerplexityResult> gpu = sliding_window_perplexity(*model_, *cuda_, docs, o);
  absl::StatusOr<PerplexityResult> twin = sliding_window_perplexity(*twin_model, *cpu_, docs, o);
  absl::StatusOr<PerplexityResult> truth = sliding_window_perplexity(f32_model, *cpu_, docs, o);
  ASSERT_TRUE(gpu.ok() && twin.ok() && truth.ok()) << gpu.status() << twin.status();
  ASSERT_EQ(gpu->tokens_scored, twin->tokens_scored);
  // The logit scale S = max |logit| of the fp32 model on the first document: a logit is within
  // 2 u S of its value from the other side's final hidden state (one bf16 rounding of each
  // side's ln_f output, the tied head's product exact in fp32 up to gamma_C), and an NLL
  // (lse - logit, lse 1-Lipschitz in the max norm) within twice that.
  std::vector<int32_t> first(docs[0].begin(), docs[0].begin() + 12);
  ForwardInputs scale_in;
  scale_in.batch = 1, scale_in.seq = 12, scale_in.ids = first.data(), scale_in.want_logits = true;
  absl::StatusOr<ForwardResult> scale_run = bloom_forward(f32_model, *cpu_, scale_in);
  ASSERT_TRUE(scale_run.ok());
  double scale = 0;
  for (float v : scale_run->logits) scale = std::max(scale, static_cast<double>(std::abs(v)));
  const double kBf16LogitBound = 4 * kBf16U * scale;
  const double kBf16NllBound = 2 * kBf16LogitBound;
  const double kBf16VsF32NllBound = kBf16NllBound;
  const double kBf16StatBound = 8 * kBf16U;
  const double nll_gpu_twin = std::abs(gpu->mean_nll() - twin->mean_nll());
  const double nll_twin_truth = std::abs(twin->mean_nll() - truth->mean_nll());
  RecordProperty("nll_gpu_vs_twin", std::to_string(nll_gpu_twin));
  RecordProperty("nll_bf16_vs_f32", std::to_string(nll_twin_truth));
  std::printf("bf16 mean nll: gpu %.9f twin %.9f f32 %.9f (logit scale %.3g, bound %.3g)\n",
              gpu->mean_nll(), twin->mean_nll(), truth->mean_nll(), scale, kBf16NllBound);
  EXPECT_LE(nll_gpu_twin, kBf16NllBound);
  // bf16 is not free, but it is far from a broken model.
  EXPECT_LE(nll_twin_truth, kBf16VsF32NllBound);

  // Statistics per head, and the classes with a threshold far from every head.
  const auto seqs = documents(4, 14, 30, 6);
  DiagnoseOptions d;
  d.seq_len = 30, d.batch = 2;
  absl::StatusOr<DiagnosisReport> a = diagnose_sequences(*twin_model, *cpu_, seqs, d);
  absl::StatusOr<DiagnosisReport> b = diagnose_sequences(*model_, *cuda_, seqs, d);
  ASSERT_TRUE(a.ok() && b.ok()) << b.status();
  EXPECT_EQ(b->model["storage"], "BF16");
  double worst = 0;
  for (size_t i = 0; i < a->heads.size(); ++i) {
    // Probabilities are O(1); the entropy is compared relative to its size (up to ln T).
    const double e = std::max(1.0, std::abs(a->heads[i].entropy.mean));
    worst = std::max({worst, std::abs(a->heads[i].bos_mass.mean - b->heads[i].bos_mass.mean),
                      std::abs(a->heads[i].entropy.mean - b->heads[i].entropy.mean) / e,
                      std::abs(a->heads[i].local_mass.mean - b->heads[i].local_mass.mean)});
  }
  std::printf("bf16 statistics: worst gpu-vs-twin difference %.3g\n", worst);
  EXPECT_LE(worst, kBf16StatBound);

  // Greedy decoding with a bf16 KV cache on the device.
  const std::vector<int32_t> prompt = documents(1, 5, 5, 7)[0];
  KvCache gpu_cache(c, 12), twin_cache(c, 12);
  std::vector<int32_t> gpu_ids = prompt, twin_ids = prompt;
  double worst_logit = 0;
  for (int i = 0; i < 7; ++i) {
    const int64_t count = i == 0 ? 5 : 1;
    absl::StatusOr<std::vector<float>> g = bloom_decode_step(
        *model_, *cuda_, gpu_cache, gpu_ids.data() + gpu_ids.size() - count, count);
    absl::StatusOr<std::vector<float>> t = bloom_decode_step(
        *twin_model, *cpu_, twin_cache, twin_ids.data() + twin_ids.size() - count, count);
    ASSERT_TRUE(g.ok() && t.ok()) << g.status() << t.status();
    for (size_t v = 0; v < t->size(); ++v) {
      worst_logit = std::max(worst_logit, static_cast<double>(std::abs((*g)[v] - (*t)[v])));
    }
    std::vector<float> sorted = *t;
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    ASSERT_GT(sorted[0] - sorted[1], 2 * kBf16LogitBound) << "step " << i << ": a near tie";
    gpu_ids.push_back(static_cast<int32_t>(std::max_element(g->begin(), g->end()) - g->begin()));
    twin_ids.push_back(static_cast<int32_t>(std::max_element(t->begin(), t->end()) - t->begin()));
  }
  std::printf("bf16 decode: worst logit difference %.3g\n", worst_logit);
  EXPECT_LE(worst_logit, kBf16LogitBound);
  EXPECT_EQ(gpu_ids, twin_ids);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaModel,
                         ::testing::Values(Shape{"l2_h4_d64", 2, 4, 64},
                                           Shape{"l3_h5_d80", 3, 5, 80}),
                         [](const auto& info) { return std::string(info.param.name); });

// A BLOOM with tie_word_embeddings false: the device's classifier reads the resident copy of
// lm_head.weight (its own arena tensor), so logits and losses match the CPU within the fp32
// bounds above, and differ from those of the same weights with the head tied.
TEST(CudaModelUntied, LogitsReadTheUntiedHeadAsTheCpuDoes) {
  BloomConfig c;
  c.vocab_size = 97, c.n_layer = 2, c.n_head = 4, c.hidden_size = 32;
  c.tie_word_embeddings = false;
  absl::StatusOr<BloomModel> m = allocate_bloom_model(c);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(init_bloom_weights(*m, 23, 0.08).ok());
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  absl::StatusOr<std::unique_ptr<Backend>> cuda = make_backend("cuda");
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  ASSERT_TRUE(make_resident(*m, **cuda).ok());
  std::vector<int32_t> ids(12);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 37 + 5) % 97);
  const std::vector<int32_t> targets = next_token_targets(ids.data(), nullptr, 1, 12);
  ForwardInputs in;
  in.batch = 1, in.seq = 12, in.ids = ids.data(), in.targets = targets.data();
  in.want_logits = true;
  absl::StatusOr<ForwardResult> a = bloom_forward(*m, *cpu, in);
  absl::StatusOr<ForwardResult> b = bloom_forward(*m, **cuda, in);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(a->logits.size(), b->logits.size());
  for (size_t i = 0; i < a->logits.size(); ++i) {
    ASSERT_NEAR(b->logits[i], a->logits[i], kLogitBound) << "logit " << i;
  }
  EXPECT_NEAR(b->loss, a->loss, kNllBound);
  // The same weights with the head tied give other logits: the untied head is what was read.
  BloomConfig tied_config = c;
  tied_config.tie_word_embeddings = true;
  absl::StatusOr<BloomModel> tied = allocate_bloom_model(tied_config);
  ASSERT_TRUE(tied.ok()) << tied.status();
  for (const ParameterInfo& p : tied->arena.parameters()) {
    std::copy_n(m->arena.view(p.name)->as<const float>(), p.numel,
                tied->arena.view(p).as<float>());
  }
  absl::StatusOr<ForwardResult> t = bloom_forward(*tied, *cpu, in);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_GT(std::abs(t->loss - a->loss), 1e-3);
  // Training every element: the untied head's gradient on the device matches the CPU's within
  // the fp32 gradient bound (TOLERANCES.md: 1e-3 |ref| + 1e-5 max |ref|; only the summation
  // order differs), and the embedding's too (its gradient now comes from the lookup alone).
  constexpr double kRel = 1e-3, kAbs = 1e-5;
  const FrozenMask all = FrozenMask::all_trainable(m->arena);
  CompactGradients want(all.words(), all.elements());
  CompactGradients got(all.words(), all.elements(), **cuda);
  ASSERT_TRUE(got.status().ok()) << got.status();
  ForwardInputs train = in;
  train.want_logits = false;
  ASSERT_TRUE(bloom_forward_backward(*m, *cpu, train, want).ok());
  ASSERT_TRUE(bloom_forward_backward(*m, **cuda, train, got).ok());
  std::vector<float> w, g;
  ASSERT_TRUE(want.download(w).ok());
  ASSERT_TRUE(got.download(g).ok());
  for (const char* name : {"lm_head.weight", "word_embeddings.weight"}) {
    absl::StatusOr<TensorView> v = m->arena.view(name);
    ASSERT_TRUE(v.ok());
    double max_ref = 0.0;
    for (int64_t i = 0; i < v->numel(); ++i) {
      max_ref = std::max(max_ref, static_cast<double>(std::abs(w[v->arena_offset + i])));
    }
    EXPECT_GT(max_ref, 0.0) << name;
    for (int64_t i = 0; i < v->numel(); ++i) {
      const double ref = w[v->arena_offset + i];
      ASSERT_LE(std::abs(g[v->arena_offset + i] - ref), kRel * std::abs(ref) + kAbs * max_ref)
          << name << " element " << i;
    }
  }
}

TEST(CudaModelErrors, DevicesAndResidencyAreCheckedWithOneLineErrors) {
  BloomConfig c;
  c.vocab_size = 64, c.n_layer = 1, c.n_head = 2, c.hidden_size = 16;
  absl::StatusOr<BloomModel> m = allocate_bloom_model(c);
  ASSERT_TRUE(m.ok());
  absl::StatusOr<std::unique_ptr<Backend>> cuda = make_backend("cuda");
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  // Not uploaded: the forward says so instead of reading host memory on the device.
  const std::vector<int32_t> ids = {1, 2, 3};
  ForwardInputs in;
  in.batch = 1, in.seq = 3, in.ids = ids.data(), in.want_logits = true;
  absl::StatusOr<ForwardResult> r = bloom_forward(*m, **cuda, in);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("not resident on cuda"), std::string::npos) << r.status();
  // A device index past the last visible one, and malformed names.
  const int count = cuda_device_count();
  absl::StatusOr<std::unique_ptr<Backend>> past = make_backend(absl::StrCat("cuda:", count));
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.status().code(), absl::StatusCode::kFailedPrecondition);
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:x", "cudax", ""}) {
    absl::StatusOr<std::unique_ptr<Backend>> b = make_backend(bad);
    ASSERT_FALSE(b.ok()) << bad;
    EXPECT_EQ(b.status().message().find('\n'), std::string::npos);
  }
}

// The public API on the device: train there, then save writes the trained weights (the host copy
// follows the device), and the saved model reloaded on the CPU computes what the device model does.
TEST(CudaModelApi, TrainOnTheDeviceThenSaveWritesTheTrainedWeights) {
  const std::string dir =
      std::string(ENGINE_SOURCE_DIR) + "/tests/fixtures/models/bloom-h4-l2";
  auto gpu = api::Model::load(dir, "cuda");
  ASSERT_TRUE(gpu.ok()) << gpu.error();
  EXPECT_EQ(gpu->info().device, "cuda");
  std::vector<std::vector<int32_t>> docs(4);
  for (size_t d = 0; d < docs.size(); ++d) {
    for (int t = 0; t < 40; ++t) docs[d].push_back(static_cast<int32_t>((7 * d + 5 * t) % 100));
  }
  api::TrainOptions o;
  o.steps = 4, o.seq_len = 16, o.lr = 0.5, o.optimizer = "sgd", o.cosine = false, o.warmup = 0;
  auto trained = gpu->train(docs, o);
  ASSERT_TRUE(trained.ok()) << trained.error();
  const std::vector<std::vector<int32_t>> probe = {{1, 5, 9, 13, 17, 21}};
  auto on_gpu = gpu->forward(probe);
  ASSERT_TRUE(on_gpu.ok()) << on_gpu.error();
  const std::filesystem::path out =
      std::filesystem::temp_directory_path() /
      ("engine_cuda_api_train_save." + std::to_string(::getpid()));
  std::filesystem::remove_all(out);
  ASSERT_TRUE(gpu->save(out.string()).ok());
  auto reloaded = api::Model::load(out.string(), "cpu");
  auto base = api::Model::load(dir, "cpu");
  ASSERT_TRUE(reloaded.ok() && base.ok());
  auto on_cpu = reloaded->forward(probe);
  auto untrained = base->forward(probe);
  ASSERT_TRUE(on_cpu.ok() && untrained.ok());
  // The saved weights are the trained ones (the loss moved), and the CPU reproduces the device's
  // loss on them within the fp32 end-to-end bound.
  EXPECT_GT(std::abs(on_cpu->loss - untrained->loss), 100 * kNllBound);
  EXPECT_NEAR(on_cpu->loss, on_gpu->loss, kNllBound);
  std::filesystem::remove_all(out);
}

}  // namespace
}  // namespace engine
