// libFuzzer target: config.json bytes -> parse_bloom_config must never crash, and every config it
// accepts must satisfy the invariants the model code relies on (positive sizes within the field
// limit, hidden_size divisible by n_head, positive finite epsilon) and survive a write/parse round
// trip unchanged.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "model/config.h"
#include "nlohmann/json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr,
                                                 /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  absl::StatusOr<engine::BloomConfig> c = engine::parse_bloom_config(j, "config.json");
  if (!c.ok()) {
    if (c.status().message().empty()) std::abort();
    return 0;
  }
  if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->n_head <= 0 || c->n_layer <= 0) std::abort();
  if (c->hidden_size % c->n_head != 0) std::abort();
  if (!(c->layer_norm_epsilon > 0) || !std::isfinite(c->layer_norm_epsilon)) std::abort();
  absl::StatusOr<engine::BloomConfig> again =
      engine::parse_bloom_config(engine::bloom_config_to_json(*c), "written config.json");
  if (!again.ok() || again->vocab_size != c->vocab_size || again->hidden_size != c->hidden_size ||
      again->n_head != c->n_head || again->n_layer != c->n_layer ||
      again->layer_norm_epsilon != c->layer_norm_epsilon) {
    std::abort();
  }
  return 0;
}
