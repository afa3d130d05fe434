// libFuzzer target: arbitrary bytes through the BLOOM-style fixture tokenizer (3000 entries, real
// merges). Valid UTF-8 must encode to in-vocabulary ids that decode back to the exact input;
// invalid UTF-8 must be an error (model/tokenizer.h). The same bytes read as little-endian u32
// ids must decode or fail cleanly, never read outside the vocabulary.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"

namespace {

engine::Tokenizer& fixture_tokenizer() {
  static engine::Tokenizer* tok = [] {
    absl::StatusOr<engine::Tokenizer> t = engine::Tokenizer::load(
        std::string(ENGINE_SOURCE_DIR) + "/tests/fixtures/tokenizer/tokenizer.json");
    if (!t.ok()) std::abort();
    return new engine::Tokenizer(*std::move(t));
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  engine::Tokenizer& tok = fixture_tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool valid = !engine::find_invalid_utf8(text).has_value();
  absl::StatusOr<std::vector<uint32_t>> ids = tok.encode(text);
  if (ids.ok() != valid) std::abort();
  if (ids.ok()) {
    for (uint32_t id : *ids) {
      if (id >= tok.vocab_size()) std::abort();
    }
    absl::StatusOr<std::string> back = tok.decode(*ids);
    if (!back.ok() || *back != text) std::abort();
  }

  std::vector<uint32_t> raw(size / sizeof(uint32_t));
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * sizeof(uint32_t));
  bool in_vocab = true;
  for (uint32_t id : raw) in_vocab = in_vocab && id < tok.vocab_size();
  absl::StatusOr<std::string> decoded = tok.decode(raw, {.skip_special = (size & 1) != 0});
  if (decoded.ok() != in_vocab) std::abort();
  return 0;
}
