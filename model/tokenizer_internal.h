// Internal to the tokenizer: model/tokenizer.cpp (the pre-tokenizer, BPE, encoding, decoding)
// and model/tokenizer_json.cpp (loading tokenizer.json, writing the byte-level one) share the
// immutable tokenizer data and the byte-level alphabet through this header; nothing else
// includes it. The contract is in model/tokenizer.h.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace engine {
namespace tokenizer_internal {

inline constexpr uint32_t kNoId = UINT32_MAX;
// The pattern string BLOOM's tokenizer.json carries; any other Split pattern is rejected because
// the pre-tokenizer (model/tokenizer.cpp) implements only this one.
inline constexpr std::string_view kBloomSplitPattern =
    " ?[^(\\s|[.,!?\xE2\x80\xA6\xE3\x80\x82\xEF\xBC\x8C\xE3\x80\x81\xE0\xA5\xA4\xDB\x94\xD8\x8C])]+";

// Byte-level string (as written in tokenizer.json) -> raw bytes; nullopt if some character is not
// in the byte-level alphabet (e.g. an added token's content), or the string is not UTF-8.
std::optional<std::string> byte_level_to_bytes(std::string_view s);
// Raw bytes -> their byte-level string.
std::string bytes_to_byte_level(std::string_view bytes);

}  // namespace tokenizer_internal

// --- immutable tokenizer data ------------------------------------------------------------------
struct Merge {
  uint32_t rank = tokenizer_internal::kNoId;
  uint32_t new_id = tokenizer_internal::kNoId;
};

// Open-addressing map (left id, right id) -> Merge; BLOOM has 250k merges and this lookup is the
// inner loop of BPE, so it avoids std::unordered_map's node chasing.
class MergeTable {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    keys_.assign(cap, kEmpty);
    values_.assign(cap, Merge{});
    mask_ = cap - 1;
  }
  // Returns false if the pair is already present (the first rank wins, as in `tokenizers`).
  bool insert(uint32_t left, uint32_t right, Merge m) {
    const uint64_t key = pack(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == kEmpty) {
        keys_[i] = key;
        values_[i] = m;
        return true;
      }
      if (keys_[i] == key) return false;
    }
  }
  const Merge* find(uint32_t left, uint32_t right) const {
    const uint64_t key = pack(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = UINT64_MAX;  // (tokenizer_internal::kNoId, tokenizer_internal::kNoId) is never a real pair
  static uint64_t pack(uint32_t l, uint32_t r) { return (uint64_t{l} << 32) | r; }
  size_t slot(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 17) & mask_; }
  std::vector<uint64_t> keys_;
  std::vector<Merge> values_;
  size_t mask_ = 0;
};

struct AddedToken {
  std::string content;
  uint32_t id = 0;
  bool special = false;
};

struct TokenizerData {
  std::string source;
  uint32_t vocab_size = 0;
  std::array<uint32_t, 256> byte_id{};
  MergeTable merges;
  bool ignore_merges = false;
  std::unordered_map<std::string, uint32_t> whole_piece_id;  // bytes -> id, for ignore_merges
  std::unordered_map<std::string, uint32_t> token_id;        // as written in tokenizer.json
  std::vector<std::string> id_bytes;                         // id -> decoded bytes
  std::vector<uint8_t> id_known;                             // id has a vocab entry / added token
  std::vector<uint8_t> id_special;
  std::vector<AddedToken> added;  // sorted by content, longest first within a first byte
  std::array<bool, 256> added_first_byte{};
  uint64_t fingerprint = 0;
};

}  // namespace engine
