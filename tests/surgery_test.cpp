// Surgery as views + FrozenMask: which elements change, which stay bit-identical, determinism.
#include "surgery/head_surgery.h"

#include <cmath>
#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace engine {
namespace {

constexpr HeadGeometry kGeometry{3, 4, 8};  // 3 layers, 4 heads of dim 8: C = 32

// An arena holding the attention parameters surgery touches plus a neighbour, filled with
// distinct random values so any stray write is visible.
ParameterArena make_arena() {
  ParameterArena arena;
  const int64_t c = kGeometry.hidden();
  for (int64_t l = 0; l < kGeometry.n_layer; ++l) {
    EXPECT_TRUE(arena.declare(absl::StrCat("h.", l, ".input_layernorm.weight"), {c}).ok());
    EXPECT_TRUE(arena.declare(absl::StrCat("h.", l, ".self_attention.query_key_value.weight"),
                              {3 * c, c}).ok());
    EXPECT_TRUE(arena.declare(absl::StrCat("h.", l, ".self_attention.query_key_value.bias"),
                              {3 * c}).ok());
    EXPECT_TRUE(arena.declare(absl::StrCat("h.", l, ".self_attention.dense.weight"), {c, c}).ok());
  }
  EXPECT_TRUE(arena.allocate().ok());
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  float* base = reinterpret_cast<float*>(arena.base());
  for (int64_t i = 0; i < arena.size_elements(); ++i) base[i] = dist(rng);
  return arena;
}

std::vector<float> snapshot(const ParameterArena& arena) {
  const float* base = reinterpret_cast<const float*>(arena.base());
  return std::vector<float>(base, base + arena.size_elements());
}

// Independent description of the slices: (arena element) -> which slice, from the layout rules
// in METHOD.md section 3, computed element by element.
enum class Slice { kNone, kQkvWeight, kQkvBias, kDense };
Slice slice_of(const ParameterArena& arena, int64_t element, const std::vector<HeadTarget>& targets) {
  const int64_t d = kGeometry.head_dim, c = kGeometry.hidden();
  for (const HeadTarget& t : targets) {
    const auto w = *arena.view(absl::StrCat("h.", t.layer, ".self_attention.query_key_value.weight"));
    const auto b = *arena.view(absl::StrCat("h.", t.layer, ".self_attention.query_key_value.bias"));
    const auto o = *arena.view(absl::StrCat("h.", t.layer, ".self_attention.dense.weight"));
    if (element >= w.arena_offset && element < w.arena_offset + w.numel()) {
      const int64_t row = (element - w.arena_offset) / c;
      if (row >= 3 * d * t.head && row < 3 * d * (t.head + 1)) return Slice::kQkvWeight;
    }
    if (element >= b.arena_offset && element < b.arena_offset + b.numel()) {
      const int64_t row = element - b.arena_offset;
      if (row >= 3 * d * t.head && row < 3 * d * (t.head + 1)) return Slice::kQkvBias;
    }
    if (element >= o.arena_offset && element < o.arena_offset + o.numel()) {
      const int64_t col = (element - o.arena_offset) % c;
      if (col >= d * t.head && col < d * (t.head + 1)) return Slice::kDense;
    }
  }
  return Slice::kNone;
}

SurgeryPlan plan_for(std::vector<HeadTarget> targets) {
  SurgeryPlan plan;
  plan.targets = std::move(targets);
  plan.seed = 42;
  return plan;
}

TEST(Surgery, ChangesExactlyTheTargetSlices) {
  ParameterArena arena = make_arena();
  const std::vector<float> before = snapshot(arena);
  const std::vector<HeadTarget> targets = {{1, 2}, {2, 0}, {2, 3}};
  auto mask = apply_surgery(arena, kGeometry, plan_for(targets));
  ASSERT_TRUE(mask.ok()) << mask.status();
  const std::vector<float> after = snapshot(arena);
  const double bound = std::sqrt(6.0 / (3 * kGeometry.head_dim + kGeometry.hidden()));
  for (int64_t i = 0; i < arena.size_elements(); ++i) {
    switch (slice_of(arena, i, targets)) {
      case Slice::kNone:
        ASSERT_EQ(std::memcmp(&before[i], &after[i], sizeof(float)), 0) << "element " << i;
        ASSERT_FALSE(mask->trainable(i)) << i;
        break;
      case Slice::kQkvWeight:
        ASSERT_LE(std::fabs(after[i]), bound) << i;
        ASSERT_NE(after[i], before[i]) << i;
        ASSERT_TRUE(mask->trainable(i)) << i;
        break;
      case Slice::kQkvBias:
      case Slice::kDense:
        ASSERT_EQ(after[i], 0.0f) << i;
        ASSERT_TRUE(mask->trainable(i)) << i;
        break;
    }
  }
  const int64_t d = kGeometry.head_dim, c = kGeometry.hidden();
  EXPECT_EQ(mask->trainable_count(), 3 * (3 * d * c + 3 * d + c * d));
}

TEST(Surgery, XavierUniformHasTheRightSpread) {
  ParameterArena arena = make_arena();
  auto mask = apply_surgery(arena, kGeometry, plan_for({{0, 1}}));
  ASSERT_TRUE(mask.ok());
  auto slices = head_slices(arena, kGeometry, {0, 1});
  ASSERT_TRUE(slices.ok());
  const float* w = slices->qkv_weight_rows.as<float>();
  const int64_t n = slices->qkv_weight_rows.numel();  // 24 x 32 = 768 draws
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    sum += w[i];
    sq += static_cast<double>(w[i]) * w[i];
  }
  const double bound = std::sqrt(6.0 / (24 + 32));
  const double expected_var = bound * bound / 3.0;
  EXPECT_NEAR(sum / n, 0.0, 4.0 * std::sqrt(expected_var / n));
  EXPECT_NEAR(sq / n, expected_var, 0.15 * expected_var);
}

TEST(Surgery, SameSeedSameWeightsWhateverTheTargetOrder) {
  ParameterArena a = make_arena();
  ParameterArena b = make_arena();
  ASSERT_TRUE(apply_surgery(a, kGeometry, plan_for({{0, 1}, {2, 3}})).ok());
  ASSERT_TRUE(apply_surgery(b, kGeometry, plan_for({{2, 3}, {0, 1}})).ok());
  EXPECT_EQ(std::memcmp(a.base(), b.base(), a.size_bytes()), 0);

  ParameterArena c = make_arena();
  SurgeryPlan other = plan_for({{0, 1}, {2, 3}});
  other.seed = 43;
  ASSERT_TRUE(apply_surgery(c, kGeometry, other).ok());
  EXPECT_NE(std::memcmp(a.base(), c.base(), a.size_bytes()), 0);
}

TEST(Surgery, KeepAndTrainableSubsets) {
  ParameterArena arena = make_arena();
  const std::vector<float> before = snapshot(arena);
  SurgeryPlan plan = plan_for({{1, 1}});
  plan.qkv_weight = QkvWeightInit::kKeep;
  plan.qkv_bias = QkvBiasInit::kKeep;
  plan.dense_columns = DenseColumnsInit::kKeep;
  plan.trainable = TrainableSlices{false, false, true};
  auto mask = apply_surgery(arena, kGeometry, plan);
  ASSERT_TRUE(mask.ok());
  EXPECT_EQ(std::memcmp(before.data(), arena.base(), arena.size_bytes()), 0);
  EXPECT_EQ(mask->trainable_count(), kGeometry.hidden() * kGeometry.head_dim);
  for (int64_t i : mask->trainable_indices()) {
    EXPECT_EQ(slice_of(arena, i, plan.targets), Slice::kDense) << i;
  }
}

TEST(Surgery, BadPlanModifiesNothing) {
  ParameterArena arena = make_arena();
  const std::vector<float> before = snapshot(arena);
  auto mask = apply_surgery(arena, kGeometry, plan_for({{0, 0}, {3, 0}}));
  ASSERT_FALSE(mask.ok());
  EXPECT_NE(mask.status().message().find("layer 3 is out of range"), absl::string_view::npos);
  EXPECT_EQ(std::memcmp(before.data(), arena.base(), arena.size_bytes()), 0);
}

TEST(FrozenMask, AllTrainableSkipsPaddingAndIndicesAscend) {
  ParameterArena arena;
  ASSERT_TRUE(arena.declare("a", {5}).ok());
  ASSERT_TRUE(arena.declare("b", {3}).ok());
  ASSERT_TRUE(arena.allocate().ok());
  FrozenMask mask = FrozenMask::all_trainable(arena);
  EXPECT_EQ(mask.trainable_count(), 8);
  EXPECT_EQ(mask.trainable_indices(), (std::vector<int64_t>{0, 1, 2, 3, 4, 16, 17, 18}));
}

TEST(FrozenMask, RangesAcrossWordBoundaries) {
  ParameterArena arena;
  ASSERT_TRUE(arena.declare("w", {5, 40}).ok());
  ASSERT_TRUE(arena.allocate().ok());
  auto w = arena.view("w");
  ASSERT_TRUE(w.ok());
  FrozenMask mask(arena.size_elements());
  auto cols = w->cols(30, 37);
  ASSERT_TRUE(cols.ok());
  ASSERT_TRUE(mask.mark_trainable(*cols).ok());
  for (int64_t r = 0; r < 5; ++r) {
    for (int64_t c = 0; c < 40; ++c) {
      EXPECT_EQ(mask.trainable(r * 40 + c), c >= 30 && c < 37) << r << "," << c;
    }
  }
  EXPECT_EQ(mask.trainable_count(), 35);
}

}  // namespace
}  // namespace engine
