// config.json of an ALiBi model family (BLOOM, Falcon with alibi, MPT): reading, validating and
// writing back. model_type picks the family ("bloom" or absent, "falcon", "mpt"); the fields each
// family reads and the variants it refuses are listed in docs/FORMATS.md ("Model families").
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

// Which released architecture a model follows. The engine runs one block graph for all of them;
// the family picks tensor names, which tensors exist and a few op choices (FamilyTraits below).
enum class ModelFamily { kBloom, kFalcon, kMpt };

const char* family_name(ModelFamily f);

struct BloomConfig {
  ModelFamily family = ModelFamily::kBloom;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  double layer_norm_epsilon = 1e-5;

  // Falcon: "bias" (the Linear layers' biases). BLOOM always true, MPT always false.
  bool linear_bias = true;
  // MPT attn_config: clip_qkv (0 = none), softmax_scale (0 = 1/sqrt(head_dim)), alibi_bias_max;
  // MPT max_seq_len (the longest key range its ALiBi tensor covers; 0 = unbounded).
  double clip_qkv = 0.0;
  double softmax_scale = 0.0;
  double alibi_bias_max = 8.0;
  int64_t max_seq_len = 0;
  // tie_word_embeddings: true = the LM head is the embedding matrix (every released BLOOM, MPT);
  // false = a separate lm_head.weight (V, C) parameter (Falcon, BLOOM configs that say so).
  bool tie_word_embeddings = true;

  int64_t head_dim() const { return hidden_size / n_head; }
  nlohmann::json raw;  // the full original object, unknown keys kept
};

absl::StatusOr<BloomConfig> parse_bloom_config(const nlohmann::json& j,
                                               const std::string& source_name);
absl::StatusOr<BloomConfig> load_bloom_config(const std::filesystem::path& file);
nlohmann::json bloom_config_to_json(const BloomConfig& c);

// ALiBi slope of every head (METHOD.md section 1); element 0 is head 0, the steepest.
std::vector<float> alibi_slopes(int64_t n_head);

// MPT's slopes (transformers' build_mpt_alibi_tensor, MosaicML's formula): with P the power of two
// at or above n_head, slope_k = 2^(-k * alibi_bias_max / P), k = 1..P; for n_head < P the odd k
// first, then the even ones, cut to n_head.
std::vector<float> mpt_alibi_slopes(int64_t n_head, double alibi_bias_max);

// The op choices a family makes inside the one block graph (docs/FORMATS.md, "Model families").
struct FamilyTraits {
  bool embedding_layernorm;  // BLOOM's word_embeddings_layernorm after the embedding
  bool linear_bias;          // the four Linear layers carry biases
  bool layernorm_bias;       // the LayerNorms carry biases
  bool gelu_exact;           // exact erf GELU (else BLOOM's tanh form)
  bool qkv_blocks;           // the checkpoint stores the fused QKV as [Q; K; V] (else per head
                             // (H, 3, D)); the arena always holds the per-head order
  bool key_index_positions;  // ALiBi distances from the key index (MPT), not the cumulative
                             // count of real tokens (BLOOM, Falcon)
  bool alibi_bf16_product;   // the ALiBi bias is bf16(bf16(slope) * bf16(pos)) / sqrt(D): the
                             // product taken in bfloat16 (Falcon, transformers'
                             // build_alibi_tensor); else slope * pos in fp32 (BLOOM, MPT)
};
FamilyTraits family_traits(const BloomConfig& c);

// What the attention kernel is given for the family: s = q.k * attention_scale + slope * pos.
// BLOOM: 1/sqrt(D) and alibi_slopes. Falcon adds its ALiBi before the 1/sqrt(D) scaling, with the
// slopes rounded to bfloat16 (transformers' build_alibi_tensor): slopes bf16(slope) / sqrt(D).
// MPT: softmax_scale (default 1/sqrt(D)) and mpt_alibi_slopes, unscaled.
// These are the slopes every position's bias grows by (reports, statistics); for Falcon the
// kernel gets the bias through kernel_slopes and attention_bias_divisor instead.
std::vector<float> attention_slopes(const BloomConfig& c);
float attention_scale(const BloomConfig& c);

// What AlibiAttentionParams is given (engine/backend.h): `slopes` and `bf16_bias_divisor`.
// BLOOM, MPT: attention_slopes and 0 (the fp32 product). Falcon (alibi_bf16_product): the
// unscaled bf16(slope) and sqrt(D) as a float, so the kernel computes transformers' Falcon bias
// bf16(bf16(slope) * bf16(pos)) / sqrt(D): the product in bfloat16 first, the division in fp32.
std::vector<float> kernel_slopes(const BloomConfig& c);
float attention_bias_divisor(const BloomConfig& c);

}  // namespace engine
