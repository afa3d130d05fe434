// libFuzzer target: arbitrary bytes as a .jsonl data file (model/dataset.h), read with a
// byte-level tokenizer. for_each_document must never crash; every document it yields must hold
// only ids inside the vocabulary, and chunking the accepted corpus must give whole in-range chunks.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "model/dataset.h"
#include "model/tokenizer.h"

namespace {

// Tiny chunks so that even short inputs make several of them.
constexpr int64_t kSeqLen = 4;
constexpr double kHoldout = 0.25;

const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    std::string templ =
        (std::filesystem::temp_directory_path() / "jsonl_data_fuzz.XXXXXX").string();
    if (mkdtemp(templ.data()) == nullptr) std::abort();
    std::atexit([] { std::filesystem::remove_all(scratch_dir()); });
    return std::filesystem::path(templ);
  }();
  return dir;
}

engine::Tokenizer& byte_tokenizer() {
  static engine::Tokenizer* tok = [] {
    absl::StatusOr<engine::Tokenizer> t =
        engine::Tokenizer::from_json(engine::byte_level_tokenizer_json(), "byte-level");
    if (!t.ok()) std::abort();
    return new engine::Tokenizer(*std::move(t));
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = (scratch_dir() / "data.jsonl").string();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  if (std::fclose(f) != 0) std::abort();

  engine::Tokenizer& tok = byte_tokenizer();
  engine::DataReadOptions options;
  options.tokenizer = &tok;
  absl::StatusOr<engine::Corpus> corpus = engine::load_corpus({path}, options);
  if (!corpus.ok()) {
    if (corpus.status().message().empty()) std::abort();
    return 0;
  }
  for (uint32_t id : corpus->ids) {
    if (id >= tok.vocab_size()) std::abort();
  }
  absl::StatusOr<std::vector<uint32_t>> separator = tok.encode("\n\n");
  if (!separator.ok()) std::abort();
  absl::StatusOr<engine::ChunkedDataset> chunks = engine::ChunkedDataset::build(
      *corpus, *separator, {.seq_len = kSeqLen, .holdout_fraction = kHoldout, .seed = size});
  if (!chunks.ok()) return 0;
  for (uint32_t i : chunks->epoch_order(0)) {
    if (i >= chunks->train_size()) std::abort();
    if (chunks->train_chunk(i).size() != static_cast<size_t>(kSeqLen)) std::abort();
  }
  for (size_t i = 0; i < chunks->holdout_size(); ++i) {
    for (uint32_t id : chunks->holdout_chunk(i)) {
      if (id >= tok.vocab_size()) std::abort();
    }
  }
  return 0;
}
