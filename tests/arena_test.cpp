#include "engine/arena.h"

#include <gtest/gtest.h>

namespace engine {
namespace {

TEST(ParameterArena, OneAllocationAlignedViews) {
  ParameterArena arena;
  ASSERT_TRUE(arena.declare("a", {3, 5}).ok());
  ASSERT_TRUE(arena.declare("b", {7}).ok());
  ASSERT_TRUE(arena.allocate().ok());
  auto a = arena.view("a");
  auto b = arena.view("b");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->arena_offset, 0);
  EXPECT_EQ(b->arena_offset, 16);  // 15 elements rounded up to the 16-element alignment
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data) % 64, 0u);
  EXPECT_EQ(arena.parameter_elements(), 22);
  EXPECT_EQ(arena.size_elements(), 23);
  EXPECT_EQ(b->data, arena.base() + 16 * sizeof(float));
}

TEST(ParameterArena, RejectsDuplicatesBadShapesAndLateDeclarations) {
  ParameterArena arena;
  ASSERT_TRUE(arena.declare("w", {2, 2}).ok());
  EXPECT_EQ(arena.declare("w", {2}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(arena.declare("neg", {-1, 2}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(arena.declare("huge", {int64_t{1} << 40, int64_t{1} << 40}).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(arena.allocate().ok());
  EXPECT_EQ(arena.declare("late", {1}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(arena.view("missing").status().code(), absl::StatusCode::kNotFound);
}

// Row and column sub-views address the right elements and remember their arena offsets.
TEST(ParameterArena, SubBlockViews) {
  ParameterArena arena;
  ASSERT_TRUE(arena.declare("pad", {5}).ok());
  ASSERT_TRUE(arena.declare("w", {6, 4}).ok());
  ASSERT_TRUE(arena.allocate().ok());
  auto w = arena.view("w");
  ASSERT_TRUE(w.ok());
  float* data = w->as<float>();
  for (int i = 0; i < 24; ++i) data[i] = static_cast<float>(i);

  auto r = w->rows(2, 5);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(r->as<float>()[0], 8.0f);
  EXPECT_EQ(r->arena_offset, w->arena_offset + 8);
  EXPECT_TRUE(r->is_contiguous());

  auto c = w->cols(1, 3);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->shape, (std::vector<int64_t>{6, 2}));
  EXPECT_EQ(c->strides, (std::vector<int64_t>{4, 1}));
  EXPECT_FALSE(c->is_contiguous());
  EXPECT_EQ(c->as<float>()[1 * c->strides[0] + 1], 6.0f);  // element (1, 2) of w
  EXPECT_EQ(c->arena_offset, w->arena_offset + 1);

  EXPECT_FALSE(w->rows(4, 7).ok());
  EXPECT_FALSE(w->cols(3, 2).ok());
  EXPECT_NE(w->rows(0, 9).status().message().find("w"), std::string::npos);
}

}  // namespace
}  // namespace engine
