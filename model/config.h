// BLOOM's config.json: reading, validating and writing back.
// Contract: parse_bloom_config accepts both spellings transformers accepts (hidden_size or
// n_embed; n_head or num_attention_heads; n_layer or num_hidden_layers), checks types, ranges and
// the head split, and keeps the whole original object in `raw`. bloom_config_to_json writes the
// keys transformers' BloomConfig.to_dict writes (hidden_size, n_head, n_layer, vocab_size,
// layer_norm_epsilon), drops the alias spellings, and keeps every other key of `raw` unchanged.
// Errors are one line naming the source and the field.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace engine {

struct BloomConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  double layer_norm_epsilon = 1e-5;

  int64_t head_dim() const { return hidden_size / n_head; }
  nlohmann::json raw;  // the full original object, unknown keys kept
};

absl::StatusOr<BloomConfig> parse_bloom_config(const nlohmann::json& j,
                                               const std::string& source_name);
absl::StatusOr<BloomConfig> load_bloom_config(const std::filesystem::path& file);
nlohmann::json bloom_config_to_json(const BloomConfig& c);

// ALiBi slope of every head (METHOD.md section 1); element 0 is head 0, the steepest.
std::vector<float> alibi_slopes(int64_t n_head);

}  // namespace engine
