#include "model/config.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/io.h"

namespace engine {

namespace {

using nlohmann::json;

// Upper bound on every size field. Real BLOOMs stay far below it; the bound keeps products such
// as 4 * hidden_size * hidden_size inside int64, so later size arithmetic cannot overflow silently.
constexpr int64_t kMaxSizeField = int64_t{1} << 31;
constexpr double kDefaultLayerNormEpsilon = 1e-5;

// A size field and the alias transformers also accepts for it ("" when there is none).
struct SizeField {
  const char* name;
  const char* alias;
};
constexpr SizeField kVocab{"vocab_size", ""};
constexpr SizeField kHidden{"hidden_size", "n_embed"};
constexpr SizeField kHeads{"n_head", "num_attention_heads"};
constexpr SizeField kLayers{"n_layer", "num_hidden_layers"};

absl::Status field_error(const std::string& source, const std::string& field,
                         const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field ", field, " ", what));
}

absl::StatusOr<int64_t> read_size(const json& j, const std::string& source, const SizeField& f) {
  std::optional<std::pair<std::string, int64_t>> found;
  for (const char* key : {f.name, f.alias}) {
    if (*key == '\0') continue;
    const auto it = j.find(key);
    if (it == j.end()) continue;
    if (!it->is_number_integer()) {
      return field_error(source, key, absl::StrCat("must be an integer, got ", it->dump()));
    }
    int64_t v;
    if (it->is_number_unsigned()) {
      const uint64_t u = it->get<uint64_t>();
      if (u > static_cast<uint64_t>(kMaxSizeField)) {
        return field_error(source, key,
                           absl::StrCat("is ", u, ", above the limit ", kMaxSizeField));
      }
      v = static_cast<int64_t>(u);
    } else {
      v = it->get<int64_t>();
    }
    if (v <= 0) return field_error(source, key, absl::StrCat("must be positive, got ", v));
    if (v > kMaxSizeField) {
      return field_error(source, key, absl::StrCat("is ", v, ", above the limit ", kMaxSizeField));
    }
    if (found && found->second != v) {
      return field_error(
          source, key,
          absl::StrCat("(", v, ") disagrees with ", found->first, " (", found->second, ")"));
    }
    found = std::make_pair(std::string(key), v);
  }
  if (!found) {
    return field_error(source, f.name,
                       *f.alias == '\0'
                           ? "is missing"
                           : absl::StrCat("is missing (also looked for ", f.alias, ")"));
  }
  return found->second;
}


// The size fields of a family, in the order vocab, hidden, heads, layers.
struct ShapeFields {
  SizeField vocab, hidden, heads, layers;
};
constexpr ShapeFields kBloomFields{kVocab, kHidden, kHeads, kLayers};
// FalconConfig's own names first; the BLOOM-style spellings are its attribute aliases.
constexpr ShapeFields kFalconFields{kVocab, {"hidden_size", "n_embed"},
                                    {"num_attention_heads", "n_head"},
                                    {"num_hidden_layers", "n_layer"}};
constexpr ShapeFields kMptFields{kVocab, {"d_model", ""}, {"n_heads", ""}, {"n_layers", ""}};

// Reads the four sizes and layer_norm_epsilon into c and checks the head split.
absl::Status read_shape(const json& j, const std::string& source_name, const ShapeFields& f,
                        BloomConfig& c) {
  absl::StatusOr<int64_t> v = read_size(j, source_name, f.vocab);
  if (!v.ok()) return v.status();
  c.vocab_size = *v;
  if (v = read_size(j, source_name, f.hidden); !v.ok()) return v.status();
  c.hidden_size = *v;
  if (v = read_size(j, source_name, f.heads); !v.ok()) return v.status();
  c.n_head = *v;
  if (v = read_size(j, source_name, f.layers); !v.ok()) return v.status();
  c.n_layer = *v;
  if (c.hidden_size % c.n_head != 0) {
    return field_error(source_name, f.hidden.name,
                       absl::StrCat("(", c.hidden_size, ") is not divisible by ", f.heads.name,
                                    " (", c.n_head, ")"));
  }
  c.layer_norm_epsilon = kDefaultLayerNormEpsilon;
  if (const auto it = j.find("layer_norm_epsilon"); it != j.end()) {
    if (!it->is_number()) {
      return field_error(source_name, "layer_norm_epsilon",
                         absl::StrCat("must be a number, got ", it->dump()));
    }
    const double eps = it->get<double>();
    if (!(eps > 0.0) || !std::isfinite(eps)) {
      return field_error(source_name, "layer_norm_epsilon",
                         absl::StrCat("must be positive and finite, got ", it->dump()));
    }
    c.layer_norm_epsilon = eps;
  }
  return absl::OkStatus();
}

// A boolean field; `fallback` when absent (transformers' default). null counts as absent.
absl::StatusOr<bool> read_bool(const json& j, const std::string& source, const std::string& key,
                               bool fallback) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return field_error(source, key, absl::StrCat("must be true or false, got ", it->dump()));
  }
  return it->get<bool>();
}

// A field the engine supports at one value only: absent (when transformers' default is that
// value), or equal to it. `why` ends the message.
absl::Status require_bool(const json& j, const std::string& source, const std::string& key,
                          bool fallback, bool wanted, const std::string& why) {
  absl::StatusOr<bool> v = read_bool(j, source, key, fallback);
  if (!v.ok()) return v.status();
  if (*v != wanted) {
    return field_error(source, key,
                       absl::StrCat("is ", *v ? "true" : "false",
                                    j.contains(key) ? "" : " (transformers' default)", "; ", why));
  }
  return absl::OkStatus();
}

// A positive finite number or null/absent (returned as 0).
// `shown`: the field's name in messages (e.g. "attn_config.clip_qkv").
absl::StatusOr<double> read_optional_positive(const json& j, const std::string& source,
                                              const std::string& key, const std::string& shown) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return 0.0;
  if (!it->is_number() || !(it->get<double>() > 0.0) || !std::isfinite(it->get<double>())) {
    return field_error(source, shown, absl::StrCat("must be null or a positive number, got ",
                                                   it->dump()));
  }
  return it->get<double>();
}

absl::Status require_tied_head(const json& j, const std::string& source, const char* family) {
  if (const auto it = j.find("tie_word_embeddings"); it != j.end() && *it != true) {
    return field_error(source, "tie_word_embeddings",
                       absl::StrCat("is ", it->dump(), "; the engine supports ", family,
                                    " only with the LM head tied to the embedding"));
  }
  return absl::OkStatus();
}

// FalconConfig (transformers' modeling_falcon.py): only the Falcon-RW shape, i.e. ALiBi, one K/V
// per head, the old decoder, sequential attention and MLP, GELU, 4C MLP.
absl::StatusOr<BloomConfig> parse_bloom_family(const json& j, const std::string& source_name) {
  // The engine's block graph implements only BLOOM's released layout with pre-LayerNorm
  // residuals; the LM head is the embedding unless tie_word_embeddings is false (then
  // BloomForCausalLM keeps a separate lm_head.weight, and so does the engine).
  if (const auto it = j.find("apply_residual_connection_post_layernorm");
      it != j.end() && *it != false) {
    return field_error(source_name, "apply_residual_connection_post_layernorm",
                       absl::StrCat("is ", it->dump(), "; only false is supported"));
  }
  absl::StatusOr<bool> tied = read_bool(j, source_name, "tie_word_embeddings", true);
  if (!tied.ok()) return tied.status();

  BloomConfig c;
  c.family = ModelFamily::kBloom;
  c.tie_word_embeddings = *tied;
  if (absl::Status s = read_shape(j, source_name, kBloomFields, c); !s.ok()) return s;
  c.raw = j;
  return c;
}


absl::StatusOr<BloomConfig> parse_falcon_family(const json& j, const std::string& source) {
  if (absl::Status s = require_bool(j, source, "alibi", false, true,
                                    "Falcon without ALiBi uses rotary embeddings, which the "
                                    "engine does not implement");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = require_bool(j, source, "new_decoder_architecture", false, false,
                                    "the new decoder architecture (grouped K/V, parallel "
                                    "attention) is not supported");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = require_bool(j, source, "multi_query", true, false,
                                    "multi-query attention (one K/V head) is not supported");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = require_bool(j, source, "parallel_attn", true, false,
                                    "attention parallel to the MLP is not supported");
      !s.ok()) {
    return s;
  }
  // tie_word_embeddings false: FalconForCausalLM's lm_head.weight is a parameter of its own.
  absl::StatusOr<bool> tied = read_bool(j, source, "tie_word_embeddings", true);
  if (!tied.ok()) return tied.status();
  if (const auto it = j.find("activation"); it != j.end() && !it->is_null() && *it != "gelu") {
    return field_error(source, "activation",
                       absl::StrCat("is ", it->dump(), "; only \"gelu\" is supported"));
  }
  BloomConfig c;
  c.family = ModelFamily::kFalcon;
  if (absl::Status s = read_shape(j, source, kFalconFields, c); !s.ok()) return s;
  if (const auto it = j.find("ffn_hidden_size");
      it != j.end() && !it->is_null() && *it != 4 * c.hidden_size) {
    return field_error(source, "ffn_hidden_size",
                       absl::StrCat("is ", it->dump(), "; only 4 * hidden_size (",
                                    4 * c.hidden_size, ") is supported"));
  }
  if (const auto it = j.find("num_kv_heads");
      it != j.end() && !it->is_null() && *it != c.n_head) {
    return field_error(source, "num_kv_heads",
                       absl::StrCat("is ", it->dump(), "; only one K/V head per query head (",
                                    c.n_head, ") is supported"));
  }
  absl::StatusOr<bool> bias = read_bool(j, source, "bias", false);
  if (!bias.ok()) return bias.status();
  c.linear_bias = *bias;
  c.tie_word_embeddings = *tied;
  c.raw = j;
  return c;
}

// MptConfig (transformers' modeling_mpt.py). transformers builds every MPT without biases, with
// a 4C MLP, multi-head ALiBi attention and no QK LayerNorm whatever the config says; the engine
// refuses configs that ask for something else rather than silently computing what they do not
// describe.
absl::StatusOr<BloomConfig> parse_mpt_family(const json& j, const std::string& source) {
  BloomConfig c;
  c.family = ModelFamily::kMpt;
  c.linear_bias = false;
  if (absl::Status s = read_shape(j, source, kMptFields, c); !s.ok()) return s;
  if (absl::Status s = require_tied_head(j, source, "MPT"); !s.ok()) return s;
  if (absl::Status s = require_bool(j, source, "no_bias", true, true,
                                    "transformers builds MPT without biases");
      !s.ok()) {
    return s;
  }
  if (const auto it = j.find("expansion_ratio"); it != j.end() && *it != 4) {
    return field_error(source, "expansion_ratio",
                       absl::StrCat("is ", it->dump(), "; only 4 is supported"));
  }
  if (const auto it = j.find("logit_scale"); it != j.end() && !it->is_null()) {
    return field_error(source, "logit_scale",
                       absl::StrCat("is ", it->dump(), "; only null is supported"));
  }
  c.max_seq_len = 2048;
  if (const auto it = j.find("max_seq_len"); it != j.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
      return field_error(source, "max_seq_len",
                         absl::StrCat("must be a positive integer, got ", it->dump()));
    }
    c.max_seq_len = it->get<int64_t>();
  }
  json attn = json::object();
  if (const auto it = j.find("attn_config"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) {
      return field_error(source, "attn_config", absl::StrCat("must be an object, got ", it->dump()));
    }
    attn = *it;
  }
  auto attn_error = [&](const std::string& key, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field attn_config.", key, " ", what));
  };
  if (const auto it = attn.find("attn_type");
      it != attn.end() && *it != "multihead_attention") {
    return attn_error("attn_type",
                      absl::StrCat("is ", it->dump(), "; only \"multihead_attention\" is supported"));
  }
  for (const char* key : {"qk_ln", "prefix_lm", "attn_uses_sequence_id"}) {
    if (const auto it = attn.find(key); it != attn.end() && *it != false) {
      return attn_error(key, absl::StrCat("is ", it->dump(), "; only false is supported"));
    }
  }
  if (const auto it = attn.find("alibi"); it != attn.end() && *it != true) {
    return attn_error("alibi", absl::StrCat("is ", it->dump(),
                                            "; the engine runs only ALiBi attention"));
  }
  for (auto [key, dst] : {std::pair{"clip_qkv", &c.clip_qkv},
                          std::pair{"softmax_scale", &c.softmax_scale}}) {
    absl::StatusOr<double> v =
        read_optional_positive(attn, source, key, absl::StrCat("attn_config.", key));
    if (!v.ok()) return v.status();
    *dst = *v;
  }
  if (const auto it = attn.find("alibi_bias_max"); it != attn.end()) {
    if (!it->is_number() || !(it->get<double>() > 0.0) || !std::isfinite(it->get<double>())) {
      return attn_error("alibi_bias_max",
                        absl::StrCat("must be a positive number, got ", it->dump()));
    }
    c.alibi_bias_max = it->get<double>();
  }
  c.raw = j;
  return c;
}

}  // namespace

absl::StatusOr<BloomConfig> parse_bloom_config(const json& j, const std::string& source_name) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": config is not a JSON object"));
  }
  const auto it = j.find("model_type");
  if (it == j.end() || *it == "bloom") return parse_bloom_family(j, source_name);
  if (*it == "falcon") return parse_falcon_family(j, source_name);
  if (*it == "mpt") return parse_mpt_family(j, source_name);
  return field_error(source_name, "model_type",
                     absl::StrCat("is ", it->dump(), ", expected \"bloom\", \"falcon\" or \"mpt\""));
}

absl::StatusOr<BloomConfig> load_bloom_config(const std::filesystem::path& file) {
  absl::StatusOr<std::string> text = read_file(file, "config file");
  if (!text.ok()) return text.status();
  const json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(file.string(), ": not valid JSON"));
  }
  return parse_bloom_config(j, file.string());
}

const char* family_name(ModelFamily f) {
  switch (f) {
    case ModelFamily::kBloom: return "bloom";
    case ModelFamily::kFalcon: return "falcon";
    case ModelFamily::kMpt: return "mpt";
  }
  return "unknown";
}

json bloom_config_to_json(const BloomConfig& c) {
  json out = c.raw.is_object() ? c.raw : json::object();
  const ShapeFields& f = c.family == ModelFamily::kFalcon ? kFalconFields
                         : c.family == ModelFamily::kMpt  ? kMptFields
                                                          : kBloomFields;
  for (const SizeField& s : {f.hidden, f.heads, f.layers}) {
    if (*s.alias != '\0') out.erase(s.alias);
  }
  out[f.vocab.name] = c.vocab_size;
  out[f.hidden.name] = c.hidden_size;
  out[f.heads.name] = c.n_head;
  out[f.layers.name] = c.n_layer;
  out["layer_norm_epsilon"] = c.layer_norm_epsilon;
  // Without these two keys transformers' Auto classes cannot tell what the directory holds.
  const char* architecture = c.family == ModelFamily::kFalcon ? "FalconForCausalLM"
                             : c.family == ModelFamily::kMpt  ? "MptForCausalLM"
                                                              : "BloomForCausalLM";
  if (!out.contains("model_type")) out["model_type"] = family_name(c.family);
  if (!out.contains("architectures")) out["architectures"] = json::array({architecture});
  if (c.family == ModelFamily::kFalcon) {
    // FalconConfig's defaults for these differ from the only values the engine runs: write them.
    out["alibi"] = true;
    out["multi_query"] = false;
    out["parallel_attn"] = false;
    out["new_decoder_architecture"] = false;
    out["bias"] = c.linear_bias;
  }
  if (c.family == ModelFamily::kMpt) out["max_seq_len"] = c.max_seq_len;
  // transformers' default is true: an untied model must say so, or its lm_head would be dropped.
  if (!c.tie_word_embeddings) out["tie_word_embeddings"] = false;
  return out;
}

std::vector<float> alibi_slopes(int64_t n_head) {
  std::vector<float> slopes;
  if (n_head <= 0) return slopes;
  int64_t p = 1;
  while (p * 2 <= n_head) p *= 2;
  slopes.reserve(static_cast<size_t>(n_head));
  for (int64_t k = 1; k <= p; ++k) {
    slopes.push_back(static_cast<float>(std::exp2(-8.0 * static_cast<double>(k) / p)));
  }
  for (int64_t j = 1; j <= n_head - p; ++j) {
    slopes.push_back(static_cast<float>(std::exp2(-4.0 * static_cast<double>(2 * j - 1) / p)));
  }
  return slopes;
}

std::vector<float> mpt_alibi_slopes(int64_t n_head, double alibi_bias_max) {
  std::vector<float> slopes;
  if (n_head <= 0) return slopes;
  int64_t p = 1;
  while (p < n_head) p *= 2;
  std::vector<float> all;
  for (int64_t k = 1; k <= p; ++k) {
    // As transformers: the exponent in fp32 (k * (bias_max / P)), then 1 / 2^exponent.
    const float exponent = static_cast<float>(k) * static_cast<float>(alibi_bias_max / p);
    all.push_back(1.0f / std::exp2(exponent));
  }
  if (p == n_head) return all;
  for (int64_t k = 1; k < p; k += 2) slopes.push_back(all[k]);
  for (int64_t k = 0; k < p; k += 2) slopes.push_back(all[k]);
  slopes.resize(static_cast<size_t>(n_head));
  return slopes;
}

namespace {
// Rounds to the nearest bfloat16, ties to even (what torch's .bfloat16() does to finite values).
float round_to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  bits &= 0xffff0000u;
  float r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}
}  // namespace

FamilyTraits family_traits(const BloomConfig& c) {
  switch (c.family) {
    case ModelFamily::kFalcon:
      return {.embedding_layernorm = false, .linear_bias = c.linear_bias, .layernorm_bias = true,
              .gelu_exact = true, .qkv_blocks = false, .key_index_positions = false,
              .alibi_bf16_product = true};
    case ModelFamily::kMpt:
      return {.embedding_layernorm = false, .linear_bias = false, .layernorm_bias = false,
              .gelu_exact = true, .qkv_blocks = true, .key_index_positions = true,
              .alibi_bf16_product = false};
    case ModelFamily::kBloom:
      break;
  }
  return {.embedding_layernorm = true, .linear_bias = true, .layernorm_bias = true,
          .gelu_exact = false, .qkv_blocks = false, .key_index_positions = false,
          .alibi_bf16_product = false};
}

std::vector<float> attention_slopes(const BloomConfig& c) {
  switch (c.family) {
    case ModelFamily::kFalcon: {
      std::vector<float> s = alibi_slopes(c.n_head);
      const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim())));
      for (float& v : s) v = round_to_bf16(v) * inv;
      return s;
    }
    case ModelFamily::kMpt:
      return mpt_alibi_slopes(c.n_head, c.alibi_bias_max);
    case ModelFamily::kBloom:
      break;
  }
  return alibi_slopes(c.n_head);
}

std::vector<float> kernel_slopes(const BloomConfig& c) {
  if (!family_traits(c).alibi_bf16_product) return attention_slopes(c);
  std::vector<float> s = alibi_slopes(c.n_head);
  for (float& v : s) v = round_to_bf16(v);
  return s;
}

float attention_bias_divisor(const BloomConfig& c) {
  if (!family_traits(c).alibi_bf16_product) return 0.0f;
  // transformers divides its fp32 bias tensor by the Python float math.sqrt(D), which torch
  // applies as the fp32 scalar it rounds to.
  return static_cast<float>(std::sqrt(static_cast<double>(c.head_dim())));
}

float attention_scale(const BloomConfig& c) {
  if (c.family == ModelFamily::kMpt && c.softmax_scale > 0.0) {
    return static_cast<float>(c.softmax_scale);
  }
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim())));
}

}  // namespace engine
