// libFuzzer target: arbitrary bytes as an engine token file (model/token_file.h). The reader works
// on paths, so each input is written to a scratch file; inputs that start with the zstd frame
// magic are also read through the ".zst" streaming path. read_token_file must never crash and
// must not allocate beyond what the data proves to exist; every file it accepts must be
// internally consistent (counts, monotone document ends covering every token, ids in range).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "model/token_file.h"

namespace {

constexpr unsigned char kZstdMagic[4] = {0x28, 0xb5, 0x2f, 0xfd};
// A caller-side vocabulary limit, applied to every other input, so both limit paths are covered.
constexpr uint32_t kCallerVocab = 300;

const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    std::string templ =
        (std::filesystem::temp_directory_path() / "token_file_fuzz.XXXXXX").string();
    if (mkdtemp(templ.data()) == nullptr) std::abort();
    std::atexit([] { std::filesystem::remove_all(scratch_dir()); });
    return std::filesystem::path(templ);
  }();
  return dir;
}

void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  if (std::fclose(f) != 0) std::abort();
}

void check(const std::string& path, const engine::TokenFileCheck& limits) {
  absl::StatusOr<engine::TokenFile> file = engine::read_token_file(path, limits);
  if (!file.ok()) {
    if (file.status().message().empty()) std::abort();
    return;
  }
  const engine::TokenFileHeader& h = file->header;
  if (file->ids.size() != h.token_count || file->document_ends.size() != h.document_count) {
    std::abort();
  }
  uint64_t prev = 0;
  for (uint64_t end : file->document_ends) {
    if (end < prev) std::abort();
    prev = end;
  }
  if (prev != h.token_count) std::abort();
  for (uint32_t id : file->ids) {
    if (id >= h.vocab_size || (limits.vocab_size && id >= *limits.vocab_size)) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  engine::TokenFileCheck limits;
  if (size % 2 == 1) limits.vocab_size = kCallerVocab;
  const std::string plain = (scratch_dir() / "tokens.bin").string();
  write_bytes(plain, data, size);
  check(plain, limits);
  if (size >= sizeof kZstdMagic && std::memcmp(data, kZstdMagic, sizeof kZstdMagic) == 0) {
    const std::string zst = (scratch_dir() / "tokens.bin.zst").string();
    write_bytes(zst, data, size);
    check(zst, limits);
  }
  return 0;
}
