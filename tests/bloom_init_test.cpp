#include "model/bloom_init.h"

#include <cmath>
#include <cstring>

#include <gtest/gtest.h>

namespace engine {
namespace {

BloomModel make(int64_t layers) {
  BloomConfig c;
  c.vocab_size = 260;
  c.hidden_size = 64;
  c.n_layer = layers;
  c.n_head = 4;
  auto m = allocate_bloom_model(c);
  EXPECT_TRUE(m.ok()) << m.status();
  return *std::move(m);
}

// Sample std of a parameter.
double stddev_of(const BloomModel& m, const std::string& name) {
  auto v = m.arena.view(name);
  EXPECT_TRUE(v.ok());
  const float* w = v->as<float>();
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < v->numel(); ++i) {
    sum += w[i];
    sq += static_cast<double>(w[i]) * w[i];
  }
  const double mean = sum / v->numel();
  return std::sqrt(sq / v->numel() - mean * mean);
}

TEST(BloomInit, FollowsBloomRecipe) {
  BloomModel m = make(4);
  ASSERT_TRUE(init_bloom_weights(m, 7).ok());
  // 64*260 = 16640 draws: the sample std is within a few percent of the target.
  EXPECT_NEAR(stddev_of(m, "word_embeddings.weight"), 0.0048, 0.0048 * 0.03);
  EXPECT_NEAR(stddev_of(m, "h.2.self_attention.query_key_value.weight"), 0.0048, 0.0048 * 0.03);
  EXPECT_NEAR(stddev_of(m, "h.2.mlp.dense_h_to_4h.weight"), 0.0048, 0.0048 * 0.03);
  const double scaled = 0.0048 / std::sqrt(8.0);
  EXPECT_NEAR(stddev_of(m, "h.1.self_attention.dense.weight"), scaled, scaled * 0.05);
  EXPECT_NEAR(stddev_of(m, "h.3.mlp.dense_4h_to_h.weight"), scaled, scaled * 0.03);
  for (const char* ones : {"ln_f.weight", "h.0.input_layernorm.weight",
                           "word_embeddings_layernorm.weight"}) {
    auto v = m.arena.view(ones);
    ASSERT_TRUE(v.ok());
    for (int64_t i = 0; i < v->numel(); ++i) ASSERT_EQ(v->as<float>()[i], 1.0f) << ones;
  }
  for (const char* zeros : {"ln_f.bias", "h.0.self_attention.query_key_value.bias",
                            "h.3.mlp.dense_4h_to_h.bias"}) {
    auto v = m.arena.view(zeros);
    ASSERT_TRUE(v.ok());
    for (int64_t i = 0; i < v->numel(); ++i) ASSERT_EQ(v->as<float>()[i], 0.0f) << zeros;
  }
}

TEST(BloomInit, DeterministicPerSeed) {
  BloomModel a = make(2), b = make(2), c = make(2);
  ASSERT_TRUE(init_bloom_weights(a, 1).ok());
  ASSERT_TRUE(init_bloom_weights(b, 1).ok());
  ASSERT_TRUE(init_bloom_weights(c, 2).ok());
  EXPECT_EQ(std::memcmp(a.arena.base(), b.arena.base(), a.arena.size_bytes()), 0);
  EXPECT_NE(std::memcmp(a.arena.base(), c.arena.base(), a.arena.size_bytes()), 0);
}

}  // namespace
}  // namespace engine
