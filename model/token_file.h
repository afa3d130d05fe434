// The engine's token file: token ids of a tokenized corpus plus its document boundaries, tagged
// with the fingerprint of the tokenizer that produced them. The byte layout is specified in
// docs/DATA.md ("Token files"); in short, all little-endian:
//   [0, 64)   header: magic "BLMTOKEN", version, header size, token width (4), token count,
//             document count, tokenizer fingerprint, vocabulary size, zero padding
//   then      token ids, u32 each
//   then      document end offsets, u64 each (cumulative token counts; the last equals the
//             token count)
// A path ending in ".zst" holds that whole byte stream zstd-compressed; it is written and read
// with streaming (de)compression, never holding the compressed file in memory.
// Every malformed file (wrong magic, unknown version, truncated, trailing bytes, inconsistent
// offsets, an id outside the vocabulary, the wrong tokenizer) is an error naming the file and,
// where it applies, the position.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace engine {

struct TokenFileHeader {
  static constexpr char kMagic[8] = {'B', 'L', 'M', 'T', 'O', 'K', 'E', 'N'};
  static constexpr uint32_t kVersion = 1;
  static constexpr uint32_t kHeaderBytes = 64;
  // 4-byte ids: BLOOM's vocabulary (250880) does not fit 16 bits.
  static constexpr uint32_t kTokenWidth = 4;

  uint64_t token_count = 0;
  uint64_t document_count = 0;
  uint64_t tokenizer_fingerprint = 0;  // Tokenizer::fingerprint() of the producing tokenizer
  uint32_t vocab_size = 0;             // of that tokenizer; every id is below it
};

struct TokenFile {
  TokenFileHeader header;
  std::vector<uint32_t> ids;
  std::vector<uint64_t> document_ends;  // document d spans [ends[d-1] (0 for d=0), ends[d])
};

struct TokenFileCheck {
  // When set, a file made by a different tokenizer is an error.
  std::optional<uint64_t> tokenizer_fingerprint;
  // When set, ids >= this are an error (e.g. the model's vocab_size, which may exceed the
  // tokenizer's when the embedding is padded).
  std::optional<uint32_t> vocab_size;
};

absl::StatusOr<TokenFile> read_token_file(const std::string& path, const TokenFileCheck& check = {});

// True when `path` names a zstd-compressed token file (".zst" suffix).
bool is_zstd_path(const std::string& path);

// Streams documents into a token file. For ".zst" paths the uncompressed bytes go to a temporary
// file next to `path` first (the header's counts are known only at the end) and are compressed
// into `path` by close(); the temporary file is removed either way.
class TokenFileWriter {
 public:
  static absl::StatusOr<TokenFileWriter> create(const std::string& path,
                                                uint64_t tokenizer_fingerprint,
                                                uint32_t vocab_size);
  TokenFileWriter(TokenFileWriter&&) noexcept;
  TokenFileWriter& operator=(TokenFileWriter&&) noexcept;
  ~TokenFileWriter();

  // Ids >= vocab_size are rejected, naming the document and position.
  absl::Status add_document(std::span<const uint32_t> ids);
  // Writes the document index and header; the file is complete only after this returns OK.
  absl::Status close();

  uint64_t token_count() const { return header_.token_count; }
  uint64_t document_count() const { return header_.document_count; }

 private:
  TokenFileWriter() = default;
  std::string path_;
  std::string raw_path_;  // where uncompressed bytes go (== path_ unless compressing)
  std::FILE* file_ = nullptr;
  TokenFileHeader header_;
  std::vector<uint64_t> document_ends_;
};

// Writes a whole file in one call.
absl::Status write_token_file(const std::string& path, const TokenFile& file);

}  // namespace engine
