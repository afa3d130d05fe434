#include "model/bloom_layout.h"

#include "absl/strings/str_cat.h"

namespace engine {

namespace {
// BLOOM's MLP widens the hidden state by this factor (dense_h_to_4h).
constexpr int64_t kMlpExpansion = 4;
// Rows of the fused query_key_value projection per hidden unit: Q, K and V.
constexpr int64_t kQkvParts = 3;
}  // namespace

std::string parameter_name(const BloomConfig& c, ParamRole role, int64_t layer) {
  using R = ParamRole;
  const FamilyTraits t = family_traits(c);
  const bool bias_role = role == R::kQkvBias || role == R::kDenseBias || role == R::kFc1Bias ||
                         role == R::kFc2Bias;
  const bool ln_bias_role = role == R::kEmbLnBias || role == R::kLn1Bias ||
                            role == R::kLn2Bias || role == R::kLnfBias;
  if (bias_role && !t.linear_bias) return "";
  if (ln_bias_role && !t.layernorm_bias) return "";
  if ((role == R::kEmbLnWeight || role == R::kEmbLnBias) && !t.embedding_layernorm) return "";
  // transformers' *ForCausalLM name, outside the "transformer." body, in every family.
  if (role == R::kLmHead) return c.tie_word_embeddings ? "" : "lm_head.weight";
  if (c.family == ModelFamily::kMpt) {
    const std::string b = absl::StrCat("blocks.", layer, ".");
    switch (role) {
      case R::kEmbedding: return "wte.weight";
      case R::kLn1Weight: return b + "norm_1.weight";
      case R::kQkvWeight: return b + "attn.Wqkv.weight";
      case R::kDenseWeight: return b + "attn.out_proj.weight";
      case R::kLn2Weight: return b + "norm_2.weight";
      case R::kFc1Weight: return b + "ffn.up_proj.weight";
      case R::kFc2Weight: return b + "ffn.down_proj.weight";
      case R::kLnfWeight: return "norm_f.weight";
      default: return "";
    }
  }
  // BLOOM and Falcon share every name (Falcon has no embedding LayerNorm, filtered above).
  const std::string h = absl::StrCat("h.", layer, ".");
  switch (role) {
    case R::kEmbedding: return "word_embeddings.weight";
    case R::kEmbLnWeight: return "word_embeddings_layernorm.weight";
    case R::kEmbLnBias: return "word_embeddings_layernorm.bias";
    case R::kLn1Weight: return h + "input_layernorm.weight";
    case R::kLn1Bias: return h + "input_layernorm.bias";
    case R::kQkvWeight: return h + "self_attention.query_key_value.weight";
    case R::kQkvBias: return h + "self_attention.query_key_value.bias";
    case R::kDenseWeight: return h + "self_attention.dense.weight";
    case R::kDenseBias: return h + "self_attention.dense.bias";
    case R::kLn2Weight: return h + "post_attention_layernorm.weight";
    case R::kLn2Bias: return h + "post_attention_layernorm.bias";
    case R::kFc1Weight: return h + "mlp.dense_h_to_4h.weight";
    case R::kFc1Bias: return h + "mlp.dense_h_to_4h.bias";
    case R::kFc2Weight: return h + "mlp.dense_4h_to_h.weight";
    case R::kFc2Bias: return h + "mlp.dense_4h_to_h.bias";
    case R::kLnfWeight: return "ln_f.weight";
    case R::kLnfBias: return "ln_f.bias";
    case R::kLmHead: return "";  // handled above
  }
  return "";
}

int64_t qkv_file_row(const BloomConfig& c, int64_t r) {
  if (!family_traits(c).qkv_blocks) return r;
  const int64_t D = c.head_dim();
  const int64_t h = r / (kQkvParts * D), part = (r / D) % kQkvParts, d = r % D;
  return part * c.hidden_size + h * D + d;
}

std::vector<BloomParameterSpec> bloom_parameter_specs(const BloomConfig& c) {
  using G = BloomParameterGroup;
  using R = ParamRole;
  const int64_t C = c.hidden_size;
  const int64_t V = c.vocab_size;
  std::vector<BloomParameterSpec> specs;
  auto add = [&](R role, std::vector<int64_t> shape, G group, int64_t layer) {
    std::string name = parameter_name(c, role, layer);
    if (!name.empty()) specs.push_back({std::move(name), std::move(shape), group, layer});
  };
  add(R::kEmbedding, {V, C}, G::kEmbedding, -1);
  add(R::kEmbLnWeight, {C}, G::kEmbeddingLayerNorm, -1);
  add(R::kEmbLnBias, {C}, G::kEmbeddingLayerNorm, -1);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    add(R::kLn1Weight, {C}, G::kLayerNorm, l);
    add(R::kLn1Bias, {C}, G::kLayerNorm, l);
    add(R::kQkvWeight, {kQkvParts * C, C}, G::kAttention, l);  // (3C, C), arena rows per head
    add(R::kQkvBias, {kQkvParts * C}, G::kAttention, l);
    add(R::kDenseWeight, {C, C}, G::kAttention, l);
    add(R::kDenseBias, {C}, G::kAttention, l);
    add(R::kLn2Weight, {C}, G::kLayerNorm, l);
    add(R::kLn2Bias, {C}, G::kLayerNorm, l);
    add(R::kFc1Weight, {kMlpExpansion * C, C}, G::kMlp, l);
    add(R::kFc1Bias, {kMlpExpansion * C}, G::kMlp, l);
    add(R::kFc2Weight, {C, kMlpExpansion * C}, G::kMlp, l);
    add(R::kFc2Bias, {C}, G::kMlp, l);
  }
  add(R::kLnfWeight, {C}, G::kFinalLayerNorm, -1);
  add(R::kLnfBias, {C}, G::kFinalLayerNorm, -1);
  add(R::kLmHead, {V, C}, G::kLmHead, -1);
  return specs;
}

absl::Status declare_bloom_parameters(const BloomConfig& c, ParameterArena& arena) {
  for (BloomParameterSpec& s : bloom_parameter_specs(c)) {
    if (absl::Status st = arena.declare(std::move(s.name), std::move(s.shape)); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace engine
