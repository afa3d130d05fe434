// libFuzzer target: tokenizer.json bytes -> Tokenizer::from_json must never crash, and every
// tokenizer it accepts must keep the decode(encode(x)) == x contract of model/tokenizer.h on a
// fixed text that touches added tokens, punctuation splits, spaces and multi-byte UTF-8.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"

namespace {
constexpr std::string_view kProbeText =
    "Hello, world!  <s>x</s> h\xc3\xa9llo \xe2\x80\xa6\n\n 42<pad>";
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<engine::Tokenizer> tok = engine::Tokenizer::from_json(json, "tokenizer.json");
  if (!tok.ok()) {
    if (tok.status().message().empty()) std::abort();
    return 0;
  }
  absl::StatusOr<std::vector<uint32_t>> ids = tok->encode(kProbeText);
  if (!ids.ok()) std::abort();
  for (uint32_t id : *ids) {
    if (id >= tok->vocab_size()) std::abort();
  }
  absl::StatusOr<std::string> text = tok->decode(*ids);
  if (!text.ok() || *text != kProbeText) std::abort();
  return 0;
}
