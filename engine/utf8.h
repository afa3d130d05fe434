// UTF-8 validation shared by every reader of text (safetensors headers, tokenizer input, data).
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace engine {

// Returns the byte offset of the first invalid UTF-8 sequence (overlong forms, surrogates and
// code points above U+10FFFF are invalid), or nullopt when `text` is valid.
std::optional<size_t> find_invalid_utf8(std::string_view text);

inline bool is_valid_utf8(std::string_view text) { return !find_invalid_utf8(text).has_value(); }

}  // namespace engine
