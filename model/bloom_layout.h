// The parameter layout of a model of any supported family (config.h): every tensor of a released
// checkpoint, by its released name (no "transformer." prefix) and shape, in the order the arena
// stores them.
// Contract: the order is embedding, embedding LayerNorm (BLOOM only), then per layer input LN,
// QKV, dense, post-attention LN, MLP, the final LN, and last lm_head.weight (V, C) when the config
// unties it (tie_word_embeddings false); weights before biases; tensors the family does not have
// (MPT's biases, Falcon's with bias: false, a tied head) are left out. C = hidden_size,
// V = vocab_size.
// The arena holds every fused QKV weight and bias with rows interleaved per head, (H, 3, D), for
// every family; a family whose checkpoint stores [Q; K; V] blocks (MPT) is permuted on load and
// on save (qkv_file_row). Names per family: docs/FORMATS.md, "Model families".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/arena.h"
#include "model/config.h"

namespace engine {

// Which part of the model a parameter belongs to (for reports such as `engine info`).
enum class BloomParameterGroup {
  kEmbedding,
  kEmbeddingLayerNorm,
  kAttention,
  kMlp,
  kLayerNorm,
  kFinalLayerNorm,
  kLmHead  // an untied LM head (tie_word_embeddings false)
};

struct BloomParameterSpec {
  std::string name;
  std::vector<int64_t> shape;
  BloomParameterGroup group;
  int64_t layer = -1;  // block index, -1 outside the blocks
};

// A parameter by what it does, whatever the family calls it.
enum class ParamRole {
  kEmbedding, kEmbLnWeight, kEmbLnBias,
  kLn1Weight, kLn1Bias, kQkvWeight, kQkvBias, kDenseWeight, kDenseBias,
  kLn2Weight, kLn2Bias, kFc1Weight, kFc1Bias, kFc2Weight, kFc2Bias,
  kLnfWeight, kLnfBias,
  kLmHead  // "lm_head.weight" when the config unties it, else none (the embedding serves)
};

// The released name (no prefix) of the role's tensor in block `layer` (ignored outside the
// blocks), or "" when the family has no such tensor.
std::string parameter_name(const BloomConfig& c, ParamRole role, int64_t layer = -1);

// The checkpoint row of arena row r (in [0, 3C)) of a fused QKV weight or bias: r itself for the
// per-head order; for [Q; K; V] blocks, arena row (h, part, d) is file row part * C + h * D + d.
int64_t qkv_file_row(const BloomConfig& c, int64_t r);

std::vector<BloomParameterSpec> bloom_parameter_specs(const BloomConfig& c);

// Declares every spec into `arena` (which must not be allocated yet).
absl::Status declare_bloom_parameters(const BloomConfig& c, ParameterArena& arena);

}  // namespace engine
