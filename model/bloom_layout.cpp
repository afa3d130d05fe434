#include "model/bloom_layout.h"

#include "absl/strings/str_cat.h"

namespace engine {

namespace {
// BLOOM's MLP widens the hidden state by this factor (dense_h_to_4h).
constexpr int64_t kMlpExpansion = 4;
// Rows of the fused query_key_value projection per hidden unit: Q, K and V.
constexpr int64_t kQkvParts = 3;
}  // namespace

std::vector<BloomParameterSpec> bloom_parameter_specs(const BloomConfig& c) {
  using G = BloomParameterGroup;
  const int64_t C = c.hidden_size;
  const int64_t V = c.vocab_size;
  std::vector<BloomParameterSpec> specs;
  specs.push_back({"word_embeddings.weight", {V, C}, G::kEmbedding});
  specs.push_back({"word_embeddings_layernorm.weight", {C}, G::kEmbeddingLayerNorm});
  specs.push_back({"word_embeddings_layernorm.bias", {C}, G::kEmbeddingLayerNorm});
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = absl::StrCat("h.", l, ".");
    specs.push_back({p + "input_layernorm.weight", {C}, G::kLayerNorm, l});
    specs.push_back({p + "input_layernorm.bias", {C}, G::kLayerNorm, l});
    specs.push_back({p + "self_attention.query_key_value.weight", {kQkvParts * C, C},
                     G::kAttention, l});  // (3C, C), rows interleaved per head
    specs.push_back({p + "self_attention.query_key_value.bias", {kQkvParts * C}, G::kAttention,
                     l});
    specs.push_back({p + "self_attention.dense.weight", {C, C}, G::kAttention, l});
    specs.push_back({p + "self_attention.dense.bias", {C}, G::kAttention, l});
    specs.push_back({p + "post_attention_layernorm.weight", {C}, G::kLayerNorm, l});
    specs.push_back({p + "post_attention_layernorm.bias", {C}, G::kLayerNorm, l});
    specs.push_back({p + "mlp.dense_h_to_4h.weight", {kMlpExpansion * C, C}, G::kMlp, l});
    specs.push_back({p + "mlp.dense_h_to_4h.bias", {kMlpExpansion * C}, G::kMlp, l});
    specs.push_back({p + "mlp.dense_4h_to_h.weight", {C, kMlpExpansion * C}, G::kMlp, l});
    specs.push_back({p + "mlp.dense_4h_to_h.bias", {C}, G::kMlp, l});
  }
  specs.push_back({"ln_f.weight", {C}, G::kFinalLayerNorm});
  specs.push_back({"ln_f.bias", {C}, G::kFinalLayerNorm});
  return specs;
}

absl::Status declare_bloom_parameters(const BloomConfig& c, ParameterArena& arena) {
  for (BloomParameterSpec& s : bloom_parameter_specs(c)) {
    if (absl::Status st = arena.declare(std::move(s.name), std::move(s.shape)); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace engine
