// BLOOM's initialisation for training from scratch: every weight matrix and the embedding drawn
// from N(0, std^2) (BLOOM used std 0.0048), the two output projections of each block
// (self_attention.dense and mlp.dense_4h_to_h) scaled by 1/sqrt(2 * n_layer), LayerNorm weights 1,
// every bias 0. Deterministic: a pure function of the seed (engine/random.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "model/model_directory.h"

namespace engine {

inline constexpr double kBloomInitStd = 0.0048;

absl::Status init_bloom_weights(BloomModel& model, uint64_t seed, double stddev = kBloomInitStd);

}  // namespace engine
