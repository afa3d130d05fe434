// BLOOM's tokenizer: byte-level BPE loaded from a Hugging Face tokenizer.json.
//
// Contract: `Tokenizer::load` accepts exactly the configuration BLOOM ships (and nothing it could
// silently get wrong): no normalizer; pre-tokenizer Sequence[Split(BLOOM's regex, Isolated),
// ByteLevel(add_prefix_space=false, use_regex=false)]; model BPE without dropout, subword
// prefixes/suffixes or byte fallback; decoder ByteLevel; post-processor null or ByteLevel (which
// only moves offsets). Anything else is an error naming the field. Encoding then produces the ids
// the `tokenizers` library produces for `encode(text, add_special_tokens=False)`:
//   1. added tokens (<unk> <s> </s> <pad> for BLOOM) are cut out of the text first, leftmost
//      and longest match first;
//   2. each remaining segment is split into pieces matching ` ?X+` (X = any code point that is
//      not Oniguruma whitespace and not one of ( ) | . , ! ? … 。 ， 、 । ۔ ،), with the runs
//      between matches kept as pieces of their own;
//   3. each piece's UTF-8 bytes are merged by BPE, lowest merge rank first, leftmost first.
// Decoding maps ids back to their bytes (added tokens to their content), so
// decode(encode(x)) == x for every valid UTF-8 x. Invalid UTF-8 input is an error giving the
// byte offset of the first bad sequence.
//
// A Tokenizer is cheap to copy: the vocabulary and merge table are shared and immutable; each
// copy owns its own per-piece cache, so one copy per thread makes encoding thread-safe. A single
// object must not be used by two threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/utf8.h"

namespace engine {

struct TokenizerData;  // vocabulary, merges and added tokens; model/tokenizer_internal.h
class PieceCache;      // piece bytes -> ids memo; defined in tokenizer.cpp

struct EncodeOptions {
  // BLOOM adds no <s>; this option prepends the added token "<s>" (an error if there is none).
  bool add_bos = false;
};

struct DecodeOptions {
  // Drop added tokens marked special (like `skip_special_tokens=True` in `tokenizers`). Off by
  // default so that decode(encode(x)) == x also when x contains "<s>".
  bool skip_special = false;
};

class Tokenizer {
 public:
  // `path` names a tokenizer.json file. Errors name the file and the offending field.
  static absl::StatusOr<Tokenizer> load(const std::string& path);
  // `json` is the file's content; `source` names it in errors.
  static absl::StatusOr<Tokenizer> from_json(std::string_view json, const std::string& source);

  Tokenizer(const Tokenizer& other);
  Tokenizer& operator=(const Tokenizer& other);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  absl::StatusOr<std::vector<uint32_t>> encode(std::string_view text,
                                               const EncodeOptions& options = {});
  // Appends to `out` (keeps what is there); on error `out` may hold a prefix of the result.
  absl::Status encode_append(std::string_view text, std::vector<uint32_t>& out,
                             const EncodeOptions& options = {});
  // Ids outside the vocabulary are an error naming the position. The result is the exact byte
  // string; it is valid UTF-8 whenever the ids came from encode().
  absl::StatusOr<std::string> decode(std::span<const uint32_t> ids,
                                     const DecodeOptions& options = {}) const;

  // One more than the largest id of any vocabulary entry or added token.
  uint32_t vocab_size() const;
  // The id of a vocabulary entry or added token, written as in tokenizer.json.
  std::optional<uint32_t> token_to_id(std::string_view token) const;
  // A 64-bit FNV-1a fingerprint of what determines the ids (vocabulary in id order, merges in
  // rank order, added tokens), independent of JSON formatting; token files record it.
  uint64_t fingerprint() const;

 private:
  Tokenizer(std::shared_ptr<const TokenizerData> data);
  absl::Status encode_segment(std::string_view segment, std::vector<uint32_t>& out);
  void encode_piece(std::string_view piece, std::vector<uint32_t>& out);

  std::shared_ptr<const TokenizerData> data_;
  std::unique_ptr<PieceCache> cache_;
};

// tokenizer.json text of a byte-level tokenizer with no merges: <unk> <s> </s> <pad> as ids 0..3
// (special added tokens), then byte b as id 4 + b, with BLOOM's pre-tokenizer and decoder. Both
// this engine and Hugging Face `tokenizers`/`transformers` load it.
std::string byte_level_tokenizer_json();
absl::Status write_byte_level_tokenizer_json(const std::string& path);

}  // namespace engine
