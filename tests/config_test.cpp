// config.json parsing and writing, and the ALiBi slopes derived from n_head.
// The written keys are checked against what transformers' BloomConfig.to_dict() writes
// (hidden_size, n_head, n_layer: verified with transformers 5.24); the slopes against values
// transformers' build_alibi_tensor produced (see AlibiSlopes below).
#include "model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace engine {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

json released_style() {
  return json::parse(R"({"vocab_size": 250880, "hidden_size": 1024, "n_head": 16, "n_layer": 24,
                         "layer_norm_epsilon": 1e-05, "model_type": "bloom",
                         "offset_alibi": 100, "seq_length": 2048})");
}

std::string error_of(const json& j) {
  absl::StatusOr<BloomConfig> c = parse_bloom_config(j, "dir/config.json");
  EXPECT_FALSE(c.ok());
  if (c.ok()) return "";
  const std::string message(c.status().message());
  EXPECT_THAT(message, HasSubstr("dir/config.json"));
  return message;
}

TEST(BloomConfig, ParsesCanonicalSpelling) {
  absl::StatusOr<BloomConfig> c = parse_bloom_config(released_style(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 250880);
  EXPECT_EQ(c->hidden_size, 1024);
  EXPECT_EQ(c->n_head, 16);
  EXPECT_EQ(c->n_layer, 24);
  EXPECT_EQ(c->head_dim(), 64);
  EXPECT_DOUBLE_EQ(c->layer_norm_epsilon, 1e-5);
}

TEST(BloomConfig, ParsesAliasSpellingAndDefaultsEpsilon) {
  const json j = json::parse(R"({"vocab_size": 250880, "n_embed": 2048,
                                 "num_attention_heads": 16, "num_hidden_layers": 24})");
  absl::StatusOr<BloomConfig> c = parse_bloom_config(j, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->n_head, 16);
  EXPECT_EQ(c->n_layer, 24);
  EXPECT_EQ(c->head_dim(), 128);
  EXPECT_DOUBLE_EQ(c->layer_norm_epsilon, 1e-5);
}

TEST(BloomConfig, BothSpellingsMustAgree) {
  json j = released_style();
  j["n_embed"] = 1024;
  EXPECT_TRUE(parse_bloom_config(j, "config.json").ok());
  j["n_embed"] = 2048;
  EXPECT_THAT(error_of(j), HasSubstr("field n_embed (2048) disagrees with hidden_size (1024)"));
}

TEST(BloomConfig, WritesTransformersKeysAndKeepsUnknownOnes) {
  const json j = json::parse(R"({"vocab_size": 64, "n_embed": 32, "num_attention_heads": 4,
                                 "n_layer": 2, "offset_alibi": 100,
                                 "nested": {"keep": [1, 2]}})");
  absl::StatusOr<BloomConfig> c = parse_bloom_config(j, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->raw, j);
  const json out = bloom_config_to_json(*c);
  EXPECT_EQ(out["hidden_size"], 32);
  EXPECT_EQ(out["n_head"], 4);
  EXPECT_EQ(out["n_layer"], 2);
  EXPECT_EQ(out["vocab_size"], 64);
  EXPECT_DOUBLE_EQ(out["layer_norm_epsilon"].get<double>(), 1e-5);
  EXPECT_FALSE(out.contains("n_embed"));
  EXPECT_FALSE(out.contains("num_attention_heads"));
  EXPECT_EQ(out["offset_alibi"], 100);
  EXPECT_EQ(out["nested"], j["nested"]);
  EXPECT_EQ(out["model_type"], "bloom");
  EXPECT_EQ(out["architectures"], json::array({"BloomForCausalLM"}));
  // What we write parses back to the same architecture.
  absl::StatusOr<BloomConfig> again = parse_bloom_config(out, "config.json");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->hidden_size, 32);
  EXPECT_EQ(again->n_head, 4);
}

TEST(BloomConfig, ErrorsNameFieldAndSource) {
  EXPECT_THAT(error_of(json::array()), HasSubstr("config is not a JSON object"));
  json j = released_style();
  j.erase("vocab_size");
  EXPECT_THAT(error_of(j), HasSubstr("field vocab_size is missing"));
  j = released_style();
  j.erase("hidden_size");
  EXPECT_THAT(error_of(j), HasSubstr("field hidden_size is missing (also looked for n_embed)"));
  j = released_style();
  j["n_head"] = "16";
  EXPECT_THAT(error_of(j), HasSubstr("field n_head must be an integer, got \"16\""));
  j["n_head"] = 16.5;
  EXPECT_THAT(error_of(j), HasSubstr("field n_head must be an integer, got 16.5"));
  j["n_head"] = true;
  EXPECT_THAT(error_of(j), HasSubstr("field n_head must be an integer"));
  j = released_style();
  j["n_layer"] = 0;
  EXPECT_THAT(error_of(j), HasSubstr("field n_layer must be positive, got 0"));
  j["n_layer"] = -3;
  EXPECT_THAT(error_of(j), HasSubstr("field n_layer must be positive, got -3"));
  j = released_style();
  j["vocab_size"] = uint64_t{1} << 40;
  EXPECT_THAT(error_of(j), HasSubstr("field vocab_size is 1099511627776, above the limit"));
  j = released_style();
  j["n_head"] = 12;
  EXPECT_THAT(error_of(j), HasSubstr("field hidden_size (1024) is not divisible by n_head (12)"));
  j = released_style();
  j["layer_norm_epsilon"] = -1e-5;
  EXPECT_THAT(error_of(j), HasSubstr("field layer_norm_epsilon must be positive and finite"));
  j["layer_norm_epsilon"] = "small";
  EXPECT_THAT(error_of(j), HasSubstr("field layer_norm_epsilon must be a number"));
  j = released_style();
  j["model_type"] = "gpt2";
  EXPECT_THAT(error_of(j), HasSubstr("field model_type is \"gpt2\", expected \"bloom\""));
  j = released_style();
  j["tie_word_embeddings"] = "no";
  EXPECT_THAT(error_of(j), HasSubstr("field tie_word_embeddings must be true or false"));
  j = released_style();
  j["apply_residual_connection_post_layernorm"] = true;
  EXPECT_THAT(error_of(j), HasSubstr("field apply_residual_connection_post_layernorm is true"));
}

TEST(BloomConfig, LoadsFromFileAndReportsBadFiles) {
  const std::filesystem::path dir = ::testing::TempDir();
  const std::filesystem::path good = dir / "config_test_good.json";
  std::ofstream(good) << released_style().dump(2);
  absl::StatusOr<BloomConfig> c = load_bloom_config(good);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_layer, 24);

  const std::filesystem::path bad = dir / "config_test_bad.json";
  std::ofstream(bad) << "{\"vocab_size\": ";
  absl::StatusOr<BloomConfig> b = load_bloom_config(bad);
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(std::string(b.status().message()), HasSubstr("config_test_bad.json: not valid JSON"));

  absl::StatusOr<BloomConfig> m = load_bloom_config(dir / "config_test_missing.json");
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()),
              HasSubstr("config_test_missing.json: cannot open"));
  std::filesystem::remove(good);
  std::filesystem::remove(bad);
}

// Reference slopes from transformers' build_alibi_tensor (5.24, float32), read off as
// alibi[h, 0, 1] (slope times key position 1). transformers raises a float32-rounded base to
// integer powers, which drifts a few ulp from the exact 2^(-8k/p) the engine computes, so the
// tolerance is 1e-6 relative (about 8 ulp); a wrong exponent or head order is off by >= 2x.
TEST(AlibiSlopes, MatchTransformers) {
  const std::vector<double> six{0x1p-2, 0x1p-4, 0x1p-6, 0x1p-8, 0x1p-1, 0x1p-3};
  const std::vector<double> sixteen{0x1.6a09e6p-1, 0x1.fffffep-2, 0x1.6a09e6p-2, 0x1.fffffep-3,
                                    0x1.6a09e4p-3, 0x1.fffffcp-4, 0x1.6a09e4p-4, 0x1.fffffcp-5,
                                    0x1.6a09e2p-5, 0x1.fffffap-6, 0x1.6a09e2p-6, 0x1.fffffap-7,
                                    0x1.6a09e0p-7, 0x1.fffff8p-8, 0x1.6a09e0p-8, 0x1.fffff6p-9};
  for (const std::vector<double>* ref : {&six, &sixteen}) {
    const std::vector<float> got = alibi_slopes(static_cast<int64_t>(ref->size()));
    ASSERT_EQ(got.size(), ref->size());
    for (size_t h = 0; h < got.size(); ++h) {
      EXPECT_NEAR(got[h], (*ref)[h], 1e-6 * (*ref)[h]) << "head " << h << " of " << ref->size();
    }
  }
  EXPECT_TRUE(alibi_slopes(0).empty());
}

}  // namespace
}  // namespace engine
