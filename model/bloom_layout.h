// The parameter layout of a BLOOM model: every tensor of a released checkpoint, by its released
// name (no "transformer." prefix) and shape, in the order the arena stores them.
// Contract: the order is embedding, embedding LayerNorm, then per layer input LN, QKV, dense,
// post-attention LN, MLP, and finally ln_f; weights before biases. It never includes
// lm_head.weight (tied to word_embeddings.weight). C = hidden_size, V = vocab_size.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/arena.h"
#include "model/config.h"

namespace engine {

// Which part of the model a parameter belongs to (for reports such as `engine info`).
enum class BloomParameterGroup { kEmbedding, kEmbeddingLayerNorm, kAttention, kMlp, kLayerNorm,
                                 kFinalLayerNorm };

struct BloomParameterSpec {
  std::string name;
  std::vector<int64_t> shape;
  BloomParameterGroup group;
  int64_t layer = -1;  // block index, -1 outside the blocks
};

std::vector<BloomParameterSpec> bloom_parameter_specs(const BloomConfig& c);

// Declares every spec into `arena` (which must not be allocated yet).
absl::Status declare_bloom_parameters(const BloomConfig& c, ParameterArena& arena);

}  // namespace engine
