// The BLOOM forward pass (model/bloom_forward.cpp) against transformers' outputs committed in
// tests/fixtures/reference/<model>.safetensors by tests/fixtures/make_fixtures.py.
// Tolerances (fp32 engine vs fp32 transformers, both reordering float sums differently):
//   logits: max abs error <= 1e-4 at every real position of every case. Positions that are
//     padding are checked too, at the same tolerance: right-padding rows attend to the real keys
//     before them and left-padding rows reproduce transformers' uniform attention, so both are
//     defined; the fixtures' README calls them "not meaningful", which is why the policy for
//     callers is still "read logits at real positions only".
//   loss (mean next-token cross-entropy): abs error <= 1e-5.
//   bos_mass, entropy, local_mass per (batch row, layer, head): abs error <= 1e-5.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "gtest/gtest.h"
#include "model/bloom_forward.h"
#include "tests/fixture_checks.h"
#include "tests/fixture_reference.h"
#include "model/model_directory.h"
#include "model/safetensors.h"

namespace engine {
namespace {

constexpr double kLogitsTol = 1e-4;
constexpr double kLossTol = 1e-5;
constexpr double kStatsTol = 1e-5;

using testing_fixtures::kFixtures;
const char* const kModels[] = {"bloom-h4-l2", "bloom-h6-l3", "bloom-h3-d32-l4", "bloom-h4-l2-f16"};
const char* const kCases[] = {"single", "batch", "right_pad", "left_pad", "long"};

using testing_fixtures::CaseData;
using testing_fixtures::load_case;
using testing_fixtures::Reference;

absl::StatusOr<BloomModel> load_fixture_model(const std::string& name) {
  return load_model_directory(kFixtures / "models" / name);
}

class BloomForwardFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(BloomForwardFixture, MatchesTransformersInEveryCase) {
  const std::string name = GetParam();
  absl::StatusOr<BloomModel> model = load_fixture_model(name);
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref(name);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  const int64_t L = model->config.n_layer, H = model->config.n_head, V = model->config.vocab_size;
  int cases = 0;
  for (const char* c : kCases) {
    if (!ref.has(std::string(c) + ".input_ids")) continue;
    ++cases;
    SCOPED_TRACE(std::string(name) + " case " + c);
    const CaseData d = load_case(ref, c);
    ForwardInputs in;
    in.batch = d.batch, in.seq = d.seq;
    in.ids = d.ids.data(), in.mask = d.mask.data(), in.targets = d.targets.data();
    in.want_logits = true, in.want_stats = true;
    in.vocab_chunk = 96;  // several chunks, the last one partial (V = 260)
    absl::StatusOr<ForwardResult> got = bloom_forward(*model, *backend, in);
    ASSERT_TRUE(got.ok()) << got.status();

    const std::vector<float> logits = ref.get<float>(std::string(c) + ".logits");
    ASSERT_EQ(got->logits.size(), logits.size());
    double worst = 0.0;
    for (size_t i = 0; i < logits.size(); ++i) {
      worst = std::max(worst, std::abs(static_cast<double>(got->logits[i]) - logits[i]));
    }
    EXPECT_LE(worst, kLogitsTol) << "logits max abs error";
    RecordProperty(std::string(c) + "_logits_max_abs_err", std::to_string(worst));
    const double loss = ref.get<float>(std::string(c) + ".loss")[0];
    EXPECT_NEAR(got->loss, loss, kLossTol);

    // Reference statistics are (B, L, H); ours are (L, B, H).
    testing_fixtures::expect_stats_near(ref, c, got->stats, d.batch, L, H, kStatsTol);
    (void)V;
  }
  EXPECT_GE(cases, 4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BloomForwardFixture, ::testing::ValuesIn(kModels));

TEST(BloomForward, OptionalOutputsDoNotChangeResults) {
  absl::StatusOr<BloomModel> model = load_fixture_model("bloom-h6-l3");
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref("bloom-h6-l3");
  const CaseData d = load_case(ref, "right_pad");
  std::unique_ptr<Backend> backend = make_cpu_backend();
  ForwardInputs in;
  in.batch = d.batch, in.seq = d.seq;
  in.ids = d.ids.data(), in.mask = d.mask.data(), in.targets = d.targets.data();
  in.want_logits = true;
  absl::StatusOr<ForwardResult> plain = bloom_forward(*model, *backend, in);
  in.want_stats = true, in.keep_activations = true;
  absl::StatusOr<ForwardResult> full = bloom_forward(*model, *backend, in);
  in.want_logits = false, in.want_stats = false, in.keep_activations = false;
  absl::StatusOr<ForwardResult> loss_only = bloom_forward(*model, *backend, in);
  ASSERT_TRUE(plain.ok() && full.ok() && loss_only.ok());
  EXPECT_EQ(plain->logits, full->logits);
  EXPECT_EQ(plain->row_loss, full->row_loss);
  EXPECT_EQ(plain->row_loss, loss_only->row_loss);
  EXPECT_TRUE(loss_only->logits.empty());
  ASSERT_NE(full->activations, nullptr);
  EXPECT_EQ(full->activations->blocks.size(), static_cast<size_t>(model->config.n_layer));
  EXPECT_EQ(plain->activations, nullptr);

  // A keep policy (what a backward with frozen parts reads) changes what is kept, not results:
  // layer 0 runs in the shared scratch block, layer 1 keeps no ln2 / GELU output, layer 2 all.
  in.keep_activations = true;
  in.keep_from_layer = 1;
  in.keep_ln2 = {0, 0, 1};
  in.keep_gelu = {0, 0, 1};
  absl::StatusOr<ForwardResult> partial = bloom_forward(*model, *backend, in);
  ASSERT_TRUE(partial.ok()) << partial.status();
  EXPECT_EQ(plain->row_loss, partial->row_loss);
  const BloomActivations& a = *partial->activations;
  EXPECT_TRUE(a.blocks[0].qkv.empty() && a.blocks[0].x.empty());
  EXPECT_TRUE(a.blocks[1].ln2.empty() && a.blocks[1].gelu.empty());
  EXPECT_FALSE(a.blocks[1].fc1.empty() || a.blocks[1].qkv.empty());
  EXPECT_FALSE(a.blocks[2].ln2.empty() || a.blocks[2].gelu.empty());
  // Every kept intermediate equals the fully kept run's.
  auto host = [](const ActivationBuffer& v) { return std::vector<float>(v.f32(), v.f32() + v.size()); };
  for (int64_t l = 1; l < 3; ++l) {
    EXPECT_EQ(host(a.blocks[l].x), host(full->activations->blocks[l].x)) << l;
    EXPECT_EQ(host(a.blocks[l].fc1), host(full->activations->blocks[l].fc1)) << l;
  }
  EXPECT_EQ(host(a.blocks[2].gelu), host(full->activations->blocks[2].gelu));
  in.keep_ln2 = {1, 1};  // not one entry per layer
  EXPECT_FALSE(bloom_forward(*model, *backend, in).ok());

  // Statistics alone (what diagnosis asks for) stop after the last block's attention; they are
  // the very numbers the full run produced.
  ForwardInputs stats_only;
  stats_only.batch = d.batch, stats_only.seq = d.seq;
  stats_only.ids = d.ids.data(), stats_only.mask = d.mask.data();
  stats_only.want_stats = true;
  absl::StatusOr<ForwardResult> stats = bloom_forward(*model, *backend, stats_only);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->stats.bos_mass, full->stats.bos_mass);
  EXPECT_EQ(stats->stats.entropy, full->stats.entropy);
  EXPECT_EQ(stats->stats.local_mass, full->stats.local_mass);
  EXPECT_EQ(stats->stats.rows, full->stats.rows);
  EXPECT_TRUE(stats->row_loss.empty() && stats->logits.empty());
}

TEST(BloomForward, GreedyDecodingWithKvCacheMatchesTransformers) {
  for (const char* name : {"bloom-h4-l2", "bloom-h6-l3"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<BloomModel> model = load_fixture_model(name);
    ASSERT_TRUE(model.ok()) << model.status();
    const Reference ref(name);
    const std::vector<int32_t> prompt = ref.get<int32_t>("generate.prompt_ids");
    const std::vector<int32_t> expected = ref.get<int32_t>("generate.output_ids");
    std::unique_ptr<Backend> backend = make_cpu_backend();
    // The last generated token is never run through the model, so it needs no cache row.
    KvCache cache(model->config, static_cast<int64_t>(expected.size()) - 1);
    std::vector<int32_t> ids = prompt;
    absl::StatusOr<std::vector<float>> logits =
        bloom_decode_step(*model, *backend, cache, ids.data(), static_cast<int64_t>(ids.size()));
    while (true) {
      ASSERT_TRUE(logits.ok()) << logits.status();
      const int32_t next = static_cast<int32_t>(
          std::max_element(logits->begin(), logits->end()) - logits->begin());
      ids.push_back(next);
      if (ids.size() == expected.size()) break;
      logits = bloom_decode_step(*model, *backend, cache, &ids.back(), 1);
    }
    EXPECT_EQ(ids, expected);
    // The cached path's last logits equal a full forward's logits at the same position.
    ForwardInputs in;
    in.batch = 1, in.seq = static_cast<int64_t>(ids.size()) - 1;
    in.ids = ids.data(), in.want_logits = true;
    absl::StatusOr<ForwardResult> full = bloom_forward(*model, *backend, in);
    ASSERT_TRUE(full.ok()) << full.status();
    const int64_t V = model->config.vocab_size;
    for (int64_t v = 0; v < V; ++v) {
      ASSERT_NEAR((*logits)[v], full->logits[(in.seq - 1) * V + v], 1e-5) << v;
    }
    EXPECT_FALSE(bloom_decode_step(*model, *backend, cache, ids.data(), 1).ok())
        << "a full cache must be refused";
  }
}

TEST(BloomForward, RejectsBadInputsWithOneLineErrors) {
  absl::StatusOr<BloomModel> model = load_fixture_model("bloom-h4-l2");
  ASSERT_TRUE(model.ok()) << model.status();
  std::unique_ptr<Backend> backend = make_cpu_backend();
  std::vector<int32_t> ids = {1, 5, 260};
  ForwardInputs in;
  in.batch = 1, in.seq = 3, in.ids = ids.data();
  absl::StatusOr<ForwardResult> r = bloom_forward(*model, *backend, in);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("position 2"), std::string::npos) << r.status();
  ids[2] = 7;
  std::vector<uint8_t> mask = {1, 2, 1};
  in.mask = mask.data();
  EXPECT_FALSE(bloom_forward(*model, *backend, in).ok());
  in.mask = nullptr;
  in.seq = 0;
  EXPECT_FALSE(bloom_forward(*model, *backend, in).ok());
}

TEST(BloomForward, NonFiniteWeightIsReportedByTensorName) {
  absl::StatusOr<BloomModel> model = load_fixture_model("bloom-h4-l2");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(check_finite_parameters(*model).ok());
  absl::StatusOr<TensorView> v = model->arena.view("h.1.mlp.dense_4h_to_h.bias");
  ASSERT_TRUE(v.ok());
  v->as<float>()[3] = std::nanf("");
  const absl::Status s = check_finite_parameters(*model);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("h.1.mlp.dense_4h_to_h.bias"), std::string::npos) << s;
  v->as<float>()[3] = INFINITY;
  EXPECT_FALSE(check_finite_parameters(*model).ok());
}

TEST(BloomForward, NextTokenTargetsSkipPadding) {
  const std::vector<int32_t> ids = {3, 3, 1, 8, 9, 1, 8, 9, 3, 3};
  const std::vector<uint8_t> mask = {0, 0, 1, 1, 1, 1, 1, 1, 0, 0};
  const std::vector<int32_t> want = {-1, -1, 8, 9, -1, 8, 9, -1, -1, -1};
  EXPECT_EQ(next_token_targets(ids.data(), mask.data(), 2, 5), want);
}

}  // namespace
}  // namespace engine
