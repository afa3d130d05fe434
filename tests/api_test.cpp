// The public API (engine/include/engine/engine.h), used as an embedding program would.
#include <engine/engine.h>

#include <cmath>
#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/reference_data.h"

namespace {

using ::engine::testing::fixture_model_dir;
using ::engine::testing::ReferenceData;
using ::testing::HasSubstr;
namespace api = ::engine::api;

// The fixture's "batch" case: 3 unpadded sequences.
std::vector<std::vector<int32_t>> batch_case(const ReferenceData& ref, std::vector<int64_t>* shape) {
  const std::vector<int32_t> ids = ref.get<int32_t>("batch.input_ids", shape);
  std::vector<std::vector<int32_t>> out;
  for (int64_t b = 0; b < (*shape)[0]; ++b) {
    out.emplace_back(ids.begin() + b * (*shape)[1], ids.begin() + (b + 1) * (*shape)[1]);
  }
  return out;
}

TEST(PublicApi, ForwardMatchesTransformers) {
  auto model = api::Model::load(fixture_model_dir("bloom-h6-l3").string());
  ASSERT_TRUE(model.ok()) << model.error();
  const api::ModelInfo info = model->info();
  EXPECT_EQ(info.n_layer, 3);
  EXPECT_EQ(info.n_head, 6);
  EXPECT_EQ(info.alibi_slopes.size(), 6u);

  ReferenceData ref("bloom-h6-l3");
  std::vector<int64_t> shape;
  const auto seqs = batch_case(ref, &shape);
  api::ForwardOptions options;
  options.logits = true;
  options.head_statistics = true;
  auto out = model->forward(seqs, options);
  ASSERT_TRUE(out.ok()) << out.error();
  EXPECT_NEAR(out->loss, ref.get<float>("batch.loss")[0], 1e-5 * std::fabs(out->loss));
  const std::vector<float> logits = ref.get<float>("batch.logits");
  ASSERT_EQ(out->logits.size(), logits.size());
  for (size_t i = 0; i < logits.size(); ++i) ASSERT_NEAR(out->logits[i], logits[i], 1e-4) << i;
  const std::vector<float> bos = ref.get<float>("batch.bos_mass");  // (B, L, H)
  ASSERT_EQ(out->stats.size(), 3u);
  for (size_t b = 0; b < 3; ++b) {
    for (const api::HeadValues& h : out->stats[b]) {
      EXPECT_NEAR(h.bos_mass, bos[(b * 3 + h.layer) * 6 + h.head], 1e-5);
    }
  }
}

TEST(PublicApi, ErrorsAreReturnedNotThrown) {
  auto missing = api::Model::load("/nonexistent/model");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.error(), HasSubstr("/nonexistent/model"));
  auto plan = api::Plan::parse(R"({"version":1,"targets":[{"layer":0,"head":0}],"x":1})", "p.json");
  ASSERT_FALSE(plan.ok());
  EXPECT_THAT(plan.error(), HasSubstr("p.json: field \"x\": unknown key"));

  auto model = api::Model::load(fixture_model_dir("bloom-h4-l2").string());
  ASSERT_TRUE(model.ok());
  auto bad_plan = model->apply_plan(api::Plan::for_targets({{5, 0}}));
  ASSERT_FALSE(bad_plan.ok());
  EXPECT_THAT(bad_plan.error(), HasSubstr("layer 5 is out of range"));
  EXPECT_FALSE(model->forward({}).ok());
  EXPECT_FALSE(model->forward({{1, 2}, {}}).ok());
  EXPECT_THAT(model->forward({{1, 100000}}).error(), HasSubstr("100000"));
  EXPECT_FALSE(model->save("/tmp/unused", "f8").ok());
}

// Two models in one process are independent: surgery on one leaves the other's outputs unchanged.
TEST(PublicApi, TwoModelsAreIndependent) {
  auto a = api::Model::load(fixture_model_dir("bloom-h4-l2").string());
  auto b = api::Model::load(fixture_model_dir("bloom-h4-l2").string());
  ASSERT_TRUE(a.ok() && b.ok());
  const std::vector<std::vector<int32_t>> probe = {{5, 9, 17, 33, 65, 129, 7, 3}};
  auto before = b->forward(probe);
  ASSERT_TRUE(before.ok());
  auto summary = a->apply_plan(api::Plan::for_targets({{1, 2}, {0, 3}}, 11));
  ASSERT_TRUE(summary.ok()) << summary.error();
  const int64_t c = 64, d = 16;
  EXPECT_EQ(summary->trainable_elements, 2 * (3 * d * c + 3 * d + c * d));
  auto a_after = a->forward(probe);
  auto b_after = b->forward(probe);
  ASSERT_TRUE(a_after.ok() && b_after.ok());
  EXPECT_EQ(b_after->loss, before->loss);
  EXPECT_NE(a_after->loss, before->loss);
}

TEST(PublicApi, PlanRoundTripAndSave) {
  api::Plan plan = api::Plan::for_targets({{0, 1}, {1, 3}}, 5);
  auto again = api::Plan::parse(plan.to_json());
  ASSERT_TRUE(again.ok()) << again.error();
  ASSERT_EQ(again->targets().size(), 2u);
  EXPECT_EQ(again->targets()[1].layer, 1);
  EXPECT_EQ(again->targets()[1].head, 3);

  auto model = api::Model::load(fixture_model_dir("bloom-h4-l2").string());
  ASSERT_TRUE(model.ok());
  const auto dir = std::filesystem::temp_directory_path() / "engine_api_save";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(model->save(dir.string(), "bf16").ok());
  auto reloaded = api::Model::load(dir.string());
  ASSERT_TRUE(reloaded.ok()) << reloaded.error();
  EXPECT_EQ(reloaded->info().parameters, model->info().parameters);
  std::filesystem::remove_all(dir);
}

TEST(PublicApi, PerplexityIsExpOfMeanNll) {
  auto model = api::Model::load(fixture_model_dir("bloom-h4-l2").string());
  ASSERT_TRUE(model.ok());
  const std::vector<std::vector<int32_t>> docs = {{5, 9, 17, 33, 65, 129, 7, 3, 8, 8, 8}};
  auto p = model->perplexity(docs, {16, 8});
  ASSERT_TRUE(p.ok()) << p.error();
  EXPECT_EQ(p->tokens_scored, 10);
  EXPECT_NEAR(p->ppl, std::exp(p->nll), 1e-9 * p->ppl);
  auto f = model->forward(docs);
  ASSERT_TRUE(f.ok());
  EXPECT_NEAR(p->nll, f->loss, 1e-6);
}

}  // namespace
