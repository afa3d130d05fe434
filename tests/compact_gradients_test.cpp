// CompactGradients' run-length mapping between compact positions and arena offsets, against a
// plain scan of the bit words (the layout the optimizer state and checkpoints use: trainable
// elements in ascending arena order).
#include <random>
#include <vector>

#include "engine/tape.h"
#include "gtest/gtest.h"

namespace engine {
namespace {

struct Mask {
  int64_t elements = 0;
  std::vector<uint64_t> words;
  void set_range(int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) words[e >> 6] |= uint64_t{1} << (e & 63);
  }
  std::vector<int64_t> trainable_indices() const {
    std::vector<int64_t> out;
    for (int64_t e = 0; e < elements; ++e) {
      if ((words[e >> 6] >> (e & 63)) & 1u) out.push_back(e);
    }
    return out;
  }
};

// Whole trainable words, whole frozen words, single bits and a partial last word.
Mask mixed_mask() {
  Mask m;
  m.elements = 64 * 9 + 37;
  m.words.assign(10, 0);
  m.set_range(3, 5);             // inside word 0
  m.set_range(64, 192);          // words 1-2 entirely
  m.set_range(200, 201);         // one bit
  m.set_range(255, 320);         // crosses a word boundary
  m.set_range(576, m.elements);  // the partial last word, to the end
  std::mt19937 rng(7);
  for (int k = 0; k < 40; ++k) {
    const int64_t e = 384 + static_cast<int64_t>(rng() % 128);
    m.set_range(e, e + 1);
  }
  return m;
}

TEST(CompactGradients, RunsMapExactlyLikeTheExplicitOffsetList) {
  const Mask mask = mixed_mask();
  const std::vector<int64_t> want = mask.trainable_indices();
  CompactGradients g(mask.words, mask.elements);
  ASSERT_EQ(g.size(), static_cast<int64_t>(want.size()));
  for (int64_t i = 0; i < g.size(); ++i) ASSERT_EQ(g.arena_index(i), want[i]) << i;
  // Chunks of every size from every start reproduce the same offsets.
  for (int64_t first : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{130}, g.size() - 1}) {
    for (int64_t count : {int64_t{1}, int64_t{7}, g.size() - first}) {
      if (first + count > g.size()) continue;
      std::vector<int64_t> got(static_cast<size_t>(count), -1);
      g.arena_indices(first, count, got.data());
      for (int64_t k = 0; k < count; ++k) ASSERT_EQ(got[k], want[first + k]) << first << "+" << k;
    }
  }
}

TEST(CompactGradients, AccumulateLandsOnTheCompactPositionsOfTrainableElements) {
  const Mask mask = mixed_mask();
  const std::vector<int64_t> want = mask.trainable_indices();
  CompactGradients g(mask.words, mask.elements);
  // One "parameter" covering the whole arena as 1 x elements; add its offset + 1 everywhere.
  TapeParameter p;
  p.arena_offset = 0, p.rows = 1, p.cols = mask.elements;
  std::vector<float> values(static_cast<size_t>(mask.elements));
  for (int64_t e = 0; e < mask.elements; ++e) values[e] = static_cast<float>(e + 1);
  ASSERT_TRUE(g.accumulate(p, 0, 0, 1, mask.elements, values.data(), mask.elements).ok());
  for (int64_t i = 0; i < g.size(); ++i) {
    ASSERT_EQ(g.data()[i], static_cast<float>(want[i] + 1)) << i;
  }
  // A sub-block starting inside a frozen stretch.
  ASSERT_TRUE(g.zero().ok());
  ASSERT_TRUE(g.accumulate(p, 0, 250, 1, 20, values.data() + 250, 20).ok());
  for (int64_t i = 0; i < g.size(); ++i) {
    const bool inside = want[i] >= 250 && want[i] < 270;
    ASSERT_EQ(g.data()[i], inside ? static_cast<float>(want[i] + 1) : 0.0f) << i;
  }
}

TEST(CompactGradients, AccumulateOverABlockOfRowsWithMixedRuns) {
  // A (rows, cols) parameter at an offset, trainable elements in runs that cross row ends and
  // stop inside rows; a sub-block of it accumulated with a row stride wider than the block.
  const int64_t offset = 40, rows = 9, cols = 23, elements = offset + rows * cols + 17;
  std::vector<uint64_t> words(static_cast<size_t>((elements + 63) / 64), 0);
  std::vector<int64_t> trainable;
  for (int64_t e = 0; e < elements; ++e) {
    if ((e / 5) % 3 != 1 && e % 7 != 3) {
      words[static_cast<size_t>(e >> 6)] |= uint64_t{1} << (e & 63);
      trainable.push_back(e);
    }
  }
  CompactGradients g(words, elements);
  ASSERT_EQ(g.size(), static_cast<int64_t>(trainable.size()));
  TapeParameter p;
  p.arena_offset = offset, p.rows = rows, p.cols = cols;
  const int64_t r0 = 2, c0 = 4, nr = 5, nc = 13, ld = 31;
  std::vector<float> block(static_cast<size_t>(nr * ld));
  for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<float>(i + 1);
  // Twice: the second call reuses the cached segments and adds again.
  for (int pass = 1; pass <= 2; ++pass) {
    ASSERT_TRUE(g.accumulate(p, r0, c0, nr, nc, block.data(), ld).ok());
    for (int64_t i = 0; i < g.size(); ++i) {
      const int64_t e = trainable[static_cast<size_t>(i)] - offset;
      const int64_t r = e / cols - r0, c = e % cols - c0;
      const bool inside = e >= 0 && r >= 0 && r < nr && c >= 0 && c < nc;
      const float want = inside ? static_cast<float>(pass) * block[r * ld + c] : 0.0f;
      ASSERT_EQ(g.data()[i], want) << "pass " << pass << " compact " << i;
    }
  }
}

}  // namespace
}  // namespace engine
