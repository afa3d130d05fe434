// Data loading and chunking (contract in dataset.h).
#include "model/dataset.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/io.h"
#include "model/token_file.h"
#include "nlohmann/json.hpp"

namespace engine {
namespace {

using Json = nlohmann::json;

// Progress is reported after at least this many input bytes, to keep the callback cheap.
constexpr uint64_t kProgressStepBytes = uint64_t{1} << 20;

absl::Status check_ids(std::span<const uint32_t> ids, uint32_t limit, const std::string& where) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= limit) {
      return absl::OutOfRangeError(absl::StrCat(where, ": token ", i, " has id ", ids[i],
                                                ", outside the vocabulary (size ", limit, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status need_tokenizer(const DataReadOptions& o, const std::string& path) {
  if (o.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": text input needs a tokenizer (--model DIR or --tokenizer FILE)"));
  }
  return absl::OkStatus();
}

uint32_t id_limit(const DataReadOptions& o) {
  return o.vocab_size ? *o.vocab_size : o.tokenizer ? o.tokenizer->vocab_size() : UINT32_MAX;
}

absl::Status read_text(const std::string& path, const DataReadOptions& o, const DocumentSink& sink) {
  if (auto s = need_tokenizer(o, path); !s.ok()) return s;
  absl::StatusOr<std::string> text = read_file(path);
  if (!text.ok()) return text.status();
  if (std::optional<size_t> bad = find_invalid_utf8(*text)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not valid UTF-8 at byte offset ", *bad));
  }
  std::vector<uint32_t> ids;
  uint64_t reported = 0;
  const std::vector<std::string_view> docs = split_text_documents(*text);
  for (size_t d = 0; d < docs.size(); ++d) {
    ids.clear();
    if (auto s = o.tokenizer->encode_append(docs[d], ids); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat(path, ": document ", d, ": ", std::string(s.message())));
    }
    if (auto s = check_ids(ids, id_limit(o), absl::StrCat(path, ": document ", d)); !s.ok()) return s;
    if (auto s = sink(ids); !s.ok()) return s;
    const uint64_t done = static_cast<uint64_t>(docs[d].data() + docs[d].size() - text->data());
    if (o.progress && done - reported >= kProgressStepBytes) {
      o.progress(done);
      reported = done;
    }
  }
  if (o.progress) o.progress(text->size());
  return absl::OkStatus();
}

absl::Status read_jsonl(const std::string& path, const DataReadOptions& o, const DocumentSink& sink) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string line;
  std::vector<uint32_t> ids;
  uint64_t bytes = 0, reported = 0;
  for (size_t line_no = 1; std::getline(f, line); ++line_no) {
    bytes += line.size() + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    Json j;
    try {
      j = Json::parse(line);
    } catch (const Json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON: ", e.what()));
    }
    ids.clear();
    if (j.is_object() && j.contains("input_ids")) {
      const Json& arr = j["input_ids"];
      if (!arr.is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": \"input_ids\" must be an array"));
      }
      const uint32_t limit = id_limit(o);
      for (size_t k = 0; k < arr.size(); ++k) {
        if (!arr[k].is_number_integer() || arr[k].get<int64_t>() < 0 ||
            arr[k].get<uint64_t>() >= limit) {
          return absl::OutOfRangeError(absl::StrCat(where, ": input_ids[", k, "] = ", arr[k].dump(),
                                                    " is not an id in the vocabulary (size ",
                                                    limit, ")"));
        }
        ids.push_back(arr[k].get<uint32_t>());
      }
    } else if (j.is_object() && j.contains("text") && j["text"].is_string()) {
      if (auto s = need_tokenizer(o, path); !s.ok()) return s;
      if (auto s = o.tokenizer->encode_append(j["text"].get<std::string>(), ids); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat(where, ": ", std::string(s.message())));
      }
      if (auto s = check_ids(ids, id_limit(o), where); !s.ok()) return s;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": expected an object with \"text\" (string) or \"input_ids\""));
    }
    if (auto s = sink(ids); !s.ok()) return s;
    if (o.progress && bytes - reported >= kProgressStepBytes) {
      o.progress(bytes);
      reported = bytes;
    }
  }
  if (f.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  if (o.progress) o.progress(bytes);
  return absl::OkStatus();
}

absl::Status read_tokens(const std::string& path, const DataReadOptions& o, const DocumentSink& sink) {
  TokenFileCheck check;
  if (o.tokenizer) check.tokenizer_fingerprint = o.tokenizer->fingerprint();
  check.vocab_size = o.vocab_size;
  absl::StatusOr<TokenFile> file = read_token_file(path, check);
  if (!file.ok()) return file.status();
  uint64_t begin = 0;
  for (uint64_t end : file->document_ends) {
    if (auto s = sink(std::span(file->ids).subspan(begin, end - begin)); !s.ok()) return s;
    begin = end;
  }
  if (o.progress) {
    std::error_code ec;
    const uint64_t on_disk = std::filesystem::file_size(path, ec);
    o.progress(ec ? 0 : on_disk);
  }
  return absl::OkStatus();
}

}  // namespace

DataFormat data_format_of(const std::string& path) {
  if (absl::EndsWith(path, ".txt")) return DataFormat::kText;
  if (absl::EndsWith(path, ".jsonl")) return DataFormat::kJsonLines;
  return DataFormat::kTokenFile;
}

std::vector<std::string_view> split_text_documents(std::string_view text) {
  std::vector<std::string_view> docs;
  size_t doc_begin = std::string_view::npos;  // start of the open document, if any
  size_t doc_end = 0;                         // end of its last non-empty line's content
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    const size_t line_end = nl == std::string_view::npos ? text.size() : nl;
    size_t content_end = line_end;
    if (content_end > pos && text[content_end - 1] == '\r') --content_end;
    if (content_end == pos) {
      if (doc_begin != std::string_view::npos) {
        docs.push_back(text.substr(doc_begin, doc_end - doc_begin));
        doc_begin = std::string_view::npos;
      }
    } else {
      if (doc_begin == std::string_view::npos) doc_begin = pos;
      doc_end = content_end;
    }
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  if (doc_begin != std::string_view::npos) docs.push_back(text.substr(doc_begin, doc_end - doc_begin));
  return docs;
}

absl::Status for_each_document(const std::string& path, const DataReadOptions& options,
                               const DocumentSink& sink) {
  switch (data_format_of(path)) {
    case DataFormat::kText:
      return read_text(path, options, sink);
    case DataFormat::kJsonLines:
      return read_jsonl(path, options, sink);
    case DataFormat::kTokenFile:
      return read_tokens(path, options, sink);
  }
  return absl::InternalError("unreachable data format");
}

absl::StatusOr<Corpus> load_corpus(const std::vector<std::string>& paths,
                                   const DataReadOptions& options) {
  Corpus corpus;
  for (const std::string& path : paths) {
    absl::Status s = for_each_document(path, options, [&](std::span<const uint32_t> ids) {
      corpus.ids.insert(corpus.ids.end(), ids.begin(), ids.end());
      corpus.document_ends.push_back(corpus.ids.size());
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
  }
  return corpus;
}

// --- chunking ----------------------------------------------------------------------------------
namespace {

// SplitMix64: a small, fully specified generator, so a seed gives the same epoch order on every
// platform (std::shuffle's use of a distribution is implementation-defined).
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) by rejection (no modulo bias).
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
      x = next();
    } while (x >= limit);
    return x % n;
  }
};

}  // namespace

absl::StatusOr<ChunkedDataset> ChunkedDataset::build(const Corpus& corpus,
                                                     std::span<const uint32_t> separator,
                                                     const ChunkOptions& options) {
  if (options.seq_len <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len must be positive, got ", options.seq_len));
  }
  if (!(options.holdout_fraction >= 0.0 && options.holdout_fraction < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("holdout fraction must be in [0, 1), got ", options.holdout_fraction));
  }
  ChunkedDataset ds;
  ds.seq_len_ = options.seq_len;
  ds.seed_ = options.seed;
  uint64_t begin = 0;
  bool first = true;
  for (uint64_t end : corpus.document_ends) {
    if (end > begin) {
      if (!first) ds.stream_.insert(ds.stream_.end(), separator.begin(), separator.end());
      ds.stream_.insert(ds.stream_.end(), corpus.ids.begin() + begin, corpus.ids.begin() + end);
      first = false;
    }
    begin = end;
  }
  ds.stream_tokens_ = ds.stream_.size();
  const uint64_t chunks = ds.stream_.size() / static_cast<uint64_t>(options.seq_len);
  ds.stream_.resize(chunks * options.seq_len);
  ds.stream_.shrink_to_fit();
  uint64_t holdout = static_cast<uint64_t>(std::llround(options.holdout_fraction * chunks));
  if (options.holdout_fraction > 0.0 && holdout == 0) holdout = 1;
  if (holdout > 0 && holdout >= chunks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "holdout fraction ", options.holdout_fraction, " of ", chunks, " chunks of ",
        options.seq_len, " tokens leaves no training chunk (the data has ", ds.stream_tokens_,
        " tokens)"));
  }
  ds.holdout_chunks_ = holdout;
  ds.train_chunks_ = chunks - holdout;
  return ds;
}

std::vector<uint32_t> ChunkedDataset::epoch_order(uint64_t epoch) const {
  std::vector<uint32_t> order(train_chunks_);
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<uint32_t>(i);
  SplitMix64 rng{seed_ ^ (epoch * 0xD1B54A32D192ED03ull)};
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  return order;
}

std::span<const uint32_t> ChunkedDataset::train_chunk(size_t i) const {
  return std::span(stream_).subspan(i * seq_len_, seq_len_);
}

std::span<const uint32_t> ChunkedDataset::holdout_chunk(size_t i) const {
  return std::span(stream_).subspan((train_chunks_ + i) * seq_len_, seq_len_);
}

}  // namespace engine
