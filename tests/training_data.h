// Shared training data for the trainer tests: a small random corpus inside the fixture
// vocabulary, chunked exactly as `engine train` chunks its data.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "model/dataset.h"

namespace engine::testing_fixtures {

// 40 documents of 13-30 random ids in [4, 260), chunks of `seq` tokens, 10% held out.
inline ChunkedDataset random_id_dataset(int64_t seq) {
  Corpus corpus;
  std::mt19937 rng(5);
  std::uniform_int_distribution<uint32_t> id(4, 259);
  std::uniform_int_distribution<int> len(13, 30);
  for (int doc = 0; doc < 40; ++doc) {
    for (int t = len(rng); t > 0; --t) corpus.ids.push_back(id(rng));
    corpus.document_ends.push_back(corpus.ids.size());
  }
  const std::vector<uint32_t> separator = {10, 10};
  ChunkOptions co;
  co.seq_len = seq, co.holdout_fraction = 0.1, co.seed = 3;
  absl::StatusOr<ChunkedDataset> ds = ChunkedDataset::build(corpus, separator, co);
  EXPECT_TRUE(ds.ok()) << ds.status();
  return std::move(*ds);
}

}  // namespace engine::testing_fixtures
