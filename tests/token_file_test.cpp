// Token file tests: round trips (plain and .zst), the byte layout checked by hand against the
// documented format, and one test per kind of corruption, each expecting a one-line error that
// names the file.
#include "model/token_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zstd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace engine {
namespace {

using ::testing::HasSubstr;

class TokenFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("token_file_test." + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  static TokenFile sample(uint32_t vocab = 1000) {
    TokenFile f;
    f.header.tokenizer_fingerprint = 0x0123456789ABCDEFull;
    f.header.vocab_size = vocab;
    std::mt19937 rng(5);
    for (size_t len : {17u, 0u, 1u, 300u, 5u}) {  // includes an empty document
      for (size_t i = 0; i < len; ++i) f.ids.push_back(rng() % vocab);
      f.document_ends.push_back(f.ids.size());
    }
    return f;
  }
  static std::string slurp(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  static void spit(const std::string& p, const std::string& bytes) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << bytes;
  }
  std::string error_of(const std::string& p, const TokenFileCheck& check = {}) {
    auto r = read_token_file(p, check);
    EXPECT_FALSE(r.ok()) << p;
    return r.ok() ? std::string() : std::string(r.status().message());
  }

  std::filesystem::path dir_;
};

TEST_F(TokenFileTest, RoundTripPlainAndZstd) {
  const TokenFile f = sample();
  for (const std::string name : {"a.tok", "a.tok.zst"}) {
    ASSERT_TRUE(write_token_file(path(name), f).ok()) << name;
    auto r = read_token_file(path(name), {.tokenizer_fingerprint = f.header.tokenizer_fingerprint,
                                          .vocab_size = 1000});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->ids, f.ids);
    EXPECT_EQ(r->document_ends, f.document_ends);
    EXPECT_EQ(r->header.token_count, f.ids.size());
    EXPECT_EQ(r->header.document_count, 5u);
    EXPECT_EQ(r->header.tokenizer_fingerprint, f.header.tokenizer_fingerprint);
    EXPECT_EQ(r->header.vocab_size, 1000u);
  }
  EXPECT_FALSE(std::filesystem::exists(path("a.tok.zst.partial")));
  // The .zst file really is a zstd frame holding the plain file's exact bytes.
  const std::string plain = slurp(path("a.tok"));
  const std::string packed = slurp(path("a.tok.zst"));
  std::string unpacked(plain.size(), '\0');
  const size_t n = ZSTD_decompress(unpacked.data(), unpacked.size(), packed.data(), packed.size());
  ASSERT_FALSE(ZSTD_isError(n));
  EXPECT_EQ(unpacked.substr(0, n), plain);
}

TEST_F(TokenFileTest, ByteLayoutIsTheDocumentedOne) {
  const TokenFile f = sample();
  ASSERT_TRUE(write_token_file(path("b.tok"), f).ok());
  const std::string b = slurp(path("b.tok"));
  ASSERT_EQ(b.size(), 64 + 4 * f.ids.size() + 8 * f.document_ends.size());
  auto u32 = [&](size_t at) { uint32_t v; std::memcpy(&v, b.data() + at, 4); return v; };
  auto u64 = [&](size_t at) { uint64_t v; std::memcpy(&v, b.data() + at, 8); return v; };
  EXPECT_EQ(b.substr(0, 8), "BLMTOKEN");
  EXPECT_EQ(u32(8), 1u);    // version
  EXPECT_EQ(u32(12), 64u);  // header bytes
  EXPECT_EQ(u32(16), 4u);   // token width
  EXPECT_EQ(u32(20), 0u);   // reserved
  EXPECT_EQ(u64(24), f.ids.size());
  EXPECT_EQ(u64(32), 5u);
  EXPECT_EQ(u64(40), 0x0123456789ABCDEFull);
  EXPECT_EQ(u32(48), 1000u);
  for (size_t k = 52; k < 64; ++k) EXPECT_EQ(b[k], 0) << k;
  for (size_t i = 0; i < f.ids.size(); ++i) ASSERT_EQ(u32(64 + 4 * i), f.ids[i]);
  const size_t idx = 64 + 4 * f.ids.size();
  for (size_t d = 0; d < 5; ++d) EXPECT_EQ(u64(idx + 8 * d), f.document_ends[d]);
}

TEST_F(TokenFileTest, EmptyFileRoundTrips) {
  TokenFile f;
  f.header.vocab_size = 10;
  ASSERT_TRUE(write_token_file(path("e.tok.zst"), f).ok());
  auto r = read_token_file(path("e.tok.zst"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->ids.empty());
  EXPECT_TRUE(r->document_ends.empty());
}

TEST_F(TokenFileTest, CorruptionsAreNamedErrors) {
  ASSERT_TRUE(write_token_file(path("good.tok"), sample()).ok());
  const std::string good = slurp(path("good.tok"));

  std::string bytes = good;
  bytes[0] = 'X';
  spit(path("magic.tok"), bytes);
  EXPECT_THAT(error_of(path("magic.tok")), HasSubstr("magic.tok: not an engine token file"));

  bytes = good;
  bytes[8] = 2;
  spit(path("version.tok"), bytes);
  EXPECT_THAT(error_of(path("version.tok")), HasSubstr("version.tok: token file version 2"));

  bytes = good;
  bytes[16] = 2;
  spit(path("width.tok"), bytes);
  EXPECT_THAT(error_of(path("width.tok")), HasSubstr("token width 2"));

  spit(path("short_header.tok"), good.substr(0, 40));
  EXPECT_THAT(error_of(path("short_header.tok")), HasSubstr("short_header.tok: truncated"));

  spit(path("short_ids.tok"), good.substr(0, 64 + 4 * 100 + 2));
  EXPECT_THAT(error_of(path("short_ids.tok")),
              HasSubstr("short_ids.tok: truncated: 323 token ids"));

  spit(path("short_index.tok"), good.substr(0, good.size() - 3));
  EXPECT_THAT(error_of(path("short_index.tok")), HasSubstr("5 document offsets"));

  spit(path("trailing.tok"), good + "x");
  EXPECT_THAT(error_of(path("trailing.tok")), HasSubstr("trailing.tok: trailing bytes"));

  bytes = good;
  const uint64_t bad_end = 1;  // document 1 would end before document 0 (17)
  std::memcpy(bytes.data() + good.size() - 4 * 8, &bad_end, 8);
  spit(path("offsets.tok"), bytes);
  EXPECT_THAT(error_of(path("offsets.tok")), HasSubstr("offsets.tok: document 1 ends at token 1"));

  EXPECT_THAT(error_of(path("good.tok"), {.tokenizer_fingerprint = 42}),
              HasSubstr("good.tok: made by a different tokenizer"));

  bytes = good;
  const uint32_t huge = 5000;  // above the recorded vocabulary size 1000
  std::memcpy(bytes.data() + 64 + 4 * 7, &huge, 4);
  spit(path("oov.tok"), bytes);
  EXPECT_THAT(error_of(path("oov.tok")),
              HasSubstr("oov.tok: token 7 has id 5000, outside the vocabulary (size 1000)"));

  // A caller's smaller limit (the model's vocabulary) applies too.
  const TokenFile f = sample();
  size_t first_big = 0;
  while (f.ids[first_big] < 500) ++first_big;
  EXPECT_THAT(error_of(path("good.tok"), {.vocab_size = 500}),
              HasSubstr("token " + std::to_string(first_big) + " has id"));

  EXPECT_EQ(read_token_file(path("missing.tok")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(TokenFileTest, CorruptZstdStreamsAreNamedErrors) {
  ASSERT_TRUE(write_token_file(path("good.tok.zst"), sample()).ok());
  const std::string good = slurp(path("good.tok.zst"));
  spit(path("cut.tok.zst"), good.substr(0, good.size() / 2));
  EXPECT_THAT(error_of(path("cut.tok.zst")), HasSubstr("cut.tok.zst: truncated"));
  spit(path("junk.tok.zst"), "this is not zstd at all");
  EXPECT_THAT(error_of(path("junk.tok.zst")), HasSubstr("junk.tok.zst: zstd decompression failed"));
}

TEST_F(TokenFileTest, WriterRejectsIdsOutsideTheVocabulary) {
  auto w = TokenFileWriter::create(path("w.tok"), 1, 100);
  ASSERT_TRUE(w.ok());
  const std::vector<uint32_t> ok = {1, 2, 99};
  const std::vector<uint32_t> bad = {1, 100};
  EXPECT_TRUE(w->add_document(ok).ok());
  auto s = w->add_document(bad);
  EXPECT_THAT(std::string(s.message()), HasSubstr("document 1 token 1 has id 100"));
  ASSERT_TRUE(w->close().ok());
  auto r = read_token_file(path("w.tok"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->ids, ok);
}

}  // namespace
}  // namespace engine
