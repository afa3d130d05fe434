#include "surgery/plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace engine {
namespace {

using ::testing::HasSubstr;

std::string error_of(const std::string& text) {
  auto p = parse_plan_text(text, "plan.json");
  EXPECT_FALSE(p.ok()) << text;
  return p.ok() ? "" : std::string(p.status().message());
}

TEST(Plan, DefaultsAreThePublishedMethod) {
  auto p = parse_plan_text(R"({"version":1,"targets":[{"layer":5,"head":14}]})", "plan.json");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->targets, (std::vector<HeadTarget>{{5, 14}}));
  EXPECT_EQ(p->qkv_weight, QkvWeightInit::kXavierUniform);
  EXPECT_EQ(p->qkv_bias, QkvBiasInit::kZero);
  EXPECT_EQ(p->dense_columns, DenseColumnsInit::kZero);
  EXPECT_EQ(p->trainable, (TrainableSlices{true, true, true}));
  EXPECT_EQ(p->seed, 0u);
}

TEST(Plan, FullFormRoundTrips) {
  const std::string text = R"({"version":1,"targets":[{"layer":0,"head":1},{"layer":3,"head":0}],
    "reinit":{"qkv_weight":"xavier_normal","qkv_bias":"keep","dense_columns":"keep"},
    "trainable":["dense_columns"],"seed":99,"comment":"ablation"})";
  auto p = parse_plan_text(text, "plan.json");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->qkv_weight, QkvWeightInit::kXavierNormal);
  EXPECT_EQ(p->qkv_bias, QkvBiasInit::kKeep);
  EXPECT_EQ(p->trainable, (TrainableSlices{false, false, true}));
  EXPECT_EQ(p->seed, 99u);
  auto again = parse_plan(plan_to_json(*p), "written");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *p);
  // The written form spells every field, exactly as documented.
  const nlohmann::json j = plan_to_json(*p);
  EXPECT_EQ(j["reinit"]["qkv_weight"], "xavier_normal");
  EXPECT_EQ(j["trainable"], nlohmann::json::array({"dense_columns"}));
  EXPECT_EQ(j["version"], 1);
}

TEST(Plan, StrictErrorsNameFieldAndValue) {
  EXPECT_THAT(error_of("[1]"), HasSubstr("JSON object"));
  EXPECT_THAT(error_of("{"), HasSubstr("not valid JSON"));
  EXPECT_THAT(error_of(R"({"targets":[{"layer":1,"head":1}]})"), HasSubstr("\"version\": missing"));
  EXPECT_THAT(error_of(R"({"version":2,"targets":[{"layer":1,"head":1}]})"),
              HasSubstr("unsupported value 2"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1,"head":1}],"lr":1})"),
              HasSubstr("\"lr\": unknown key"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[]})"), HasSubstr("empty"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1}]})"),
              HasSubstr("targets[0].head\": missing"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1,"head":2,"x":0}]})"),
              HasSubstr("targets[0].x\": unknown key"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":"1","head":2}]})"),
              HasSubstr("expected a non-negative integer, got \"1\""));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":-1,"head":2}]})"),
              HasSubstr("value -1 is negative"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1.5,"head":2}]})"),
              HasSubstr("got 1.5"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1,"head":2},{"layer":1,"head":2}]})"),
              HasSubstr("targets[1]\": duplicate target layer 1 head 2"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1,"head":2}],"reinit":{"qkv_weight":"he"}})"),
              HasSubstr("reinit.qkv_weight\": got \"he\", expected one of xavier_uniform"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1,"head":2}],"reinit":{"mlp":"zero"}})"),
              HasSubstr("reinit.mlp\": unknown key"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1,"head":2}],"trainable":[]})"),
              HasSubstr("at least one"));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1,"head":2}],"trainable":["mlp"]})"),
              HasSubstr("unknown slice \"mlp\""));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1,"head":2}],"seed":-3})"),
              HasSubstr("\"seed\""));
  EXPECT_THAT(error_of(R"({"version":1,"targets":[{"layer":1,"head":2}],"comment":5})"),
              HasSubstr("\"comment\": expected a string"));
}

TEST(Plan, ValidateAgainstModelShape) {
  auto p = parse_plan_text(R"({"version":1,"targets":[{"layer":1,"head":2},{"layer":4,"head":0}]})",
                           "plan.json");
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(validate_plan(*p, HeadGeometry{5, 3, 8}, "plan.json").ok());
  auto bad_layer = validate_plan(*p, HeadGeometry{4, 3, 8}, "plan.json");
  EXPECT_THAT(std::string(bad_layer.message()),
              HasSubstr("targets[1].layer\": layer 4 is out of range: the model has 4 layers"));
  auto bad_head = validate_plan(*p, HeadGeometry{5, 2, 8}, "plan.json");
  EXPECT_THAT(std::string(bad_head.message()), HasSubstr("targets[0].head\": head 2 is out of range"));
}

}  // namespace
}  // namespace engine
