// The tape backward over the BLOOM block graph (model/bloom_backward.h) against transformers'
// gradients committed in tests/fixtures/reference/<model>.safetensors ("<case>.grad.<name>"),
// under docs/TOLERANCES.md's gradient rule (|err| <= 1e-3 |ref| + 1e-5 max|ref| per element).
// Also: surgery-restricted gradients equal the matching slices of the reference gradients; the
// backward skips what no trainable element needs (counted kernel calls); and a central
// finite-difference check of the whole graph on a model without reference gradients.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/tape.h"
#include "gtest/gtest.h"
#include "model/bloom_backward.h"
#include "model/model_directory.h"
#include "engine/frozen_mask.h"
#include "surgery/head_surgery.h"
#include "tests/fixture_checks.h"
#include "tests/fixture_reference.h"

namespace engine {
namespace {

using testing_fixtures::CaseData;
using testing_fixtures::compact_for;
using testing_fixtures::gradient_mismatches;
using testing_fixtures::inputs_of;
using testing_fixtures::kFixtures;
using testing_fixtures::load_case;
using testing_fixtures::Reference;
using testing_fixtures::to_arena;

constexpr double kLossTol = 1e-5;

struct GradCase {
  const char* model;
  const char* name;
};

class FixtureGradients : public ::testing::TestWithParam<GradCase> {};

TEST_P(FixtureGradients, EveryParameterMatchesTransformers) {
  const GradCase gc = GetParam();
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / gc.model);
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref(gc.model);
  const CaseData d = load_case(ref, gc.name);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  CompactGradients grads = compact_for(FrozenMask::all_trainable(model->arena));
  absl::StatusOr<ForwardResult> r = bloom_forward_backward(*model, *backend, inputs_of(d), grads);
  ASSERT_TRUE(r.ok()) << r.status();
  const double loss = ref.get<float>(std::string(gc.name) + ".loss")[0];
  EXPECT_LE(std::abs(r->loss - loss), kLossTol * std::abs(loss));
  const std::vector<float> g = to_arena(grads, model->arena.size_elements());
  int checked = 0;
  for (const ParameterInfo& p : model->arena.parameters()) {
    const std::vector<float> want = ref.get<float>(std::string(gc.name) + ".grad." + p.name);
    ASSERT_EQ(static_cast<int64_t>(want.size()), p.numel) << p.name;
    EXPECT_EQ(gradient_mismatches(p.name, g.data() + p.offset, want.data(), p.numel), 0);
    ++checked;
  }
  EXPECT_EQ(checked, 5 + 12 * model->config.n_layer);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureGradients,
                         ::testing::Values(GradCase{"bloom-h4-l2", "batch"},
                                           GradCase{"bloom-h4-l2", "right_pad"},
                                           GradCase{"bloom-h6-l3", "batch"},
                                           GradCase{"bloom-h6-l3", "right_pad"}),
                         [](const auto& info) {
                           std::string s = absl::StrCat(info.param.model, "_", info.param.name);
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

// Forwards every op to the CPU backend and counts the backward kernels.
class CountingBackend : public Backend {
 public:
  CountingBackend() : cpu_(make_cpu_backend()) {}
  DeviceKind kind() const override { return cpu_->kind(); }
  std::string_view name() const override { return cpu_->name(); }
  absl::StatusOr<void*> allocate(size_t bytes) override { return cpu_->allocate(bytes); }
  Deallocator deallocator() const override { return cpu_->deallocator(); }
  absl::Status copy_to_device(void* d, const void* h, size_t n) override {
    return cpu_->copy_to_device(d, h, n);
  }
  absl::Status copy_to_host(void* h, const void* d, size_t n) override {
    return cpu_->copy_to_host(h, d, n);
  }
  absl::Status copy_on_device(void* d, const void* s, size_t n) override {
    return cpu_->copy_on_device(d, s, n);
  }
  absl::Status fill_zero(void* d, size_t n) override { return cpu_->fill_zero(d, n); }
  absl::Status add(float* y, const float* x, int64_t n) override { return cpu_->add(y, x, n); }
  absl::Status column_sums(const float* x, int64_t rows, int64_t cols, int64_t ld,
                           float* out) override {
    return cpu_->column_sums(x, rows, cols, ld, out);
  }
  absl::Status compact_scatter_add(const CompactScatterParams& p) override {
    return cpu_->compact_scatter_add(p);
  }
  absl::Status gemm(const GemmParams& p) override { return cpu_->gemm(p); }
  absl::StatusOr<std::vector<double>> attention_sink_sums(const AttentionSinkParams& p) override {
    return cpu_->attention_sink_sums(p);
  }
  absl::Status layernorm_forward(const LayerNormParams& p) override {
    return cpu_->layernorm_forward(p);
  }
  absl::Status layernorm_backward(const LayerNormParams& p) override {
    ++layernorm_backward_calls;
    return cpu_->layernorm_backward(p);
  }
  absl::Status gelu_forward(const GeluParams& p) override { return cpu_->gelu_forward(p); }
  absl::Status gelu_backward(const GeluParams& p) override {
    ++gelu_backward_calls;
    return cpu_->gelu_backward(p);
  }
  absl::Status embedding_forward(const EmbeddingParams& p) override {
    return cpu_->embedding_forward(p);
  }
  absl::Status embedding_backward(const EmbeddingParams& p) override {
    ++embedding_backward_calls;
    return cpu_->embedding_backward(p);
  }
  absl::Status alibi_attention_forward(const AlibiAttentionParams& p) override {
    return cpu_->alibi_attention_forward(p);
  }
  absl::Status alibi_attention_backward(const AlibiAttentionParams& p) override {
    ++attention_backward_calls;
    return cpu_->alibi_attention_backward(p);
  }
  absl::Status classifier_cross_entropy(const ClassifierParams& p) override {
    if (p.dembedding != nullptr) ++classifier_table_grads;
    return cpu_->classifier_cross_entropy(p);
  }
  absl::Status masked_adamw(const MaskedAdamWParams& p) override { return cpu_->masked_adamw(p); }
  absl::Status masked_sgd(const MaskedAdamWParams& p) override { return cpu_->masked_sgd(p); }
  absl::StatusOr<double> gradient_norm(const float* grad, int64_t n) override {
    return cpu_->gradient_norm(grad, n);
  }

  int layernorm_backward_calls = 0, gelu_backward_calls = 0, embedding_backward_calls = 0,
      attention_backward_calls = 0, classifier_table_grads = 0;

 private:
  std::unique_ptr<Backend> cpu_;
};

SurgeryPlan keep_plan(std::vector<HeadTarget> targets) {
  SurgeryPlan plan;
  plan.targets = std::move(targets);
  plan.qkv_weight = QkvWeightInit::kKeep;
  plan.qkv_bias = QkvBiasInit::kKeep;
  plan.dense_columns = DenseColumnsInit::kKeep;
  return plan;
}

HeadGeometry geometry_of(const BloomConfig& c) {
  return HeadGeometry{c.n_layer, c.n_head, c.head_dim()};
}

// Heads in two non-adjacent positions of one layer plus one in the last layer: several row runs
// of a QKV weight and several column runs of a dense weight. "keep" everywhere, so the weights
// are the fixture's and its gradients apply.
TEST(SurgeryGradients, EqualTheReferenceSlicesAndNothingElseIsComputed) {
  const std::string name = "bloom-h6-l3";
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / name);
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref(name);
  const CaseData d = load_case(ref, "right_pad");
  const SurgeryPlan plan = keep_plan({{1, 1}, {1, 4}, {2, 5}});
  absl::StatusOr<FrozenMask> mask = apply_surgery(model->arena, geometry_of(model->config), plan);
  ASSERT_TRUE(mask.ok()) << mask.status();
  CountingBackend backend;
  CompactGradients grads = compact_for(*mask);
  ASSERT_TRUE(bloom_forward_backward(*model, backend, inputs_of(d), grads).ok());
  const std::vector<float> g = to_arena(grads, model->arena.size_elements());
  for (const ParameterInfo& p : model->arena.parameters()) {
    const std::vector<float> full = ref.get<float>("right_pad.grad." + p.name);
    // The reference gradient restricted to the trainable elements.
    std::vector<float> want(full.size(), 0.0f);
    for (int64_t i = 0; i < p.numel; ++i) {
      if (mask->trainable(p.offset + i)) want[i] = full[i];
    }
    // Masked-out elements must be exactly zero, the rest within tolerance of the reference.
    for (int64_t i = 0; i < p.numel; ++i) {
      if (!mask->trainable(p.offset + i)) {
        ASSERT_EQ(g[p.offset + i], 0.0f) << p.name << " " << i;
      }
    }
    EXPECT_EQ(gradient_mismatches(p.name, g.data() + p.offset, want.data(), p.numel), 0);
  }
  // Layer 0 holds no target: its block's backward never runs, nor does the embedding's. Layer 1
  // runs down to its QKV linear (its LN1 lies below the lowest trainable op, so only LN2 runs);
  // layer 2 runs whole (LN1 and LN2), plus ln_f.
  EXPECT_EQ(backend.attention_backward_calls, 2);
  EXPECT_EQ(backend.gelu_backward_calls, 2);
  EXPECT_EQ(backend.layernorm_backward_calls, 4);
  EXPECT_EQ(backend.embedding_backward_calls, 0);
  EXPECT_EQ(backend.classifier_table_grads, 0);
}

TEST(SurgeryGradients, FullTrainingRunsEveryBackwardKernel) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "bloom-h4-l2");
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref("bloom-h4-l2");
  const CaseData d = load_case(ref, "batch");
  CountingBackend backend;
  CompactGradients grads = compact_for(FrozenMask::all_trainable(model->arena));
  ASSERT_TRUE(bloom_forward_backward(*model, backend, inputs_of(d), grads).ok());
  EXPECT_EQ(backend.attention_backward_calls, 2);
  EXPECT_EQ(backend.layernorm_backward_calls, 2 * 2 + 2);
  EXPECT_EQ(backend.embedding_backward_calls, 1);
  EXPECT_EQ(backend.classifier_table_grads, 1);
}

// --recompute runs the same ops on the same values in the same order: bit-identical gradients,
// with everything trainable and with targets only in the top layers (the segment loop stops).
TEST(Recompute, GivesBitIdenticalGradients) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "bloom-h6-l3");
  ASSERT_TRUE(model.ok()) << model.status();
  const CaseData d = load_case(Reference("bloom-h6-l3"), "right_pad");
  std::unique_ptr<Backend> backend = make_cpu_backend();
  absl::StatusOr<FrozenMask> surgical =
      surgery_mask(model->arena, geometry_of(model->config), keep_plan({{1, 2}, {2, 0}}));
  ASSERT_TRUE(surgical.ok()) << surgical.status();
  for (const FrozenMask& mask : {FrozenMask::all_trainable(model->arena), *surgical}) {
    CompactGradients kept = compact_for(mask), recomputed = compact_for(mask);
    absl::StatusOr<ForwardResult> a = bloom_forward_backward(*model, *backend, inputs_of(d), kept);
    absl::StatusOr<ForwardResult> b =
        bloom_forward_backward(*model, *backend, inputs_of(d), recomputed, 1.0, true);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->loss, b->loss);
    ASSERT_EQ(kept.size(), recomputed.size());
    EXPECT_EQ(std::memcmp(kept.data(), recomputed.data(), kept.size() * sizeof(float)), 0)
        << mask.trainable_count() << " trainable";
  }
}

// Central differences along unit directions u: (loss(w + h u) - loss(w - h u)) / 2h against
// g . u, on bloom-h3-d32-l4 (head_dim 32, 4 layers, no reference gradients) with the left-padded
// case (fully padded query rows, padding-aware positions). The forward runs in float32, so the
// loss carries about 1e-6 of rounding noise; with h = 1e-2 that is 1e-4 in the difference
// quotient, while the truncation error is O(h^2 |third derivative|) ~ 1e-4 too. Directions are
// the gradient restricted to one tensor (then g . u = |g_tensor|, the largest signal), so the
// bound is relative: 2e-2 |g . u| + 5e-4. A wrong sign, a missing term or a dropped ALiBi bias
// in the backward shows up as an error of order |g . u|.
TEST(FiniteDifference, WholeGraphAlongPerTensorGradientDirections) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "bloom-h3-d32-l4");
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref("bloom-h3-d32-l4");
  const CaseData d = load_case(ref, "left_pad");
  std::unique_ptr<Backend> backend = make_cpu_backend();
  CompactGradients grads = compact_for(FrozenMask::all_trainable(model->arena));
  ASSERT_TRUE(bloom_forward_backward(*model, *backend, inputs_of(d), grads).ok());
  const std::vector<float> g = to_arena(grads, model->arena.size_elements());
  float* w = reinterpret_cast<float*>(model->arena.base());
  auto loss_at = [&]() {
    absl::StatusOr<ForwardResult> r = bloom_forward(*model, *backend, inputs_of(d));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->loss : 0.0;
  };
  constexpr double kStep = 1e-2;
  constexpr double kRelative = 2e-2;
  constexpr double kAbsolute = 5e-4;
  const std::vector<std::string> names = {"word_embeddings.weight",
                                          "word_embeddings_layernorm.weight",
                                          "h.0.self_attention.query_key_value.weight",
                                          "h.1.self_attention.query_key_value.weight",
                                          "h.3.self_attention.query_key_value.bias",
                                          "h.2.self_attention.dense.weight",
                                          "h.1.input_layernorm.bias",
                                          "h.3.mlp.dense_h_to_4h.weight",
                                          "h.0.mlp.dense_4h_to_h.bias",
                                          "ln_f.weight"};
  for (const std::string& name : names) {
    absl::StatusOr<TensorView> v = model->arena.view(name);
    ASSERT_TRUE(v.ok()) << v.status();
    const int64_t off = v->arena_offset, n = v->numel();
    double norm = 0.0;
    for (int64_t i = 0; i < n; ++i) norm += double{g[off + i]} * g[off + i];
    norm = std::sqrt(norm);
    ASSERT_GT(norm, 0.0) << name;
    const std::vector<float> saved(w + off, w + off + n);
    for (int64_t i = 0; i < n; ++i) w[off + i] = saved[i] + kStep * g[off + i] / norm;
    const double plus = loss_at();
    for (int64_t i = 0; i < n; ++i) w[off + i] = saved[i] - kStep * g[off + i] / norm;
    const double minus = loss_at();
    std::copy(saved.begin(), saved.end(), w + off);
    const double fd = (plus - minus) / (2 * kStep);
    EXPECT_NEAR(fd, norm, kRelative * norm + kAbsolute) << name;
  }
}

}  // namespace
}  // namespace engine
