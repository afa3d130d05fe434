#include "model/config.h"

#include <cmath>
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

}  // namespace

absl::StatusOr<BloomConfig> parse_bloom_config(const json& j, const std::string& source_name) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": config is not a JSON object"));
  }
  if (const auto it = j.find("model_type"); it != j.end() && *it != "bloom") {
    return field_error(source_name, "model_type",
                       absl::StrCat("is ", it->dump(), ", expected \"bloom\""));
  }
  // The engine's block graph implements only BLOOM's released layout: pre-LayerNorm residuals and
  // an LM head tied to the embedding. Configs asking for anything else are refused, not ignored.
  if (const auto it = j.find("apply_residual_connection_post_layernorm");
      it != j.end() && *it != false) {
    return field_error(source_name, "apply_residual_connection_post_layernorm",
                       absl::StrCat("is ", it->dump(), "; only false is supported"));
  }
  if (const auto it = j.find("tie_word_embeddings"); it != j.end() && *it != true) {
    return field_error(
        source_name, "tie_word_embeddings",
        absl::StrCat("is ", it->dump(), "; BLOOM ties the LM head to the embedding"));
  }

  BloomConfig c;
  absl::StatusOr<int64_t> v = read_size(j, source_name, kVocab);
  if (!v.ok()) return v.status();
  c.vocab_size = *v;
  if (v = read_size(j, source_name, kHidden); !v.ok()) return v.status();
  c.hidden_size = *v;
  if (v = read_size(j, source_name, kHeads); !v.ok()) return v.status();
  c.n_head = *v;
  if (v = read_size(j, source_name, kLayers); !v.ok()) return v.status();
  c.n_layer = *v;
  if (c.hidden_size % c.n_head != 0) {
    return field_error(
        source_name, "hidden_size",
        absl::StrCat("(", c.hidden_size, ") is not divisible by n_head (", c.n_head, ")"));
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
  c.raw = j;
  return c;
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

json bloom_config_to_json(const BloomConfig& c) {
  json out = c.raw.is_object() ? c.raw : json::object();
  for (const SizeField& f : {kHidden, kHeads, kLayers}) out.erase(f.alias);
  out[kVocab.name] = c.vocab_size;
  out[kHidden.name] = c.hidden_size;
  out[kHeads.name] = c.n_head;
  out[kLayers.name] = c.n_layer;
  out["layer_norm_epsilon"] = c.layer_norm_epsilon;
  // Without these two keys transformers' Auto classes cannot tell what the directory holds.
  if (!out.contains("model_type")) out["model_type"] = "bloom";
  if (!out.contains("architectures")) out["architectures"] = json::array({"BloomForCausalLM"});
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

}  // namespace engine
