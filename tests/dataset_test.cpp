// Data loading and chunking tests. Text inputs are checked against ids recorded from the
// `tokenizers` library (tests/fixtures/tokenizer/cases.jsonl); chunk counts and contents against
// an independent re-computation of the method's rule.
#include "model/dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "model/token_file.h"
#include "nlohmann/json.hpp"

namespace engine {
namespace {

using Json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kFixtures = std::string(ENGINE_SOURCE_DIR) + "/tests/fixtures/tokenizer/";

struct Case {
  std::string text;
  std::vector<uint32_t> ids;
};

// Fixture cases usable as one-line documents: non-empty, no line breaks, not only spaces.
std::vector<Case> single_line_cases() {
  std::vector<Case> out;
  std::ifstream f(kFixtures + "cases.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    Json j = Json::parse(line);
    std::string t = j["text"];
    if (t.empty() || t.find_first_of("\r\n") != std::string::npos) continue;
    out.push_back({t, j["ids"].get<std::vector<uint32_t>>()});
  }
  return out;
}

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("dataset_test." + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    auto tok = Tokenizer::load(kFixtures + "tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::make_unique<Tokenizer>(std::move(*tok));
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& content) {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  std::filesystem::path dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST(SplitTextDocuments, BlankLinesSeparateDocuments) {
  EXPECT_THAT(split_text_documents(""), ElementsAre());
  EXPECT_THAT(split_text_documents("\n\n\n"), ElementsAre());
  EXPECT_THAT(split_text_documents("one line"), ElementsAre("one line"));
  EXPECT_THAT(split_text_documents("a\nb\n\nc\n"), ElementsAre("a\nb", "c"));
  EXPECT_THAT(split_text_documents("\n\na\n\n\n\nb\n\n"), ElementsAre("a", "b"));
  EXPECT_THAT(split_text_documents("a\r\nb\r\n\r\nc"), ElementsAre("a\r\nb", "c"));
  // A line of spaces is content, not a separator.
  EXPECT_THAT(split_text_documents("a\n  \nb"), ElementsAre("a\n  \nb"));
}

TEST_F(DatasetTest, TextDocumentsMatchTokenizers) {
  const std::vector<Case> cases = single_line_cases();
  ASSERT_GT(cases.size(), 200u);
  std::string text;
  std::vector<const Case*> expected;
  for (const Case& c : cases) {
    if (c.text.find_first_not_of(' ') == std::string::npos) continue;
    text += c.text + "\n\n";
    expected.push_back(&c);
  }
  const std::string p = write("docs.txt", text);
  DataReadOptions o{.tokenizer = tokenizer_.get()};
  size_t d = 0;
  uint64_t last_progress = 0;
  o.progress = [&](uint64_t b) { last_progress = b; };
  ASSERT_TRUE(for_each_document(p, o, [&](std::span<const uint32_t> ids) {
                EXPECT_EQ(std::vector<uint32_t>(ids.begin(), ids.end()), expected[d]->ids)
                    << expected[d]->text;
                ++d;
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(d, expected.size());
  EXPECT_EQ(last_progress, text.size());
}

TEST_F(DatasetTest, JsonLinesTextAndInputIds) {
  const std::vector<Case> cases = single_line_cases();
  std::string jsonl;
  for (size_t i = 0; i < 20; ++i) {
    jsonl += Json{{"text", cases[i].text}}.dump() + "\n";
    jsonl += Json{{"input_ids", cases[i].ids}}.dump() + "\n\n";  // blank lines are skipped
  }
  auto corpus = load_corpus({write("d.jsonl", jsonl)}, {.tokenizer = tokenizer_.get()});
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  ASSERT_EQ(corpus->document_ends.size(), 40u);
  uint64_t begin = 0;
  for (size_t d = 0; d < 40; ++d) {
    const uint64_t end = corpus->document_ends[d];
    EXPECT_EQ(std::vector<uint32_t>(corpus->ids.begin() + begin, corpus->ids.begin() + end),
              cases[d / 2].ids);
    begin = end;
  }
}

TEST_F(DatasetTest, ErrorsNameFileAndPosition) {
  const DataReadOptions o{.tokenizer = tokenizer_.get()};
  const auto err = [&](const std::string& name, const std::string& content,
                       const DataReadOptions& opt) {
    auto c = load_corpus({write(name, content)}, opt);
    EXPECT_FALSE(c.ok()) << name;
    return c.ok() ? std::string() : std::string(c.status().message());
  };
  EXPECT_THAT(err("a.jsonl", "{\"text\": \"ok\"}\n{\"input_ids\": [1, 2, 3000]}\n", o),
              HasSubstr("a.jsonl:2: input_ids[2] = 3000 is not an id in the vocabulary (size 3000)"));
  EXPECT_THAT(err("b.jsonl", "{\"input_ids\": [1, -2]}\n", o), HasSubstr("b.jsonl:1: input_ids[1]"));
  EXPECT_THAT(err("c.jsonl", "{\"text\": \"ok\"}\n\n{oops\n", o), HasSubstr("c.jsonl:3: not valid JSON"));
  EXPECT_THAT(err("d.jsonl", "{\"content\": \"x\"}\n", o), HasSubstr("d.jsonl:1: expected an object"));
  EXPECT_THAT(err("e.txt", std::string("fine\n\nbad \xFF byte"), o),
              HasSubstr("e.txt: not valid UTF-8 at byte offset 10"));
  EXPECT_THAT(err("f.txt", "text", DataReadOptions{}), HasSubstr("f.txt: text input needs a tokenizer"));
  // The model's vocabulary may be smaller than the ids in the data.
  EXPECT_THAT(err("g.jsonl", "{\"input_ids\": [5, 250]}\n",
                  DataReadOptions{.tokenizer = tokenizer_.get(), .vocab_size = 200}),
              HasSubstr("g.jsonl:1: input_ids[1] = 250"));
  EXPECT_THAT(err("h.txt", "hello world", DataReadOptions{.tokenizer = tokenizer_.get(), .vocab_size = 10}),
              HasSubstr("h.txt: document 0: token 0 has id"));
}

TEST_F(DatasetTest, TokenFilesAreCheckedAgainstTheTokenizer) {
  TokenFile f;
  f.header.vocab_size = tokenizer_->vocab_size();
  f.header.tokenizer_fingerprint = tokenizer_->fingerprint();
  f.ids = {5, 6, 7, 8};
  f.document_ends = {1, 4};
  const std::string p = (dir_ / "t.tok.zst").string();
  ASSERT_TRUE(write_token_file(p, f).ok());
  auto corpus = load_corpus({p}, {.tokenizer = tokenizer_.get()});
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  EXPECT_EQ(corpus->ids, f.ids);
  EXPECT_THAT(corpus->document_ends, ElementsAre(1, 4));

  f.header.tokenizer_fingerprint ^= 1;
  ASSERT_TRUE(write_token_file(p, f).ok());
  auto wrong = load_corpus({p}, {.tokenizer = tokenizer_.get()});
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr("made by a different tokenizer"));
  EXPECT_TRUE(load_corpus({p}, {}).ok());  // without a tokenizer only the ids are checked
}

// Independent statement of the rule: join non-empty documents with the separator, cut.
std::vector<uint32_t> naive_stream(const std::vector<std::vector<uint32_t>>& docs,
                                   const std::vector<uint32_t>& sep) {
  std::vector<uint32_t> s;
  for (const auto& d : docs) {
    if (d.empty()) continue;
    if (!s.empty()) s.insert(s.end(), sep.begin(), sep.end());
    s.insert(s.end(), d.begin(), d.end());
  }
  return s;
}

TEST(ChunkedDataset, CountsContentsHoldoutAndShuffle) {
  std::vector<std::vector<uint32_t>> docs;
  Corpus corpus;
  uint32_t next = 10;
  for (size_t len : {7u, 0u, 13u, 1u, 40u, 0u, 22u}) {
    docs.emplace_back();
    for (size_t i = 0; i < len; ++i) docs.back().push_back(next++);
    corpus.ids.insert(corpus.ids.end(), docs.back().begin(), docs.back().end());
    corpus.document_ends.push_back(corpus.ids.size());
  }
  const std::vector<uint32_t> sep = {1, 2};
  const std::vector<uint32_t> stream = naive_stream(docs, sep);
  ASSERT_EQ(stream.size(), 83u + 2u * 4u);  // 83 tokens, 5 non-empty documents -> 4 separators

  auto ds = ChunkedDataset::build(corpus, sep, {.seq_len = 8, .holdout_fraction = 0.2, .seed = 9});
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->stream_tokens(), 91u);
  EXPECT_EQ(ds->dropped_tokens(), 3u);     // 91 = 11 * 8 + 3
  EXPECT_EQ(ds->holdout_size(), 2u);       // round(0.2 * 11)
  EXPECT_EQ(ds->train_size(), 9u);
  for (size_t i = 0; i < 11; ++i) {
    auto chunk = i < 9 ? ds->train_chunk(i) : ds->holdout_chunk(i - 9);
    EXPECT_TRUE(std::equal(chunk.begin(), chunk.end(), stream.begin() + 8 * i)) << i;
  }

  const std::vector<uint32_t> e0 = ds->epoch_order(0), e1 = ds->epoch_order(1);
  std::vector<uint32_t> sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_THAT(sorted, ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8));
  EXPECT_NE(e0, e1);
  EXPECT_EQ(e0, ds->epoch_order(0));
  auto other_seed = ChunkedDataset::build(corpus, sep, {.seq_len = 8, .holdout_fraction = 0.2, .seed = 10});
  EXPECT_NE(other_seed->epoch_order(0), e0);

  auto no_holdout = ChunkedDataset::build(corpus, sep, {.seq_len = 91});
  ASSERT_TRUE(no_holdout.ok());
  EXPECT_EQ(no_holdout->train_size(), 1u);
  EXPECT_EQ(no_holdout->dropped_tokens(), 0u);
  auto too_short = ChunkedDataset::build(corpus, sep, {.seq_len = 92});
  ASSERT_TRUE(too_short.ok());
  EXPECT_EQ(too_short->train_size(), 0u);
  EXPECT_FALSE(ChunkedDataset::build(corpus, sep, {.seq_len = 50, .holdout_fraction = 0.5}).ok());
  EXPECT_FALSE(ChunkedDataset::build(corpus, sep, {.seq_len = 0}).ok());
  EXPECT_FALSE(ChunkedDataset::build(corpus, sep, {.seq_len = 8, .holdout_fraction = 1.0}).ok());
}

TEST_F(DatasetTest, SeparatorIsABlankLineAndJoiningMatchesTokenizingTheJoinedText) {
  // For documents that start and end with a letter, tokenizing them separately and joining with
  // the ids of "\n\n" gives the ids `tokenizers` gives the joined text: the split pattern never
  // lets a piece cross a newline.
  auto sep = tokenizer_->encode("\n\n");
  ASSERT_TRUE(sep.ok());
  auto a = tokenizer_->encode("The river kept its own calendar");
  auto b = tokenizer_->encode("Nobody trusted the ferry");
  auto joined = tokenizer_->encode("The river kept its own calendar\n\nNobody trusted the ferry");
  std::vector<uint32_t> manual = *a;
  manual.insert(manual.end(), sep->begin(), sep->end());
  manual.insert(manual.end(), b->begin(), b->end());
  EXPECT_EQ(manual, *joined);
}

}  // namespace
}  // namespace engine

namespace engine {
namespace {

// The CLI end to end: fixture texts as a .txt -> `engine tokenize` -> token file whose documents
// hold the ids `tokenizers` produced -> `engine detokenize` -> the original documents.
TEST_F(DatasetTest, CliTokenizeAndDetokenizeRoundTrip) {
  std::string text;
  std::vector<Case> expected;
  for (const Case& c : single_line_cases()) {
    if (c.text.find_first_not_of(' ') == std::string::npos) continue;
    text += c.text + "\n\n";
    expected.push_back(c);
  }
  const std::string in = write("in.txt", text);
  const std::string tok = (dir_ / "out.tok.zst").string();
  const std::string jsonl = (dir_ / "out.jsonl").string();
  const std::string back = (dir_ / "back.txt").string();
  const std::string cli = std::string(ENGINE_CLI_PATH) + " ";
  const std::string tokenizer = "--tokenizer " + kFixtures + "tokenizer.json ";
  ASSERT_EQ(std::system((cli + "tokenize " + tokenizer + "--in " + in + " --out " + tok +
                         " 2>/dev/null").c_str()), 0);
  ASSERT_EQ(std::system((cli + "tokenize " + tokenizer + in + " --out " + jsonl + " 2>/dev/null").c_str()), 0);
  ASSERT_EQ(std::system((cli + "detokenize " + tokenizer + "--in " + tok + " --out " + back +
                         " 2>/dev/null").c_str()), 0);
  auto file = read_token_file(tok, {.tokenizer_fingerprint = tokenizer_->fingerprint()});
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->document_ends.size(), expected.size());
  std::ifstream lines(jsonl);
  std::string line;
  uint64_t begin = 0;
  std::string expected_text;
  for (size_t d = 0; d < expected.size(); ++d) {
    const uint64_t end = file->document_ends[d];
    EXPECT_EQ(std::vector<uint32_t>(file->ids.begin() + begin, file->ids.begin() + end),
              expected[d].ids);
    ASSERT_TRUE(std::getline(lines, line));
    EXPECT_EQ(Json::parse(line)["input_ids"].get<std::vector<uint32_t>>(), expected[d].ids);
    begin = end;
    expected_text += expected[d].text + (d + 1 < expected.size() ? "\n\n" : "\n");
  }
  std::ifstream b(back, std::ios::binary);
  std::stringstream ss;
  ss << b.rdbuf();
  EXPECT_EQ(ss.str(), expected_text);
  // A missing input is exit code 1 with a one-line message.
  EXPECT_NE(std::system((cli + "tokenize " + tokenizer + "--in " + (dir_ / "none.txt").string() +
                         " --out " + tok + " 2>/dev/null").c_str()), 0);
}

}  // namespace
}  // namespace engine
