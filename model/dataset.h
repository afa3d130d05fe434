// Data loading for training and diagnosis: every `--data` path becomes documents of token ids,
// and the documents become fixed-length training chunks as the method specifies.
//
// Inputs, chosen by suffix (details and examples in docs/DATA.md):
//   .txt        UTF-8 text; documents are separated by one or more empty lines (a line holding
//               nothing, or only "\r"); each document is tokenized on its own.
//   .jsonl      one JSON object per non-empty line, either {"text": "..."} (tokenized) or
//               {"input_ids": [ ... ]} (taken as is).
//   otherwise   an engine token file (token_file.h), optionally ".zst"-compressed.
// Every id is checked against the vocabulary limit; an id outside it is an error naming the file
// and position (line for .jsonl, token index for token files), never an out-of-bounds read.
//
// Chunking: the non-empty documents are joined into one stream with the separator (the tokens of
// a blank line, "\n\n"; no special tokens) between consecutive documents, the stream is cut into
// non-overlapping chunks of seq_len tokens and the remainder is dropped. A holdout fraction moves
// the LAST chunks of the stream into a held-out split, so training and evaluation never share a
// chunk and share at most one document (the one straddling the boundary). Training chunks are
// visited in a fresh seeded permutation each epoch.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/tokenizer.h"

namespace engine {

enum class DataFormat { kText, kJsonLines, kTokenFile };
DataFormat data_format_of(const std::string& path);

struct DataReadOptions {
  // Required for .txt and for .jsonl "text" documents; when set, token files must have been made
  // by this tokenizer (same fingerprint).
  Tokenizer* tokenizer = nullptr;
  // Ids must be below this (e.g. the model's vocab_size). Unset: the tokenizer's vocabulary size
  // (or, for token files read without a tokenizer, the size recorded in the file).
  std::optional<uint32_t> vocab_size;
  // Called now and then with the number of input bytes consumed from the current file.
  std::function<void(uint64_t bytes_done)> progress;
};

// Called once per document, in file order.
using DocumentSink = std::function<absl::Status(std::span<const uint32_t> ids)>;

absl::Status for_each_document(const std::string& path, const DataReadOptions& options,
                               const DocumentSink& sink);

// Documents of a .txt file (see above); views into `text`.
std::vector<std::string_view> split_text_documents(std::string_view text);

struct Corpus {
  std::vector<uint32_t> ids;
  std::vector<uint64_t> document_ends;  // document d spans [ends[d-1] (0 for d=0), ends[d])
};

absl::StatusOr<Corpus> load_corpus(const std::vector<std::string>& paths,
                                   const DataReadOptions& options);

struct ChunkOptions {
  int64_t seq_len = 512;
  double holdout_fraction = 0.0;  // in [0, 1): share of chunks held out
  uint64_t seed = 1234;
};

class ChunkedDataset {
 public:
  // `separator` is what joins consecutive documents (the tokenizer's ids for "\n\n").
  static absl::StatusOr<ChunkedDataset> build(const Corpus& corpus,
                                              std::span<const uint32_t> separator,
                                              const ChunkOptions& options);

  int64_t seq_len() const { return seq_len_; }
  size_t train_size() const { return train_chunks_; }
  size_t holdout_size() const { return holdout_chunks_; }
  uint64_t stream_tokens() const { return stream_tokens_; }
  // Tokens at the end of the stream that fill no whole chunk.
  uint64_t dropped_tokens() const { return stream_tokens_ - stream_.size(); }

  // The order in which epoch `epoch` visits the training chunks: a permutation of
  // [0, train_size()) that depends only on (seed, epoch).
  std::vector<uint32_t> epoch_order(uint64_t epoch) const;
  // (seq_len) ids of training chunk i, i < train_size().
  std::span<const uint32_t> train_chunk(size_t i) const;
  // (seq_len) ids of held-out chunk i, i < holdout_size().
  std::span<const uint32_t> holdout_chunk(size_t i) const;

 private:
  std::vector<uint32_t> stream_;  // whole chunks only: train chunks, then held-out chunks
  int64_t seq_len_ = 0;
  size_t train_chunks_ = 0;
  size_t holdout_chunks_ = 0;
  uint64_t stream_tokens_ = 0;
  uint64_t seed_ = 0;
};

}  // namespace engine
