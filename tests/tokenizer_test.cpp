// Tokenizer tests: every id sequence in tests/fixtures/tokenizer/ was produced by the Hugging Face
// `tokenizers` library (make_tokenizer_fixtures.py); the C++ tokenizer must reproduce each one
// exactly, round-trip every case, and reject what it cannot handle with a one-line error.
#include "model/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <fstream>
#include <set>
#include <sstream>

#include "nlohmann/json.hpp"

namespace engine {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;

const std::string kFixtures = std::string(ENGINE_SOURCE_DIR) + "/tests/fixtures/tokenizer/";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Case {
  std::string text;
  std::vector<uint32_t> ids;
};

std::vector<Case> read_cases(const std::string& name) {
  std::vector<Case> cases;
  std::ifstream f(kFixtures + name);
  std::string line;
  while (std::getline(f, line)) {
    Json j = Json::parse(line);
    cases.push_back({j["text"].get<std::string>(), j["ids"].get<std::vector<uint32_t>>()});
  }
  return cases;
}

Tokenizer load_fixture_tokenizer() {
  auto tok = Tokenizer::load(kFixtures + "tokenizer.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(*tok);
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (name + "." + std::to_string(::getpid()))).string();
}

TEST(Tokenizer, MatchesTokenizersOnEveryFixtureCase) {
  Tokenizer tok = load_fixture_tokenizer();
  const std::vector<Case> cases = read_cases("cases.jsonl");
  ASSERT_GE(cases.size(), 300u);
  int mismatches = 0;
  for (const Case& c : cases) {
    auto ids = tok.encode(c.text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (*ids != c.ids && ++mismatches <= 5) {
      ADD_FAILURE() << "text " << Json(c.text).dump() << "\n  got      "
                    << Json(*ids).dump() << "\n  expected " << Json(c.ids).dump();
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Tokenizer, FreshTokenizerAgreesWithWarmCache) {
  // The per-piece cache must not change results: encode every case twice with one object (second
  // pass served from the cache) and once more with a fresh copy, in reverse order.
  Tokenizer warm = load_fixture_tokenizer();
  const std::vector<Case> cases = read_cases("cases.jsonl");
  for (const Case& c : cases) ASSERT_TRUE(warm.encode(c.text).ok());
  Tokenizer fresh = warm;
  for (auto it = cases.rbegin(); it != cases.rend(); ++it) {
    EXPECT_EQ(*warm.encode(it->text), it->ids);
    EXPECT_EQ(*fresh.encode(it->text), it->ids);
  }
}

TEST(Tokenizer, DecodeInvertsEncodeOnEveryCase) {
  Tokenizer tok = load_fixture_tokenizer();
  for (const Case& c : read_cases("cases.jsonl")) {
    auto text = tok.decode(c.ids);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c.text);
  }
}

// The split set, written out independently of the tokenizer: Oniguruma whitespace plus BLOOM's
// excluded punctuation.
bool independent_split_char(uint32_t cp) {
  static const std::set<uint32_t> kSet = {
      0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003,
      0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F,
      0x3000, '(', ')', '|', '.', ',', '!', '?', 0x2026, 0x3002, 0xFF0C, 0x3001, 0x0964, 0x06D4,
      0x060C};
  return kSet.count(cp) > 0;
}

std::string remove_split_chars(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    const size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
    if (!independent_split_char(cp)) out.append(s, i, len);
    i += len;
  }
  return out;
}

uint64_t fnv1a64_ids(const std::vector<uint32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint32_t id : ids) {
    for (int k = 0; k < 4; ++k) {
      h ^= (id >> (8 * k)) & 0xFF;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

TEST(Tokenizer, LongInputsMatchTokenizers) {
  Tokenizer tok = load_fixture_tokenizer();
  const std::string sample = read_file(kFixtures + "sample.txt");
  ASSERT_FALSE(sample.empty());
  Json longs = Json::parse(read_file(kFixtures + "long_cases.json"));
  ASSERT_EQ(longs.size(), 2u);
  for (const Json& l : longs) {
    const std::string name = l["name"];
    std::string unit;
    if (name == "spaces") {
      unit = sample;
      std::replace(unit.begin(), unit.end(), '\n', ' ');
    } else {
      ASSERT_EQ(name, "single_piece");
      unit = remove_split_chars(sample);
    }
    std::string text;
    for (int i = 0; i < l["repeat"].get<int>(); ++i) text += unit;
    if (name == "spaces") {
      EXPECT_GE(text.size(), size_t{1} << 20);
      EXPECT_EQ(text.find('\n'), std::string::npos);
    }
    auto ids = tok.encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    SCOPED_TRACE(name);
    EXPECT_EQ(ids->size(), l["token_count"].get<size_t>());
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a64_ids(*ids)));
    EXPECT_EQ(std::string(hex), l["fnv1a64_ids"].get<std::string>());
    const auto first = l["first_ids"].get<std::vector<uint32_t>>();
    const auto last = l["last_ids"].get<std::vector<uint32_t>>();
    ASSERT_GE(ids->size(), first.size());
    EXPECT_EQ(std::vector<uint32_t>(ids->begin(), ids->begin() + first.size()), first);
    EXPECT_EQ(std::vector<uint32_t>(ids->end() - last.size(), ids->end()), last);
    EXPECT_EQ(*tok.decode(*ids), text);
  }
}

TEST(Tokenizer, InvalidUtf8IsAnErrorWithByteOffset) {
  Tokenizer tok = load_fixture_tokenizer();
  const std::vector<std::pair<std::string, size_t>> bad = {
      {std::string("ab\xFF", 3), 2},                 // never valid
      {std::string("a\xC3", 2), 1},                  // truncated 2-byte sequence
      {std::string("x\xC0\x80", 3), 1},              // overlong NUL
      {std::string("\xE0\x80\xAF", 3), 0},           // overlong '/'
      {std::string("ok \xED\xA0\x80", 6), 3},        // UTF-16 surrogate
      {std::string("\xF4\x90\x80\x80", 4), 0},       // above U+10FFFF
      {std::string("\xE2\x82", 2), 0},               // truncated 3-byte sequence
      {std::string("abc\x80", 4), 3},                // lone continuation byte
      {std::string("<s>\xE4\xB8 z", 6), 3},          // after an added token
  };
  for (const auto& [text, offset] : bad) {
    EXPECT_EQ(find_invalid_utf8(text), offset);
    auto ids = tok.encode(text);
    ASSERT_FALSE(ids.ok());
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(ids.status().message()),
                HasSubstr("at byte offset " + std::to_string(offset)));
  }
  EXPECT_EQ(find_invalid_utf8("plain ascii, é, 中, 🙂"), std::nullopt);
}

TEST(Tokenizer, OptionsAndVocabularyQueries) {
  Tokenizer tok = load_fixture_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 3000u);
  EXPECT_EQ(tok.token_to_id("<unk>"), 0u);
  EXPECT_EQ(tok.token_to_id("<s>"), 1u);
  EXPECT_EQ(tok.token_to_id("</s>"), 2u);
  EXPECT_EQ(tok.token_to_id("<pad>"), 3u);
  EXPECT_EQ(tok.token_to_id("no such token"), std::nullopt);

  auto plain = tok.encode("hello world");
  auto with_bos = tok.encode("hello world", EncodeOptions{.add_bos = true});
  ASSERT_TRUE(plain.ok() && with_bos.ok());
  ASSERT_EQ(with_bos->size(), plain->size() + 1);
  EXPECT_EQ((*with_bos)[0], 1u);
  EXPECT_TRUE(std::equal(plain->begin(), plain->end(), with_bos->begin() + 1));

  auto ids = tok.encode("a<s>b</s>");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*tok.decode(*ids, DecodeOptions{.skip_special = true}), "ab");

  const std::vector<uint32_t> out_of_range = {5, 3000};
  auto text = tok.decode(out_of_range);
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(std::string(text.status().message()), HasSubstr("id 3000 at position 1"));
}

Json fixture_json() { return Json::parse(read_file(kFixtures + "tokenizer.json")); }

TEST(Tokenizer, AcceptsMergesWrittenAsStringsAndIgnoresFormatting) {
  Json j = fixture_json();
  ASSERT_TRUE(j["model"]["merges"][0].is_array());  // the pinned `tokenizers` writes pairs
  for (Json& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  auto as_strings = Tokenizer::from_json(j.dump(4), "strings.json");
  ASSERT_TRUE(as_strings.ok()) << as_strings.status();
  Tokenizer reference = load_fixture_tokenizer();
  EXPECT_EQ(as_strings->fingerprint(), reference.fingerprint());
  for (const Case& c : read_cases("cases.jsonl")) EXPECT_EQ(*as_strings->encode(c.text), c.ids);
}

TEST(Tokenizer, FingerprintTracksContent) {
  Json j = fixture_json();
  auto base = Tokenizer::from_json(j.dump(), "a.json");
  ASSERT_TRUE(base.ok());
  std::swap(j["model"]["merges"][10], j["model"]["merges"][11]);
  auto reordered = Tokenizer::from_json(j.dump(), "b.json");
  ASSERT_TRUE(reordered.ok());
  EXPECT_NE(base->fingerprint(), reordered->fingerprint());
}

TEST(Tokenizer, RejectsConfigurationsItDoesNotImplement) {
  struct Edit {
    std::function<void(Json&)> apply;
    std::string field;
  };
  const std::vector<Edit> edits = {
      {[](Json& j) { j["normalizer"] = {{"type", "NFC"}}; }, "normalizer"},
      {[](Json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+"; },
       "pre_tokenizer.pretokenizers[0].pattern"},
      {[](Json& j) { j["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = true; },
       "pre_tokenizer.pretokenizers[1].use_regex"},
      {[](Json& j) { j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true; },
       "pre_tokenizer.pretokenizers[1].add_prefix_space"},
      {[](Json& j) { j["model"]["dropout"] = 0.1; }, "model.dropout"},
      {[](Json& j) { j["model"]["merges"][3] = "nope"; }, "model.merges[3]"},
      {[](Json& j) { j["model"]["merges"][4] = Json::array({"zz9", "qq"}); }, "model.merges[4]"},
      {[](Json& j) { j["model"]["vocab"].erase("\xC4\x8A"); }, "model.vocab"},  // byte 0x0A
      {[](Json& j) { j["added_tokens"][1]["lstrip"] = true; }, "added_tokens[1].lstrip"},
      // Found by tokenizer_json_fuzz: "<pad>" given </s>'s id decoded as "</s>".
      {[](Json& j) { j["added_tokens"][3]["id"] = 2; }, "added_tokens[3]"},
      // An added token on an id the vocabulary gives to other text.
      {[](Json& j) {
         j["added_tokens"].push_back(
             {{"id", 10}, {"content", "<extra>"}, {"special", true}, {"normalized", false}});
       }, "added_tokens[4]"},
      {[](Json& j) { j["decoder"] = {{"type", "Metaspace"}}; }, "decoder"},
      {[](Json& j) {
         j["post_processor"] = {{"type", "TemplateProcessing"}};
       }, "post_processor"},
  };
  for (const Edit& e : edits) {
    Json j = fixture_json();
    e.apply(j);
    auto tok = Tokenizer::from_json(j.dump(), "edited.json");
    ASSERT_FALSE(tok.ok()) << e.field;
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr("edited.json: " + e.field));
  }
  // Found by tokenizer_json_fuzz: a field of the wrong JSON type used to escape as an exception.
  Json wrong_type = fixture_json();
  wrong_type["pre_tokenizer"]["type"] = true;
  auto typed = Tokenizer::from_json(wrong_type.dump(), "typed.json");
  ASSERT_FALSE(typed.ok());
  EXPECT_THAT(std::string(typed.status().message()),
              HasSubstr("typed.json: a field has the wrong JSON type"));
  auto not_json = Tokenizer::from_json("{\"model\": ", "broken.json");
  ASSERT_FALSE(not_json.ok());
  EXPECT_THAT(std::string(not_json.status().message()), HasSubstr("broken.json: not valid JSON"));
  EXPECT_EQ(Tokenizer::load(kFixtures + "missing.json").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(Tokenizer, ByteLevelTokenizerMatchesTokenizers) {
  const std::string path = temp_path("byte_level_tokenizer.json");
  ASSERT_TRUE(write_byte_level_tokenizer_json(path).ok());
  auto tok = Tokenizer::load(path);
  std::filesystem::remove(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->vocab_size(), 260u);
  const std::vector<Case> cases = read_cases("byte_level_cases.jsonl");
  ASSERT_GE(cases.size(), 100u);
  for (const Case& c : cases) {
    EXPECT_EQ(*tok->encode(c.text), c.ids) << Json(c.text).dump();
    EXPECT_EQ(*tok->decode(c.ids), c.text);
  }
  // Every byte value decodes to itself, including those no valid UTF-8 text contains.
  for (uint32_t b = 0; b < 256; ++b) {
    const std::vector<uint32_t> one = {4 + b};
    EXPECT_EQ(*tok->decode(one), std::string(1, static_cast<char>(b)));
  }
}

}  // namespace
}  // namespace engine
