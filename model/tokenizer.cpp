// Byte-level BPE tokenizer (see tokenizer.h for the contract). The pre-tokenizer is written by
// hand instead of using a regex engine: BLOOM's pattern ` ?[^(\s|[.,!?…。，、।۔،])]+` reduces to
// one character class, and a hand-written scanner over UTF-8 is both exact and several times
// faster than Oniguruma.
#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/io.h"
#include "nlohmann/json.hpp"

namespace engine {
namespace {

using Json = nlohmann::json;

constexpr uint32_t kNoId = UINT32_MAX;
// The pattern string BLOOM's tokenizer.json carries; any other Split pattern is rejected because
// the scanner below implements only this one.
constexpr std::string_view kBloomSplitPattern =
    " ?[^(\\s|[.,!?\xE2\x80\xA6\xE3\x80\x82\xEF\xBC\x8C\xE3\x80\x81\xE0\xA5\xA4\xDB\x94\xD8\x8C])]+";
constexpr std::array<std::string_view, 4> kByteLevelSpecials = {"<unk>", "<s>", "</s>", "<pad>"};

// --- byte-level alphabet -----------------------------------------------------------------------
// Each byte is shown in vocabulary strings as one printable character: bytes '!'..'~',
// 0xA1..0xAC and 0xAE..0xFF as the code point of the same value, every other byte as 256 + n
// where n counts those other bytes in increasing order (so 0x00 -> U+0100, ' ' -> U+0120 'Ġ').
constexpr bool byte_is_shown_as_itself(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct ByteAlphabet {
  std::array<uint32_t, 256> byte_to_cp{};
  // Inverse over code points 0..kSpan-1 (all the scheme uses); -1 where a code point is unused.
  static constexpr uint32_t kSpan = 512;
  std::array<int16_t, kSpan> cp_to_byte{};
  constexpr ByteAlphabet() {
    for (auto& v : cp_to_byte) v = -1;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) {
      byte_to_cp[b] = byte_is_shown_as_itself(b) ? static_cast<uint32_t>(b) : 256 + n++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
constexpr ByteAlphabet kAlphabet;

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes one code point of VALID UTF-8 at p; returns it and sets `len`.
inline uint32_t decode_utf8(const unsigned char* p, int& len) {
  const unsigned char c = p[0];
  if (c < 0x80) {
    len = 1;
    return c;
  }
  if (c < 0xE0) {
    len = 2;
    return ((c & 0x1Fu) << 6) | (p[1] & 0x3Fu);
  }
  if (c < 0xF0) {
    len = 3;
    return ((c & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
  }
  len = 4;
  return ((c & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
}

// Byte-level string (as written in tokenizer.json) -> raw bytes; nullopt if some character is not
// in the byte-level alphabet (e.g. an added token's content), or the string is not UTF-8.
std::optional<std::string> byte_level_to_bytes(std::string_view s) {
  if (find_invalid_utf8(s)) return std::nullopt;
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    int len = 0;
    const uint32_t cp = decode_utf8(p, len);
    p += len;
    if (cp >= ByteAlphabet::kSpan || kAlphabet.cp_to_byte[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(kAlphabet.cp_to_byte[cp]));
  }
  return out;
}

std::string bytes_to_byte_level(std::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) append_utf8(kAlphabet.byte_to_cp[b], out);
  return out;
}

// --- the split character class -----------------------------------------------------------------
// Oniguruma's \s for UTF-8 text (the White_Space code points), plus the punctuation BLOOM's class
// excludes. `tokenizers` was checked to split on exactly this set (the fixture script re-checks).
constexpr std::array<bool, 128> make_ascii_split_table() {
  std::array<bool, 128> t{};
  for (char c : std::string_view("\t\n\v\f\r ()|.,!?")) t[static_cast<unsigned char>(c)] = true;
  return t;
}
constexpr std::array<bool, 128> kAsciiSplit = make_ascii_split_table();

inline bool is_split_char(uint32_t cp) {
  if (cp < 128) return kAsciiSplit[cp];
  switch (cp) {
    case 0x0085: case 0x00A0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:                                                     // whitespace
    case 0x2026: case 0x3002: case 0xFF0C: case 0x3001: case 0x0964: case 0x06D4: case 0x060C:
      return true;                                                   // … 。 ， 、 । ۔ ،
    default:
      return cp >= 0x2000 && cp <= 0x200A;                           // en quad .. hair space
  }
}

// --- hashing -----------------------------------------------------------------------------------
constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001b3ull;

void fnv1a(uint64_t& h, std::string_view bytes) {
  for (unsigned char b : bytes) {
    h ^= b;
    h *= kFnvPrime;
  }
}
void fnv1a_u32(uint64_t& h, uint32_t v) {
  const char b[4] = {static_cast<char>(v), static_cast<char>(v >> 8), static_cast<char>(v >> 16),
                     static_cast<char>(v >> 24)};
  fnv1a(h, std::string_view(b, 4));
}

// A quick multiplicative hash for short byte strings (pieces); quality only affects speed.
inline uint64_t hash_bytes(std::string_view s) {
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  uint64_t h = s.size() * kMul;
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, s.data() + i, s.size() - i);
  h = (h ^ tail) * kMul;
  h ^= h >> 32;
  return h | 1;  // 0 marks an empty slot
}

}  // namespace

// --- immutable tokenizer data ------------------------------------------------------------------
struct Merge {
  uint32_t rank = kNoId;
  uint32_t new_id = kNoId;
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
  static constexpr uint64_t kEmpty = UINT64_MAX;  // (kNoId, kNoId) is never a real pair
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

// Memo of piece bytes -> ids for one Tokenizer object, plus scratch buffers for BPE.
class PieceCache {
 public:
  // Pieces longer than this are not memoised: they are rare and their results are large.
  static constexpr size_t kMaxKeyBytes = 256;
  // When the memo holds this many pieces it is cleared rather than grown further.
  static constexpr size_t kMaxEntries = size_t{1} << 20;

  bool lookup(std::string_view key, uint64_t h, std::vector<uint32_t>& out) const {
    if (slots_.empty()) return false;
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return false;
      if (s.hash == h && s.key_len == key.size() &&
          std::memcmp(keys_.data() + s.key_off, key.data(), key.size()) == 0) {
        out.insert(out.end(), ids_.begin() + s.ids_off, ids_.begin() + s.ids_off + s.ids_len);
        return true;
      }
    }
  }
  void store(std::string_view key, uint64_t h, std::span<const uint32_t> ids) {
    if (count_ + 1 > slots_.size() / 2) {
      if (count_ >= kMaxEntries) {
        clear();
      } else {
        grow();
      }
    }
    Slot s{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(key.size()),
           static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(ids.size())};
    keys_.append(key);
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    place(s);
    ++count_;
  }

  // Scratch for BPE over one piece.
  struct Symbol {
    uint32_t id;
    int32_t prev, next;
    uint32_t len;  // 0 once merged into its left neighbour
  };
  struct Candidate {
    uint32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::vector<uint32_t> piece_ids;

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0, ids_off = 0, ids_len = 0;
  };
  void place(const Slot& s) {
    for (size_t i = s.hash & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].hash == 0) {
        slots_[i] = s;
        return;
      }
    }
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    const size_t cap = old.empty() ? 4096 : old.size() * 2;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (const Slot& s : old) {
      if (s.hash != 0) place(s);
    }
  }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    ids_.clear();
    count_ = 0;
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t count_ = 0;
  std::string keys_;
  std::vector<uint32_t> ids_;
};

// --- loading -----------------------------------------------------------------------------------
namespace {

absl::Status config_error(const std::string& source, const std::string& field,
                          const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, ": ", what));
}

bool is_null_or_empty_string(const Json& j) {
  return j.is_null() || (j.is_string() && j.get<std::string>().empty());
}

absl::Status check_pipeline(const Json& root, const std::string& source) {
  if (root.contains("normalizer") && !root["normalizer"].is_null()) {
    return config_error(source, "normalizer", "must be null (BLOOM has no normalizer)");
  }
  const Json& pre = root.value("pre_tokenizer", Json());
  if (!pre.is_object() || pre.value("type", "") != "Sequence" || !pre.contains("pretokenizers") ||
      !pre["pretokenizers"].is_array() || pre["pretokenizers"].size() != 2) {
    return config_error(source, "pre_tokenizer",
                        "expected Sequence[Split, ByteLevel] as in BLOOM's tokenizer.json");
  }
  const Json& split = pre["pretokenizers"][0];
  const Json& bl = pre["pretokenizers"][1];
  if (split.value("type", "") != "Split") {
    return config_error(source, "pre_tokenizer.pretokenizers[0].type", "expected Split");
  }
  const Json pattern = split.value("pattern", Json());
  if (!pattern.is_object() || !pattern.contains("Regex") || !pattern["Regex"].is_string() ||
      pattern["Regex"].get<std::string>() != kBloomSplitPattern) {
    return config_error(source, "pre_tokenizer.pretokenizers[0].pattern",
                        "only BLOOM's regex \" ?[^(\\\\s|[.,!?…。，、।۔،])]+\" is supported");
  }
  if (split.value("behavior", "") != "Isolated" || split.value("invert", false)) {
    return config_error(source, "pre_tokenizer.pretokenizers[0]",
                        "expected behavior Isolated, invert false");
  }
  if (bl.value("type", "") != "ByteLevel") {
    return config_error(source, "pre_tokenizer.pretokenizers[1].type", "expected ByteLevel");
  }
  if (bl.value("add_prefix_space", false)) {
    return config_error(source, "pre_tokenizer.pretokenizers[1].add_prefix_space",
                        "true is not supported (BLOOM uses false)");
  }
  if (bl.value("use_regex", true)) {
    return config_error(source, "pre_tokenizer.pretokenizers[1].use_regex",
                        "true (GPT-2's regex) is not supported; BLOOM splits with its own Split");
  }
  const Json& dec = root.value("decoder", Json());
  if (!dec.is_object() || dec.value("type", "") != "ByteLevel") {
    return config_error(source, "decoder", "expected ByteLevel");
  }
  const Json& post = root.value("post_processor", Json());
  if (!post.is_null() && post.value("type", "") != "ByteLevel") {
    return config_error(source, "post_processor",
                        "only null or ByteLevel is supported (BLOOM adds no tokens)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::load(const std::string& path) {
  absl::StatusOr<std::string> text = read_file(path, "tokenizer file");
  if (!text.ok()) return text.status();
  return from_json(*text, path);
}

absl::StatusOr<Tokenizer> Tokenizer::from_json(std::string_view text, const std::string& source) {
  Json root;
  try {
    root = Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return config_error(source, "(root)", "expected a JSON object");
  // Fields are type-checked where they are read, but nlohmann's own typed reads (value(key,
  // default) on a key holding another type) throw: those become the same kind of one-line error.
  auto build = [&]() -> absl::StatusOr<Tokenizer> {
    if (auto s = check_pipeline(root, source); !s.ok()) return s;

    const Json& model = root.value("model", Json());
    if (!model.is_object() || model.value("type", "BPE") != "BPE") {
      return config_error(source, "model.type", "expected BPE");
    }
    if (model.contains("dropout") && !model["dropout"].is_null()) {
      return config_error(source, "model.dropout", "must be null (dropout makes encoding random)");
    }
    for (const char* f : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(f) && !is_null_or_empty_string(model[f])) {
        return config_error(source, absl::StrCat("model.", f), "must be null for byte-level BPE");
      }
    }
    if (model.value("byte_fallback", false)) {
      return config_error(source, "model.byte_fallback", "must be false for byte-level BPE");
    }

    auto data = std::make_shared<TokenizerData>();
    data->source = source;
    data->ignore_merges = model.value("ignore_merges", false);

    const Json& vocab = model.value("vocab", Json());
    if (!vocab.is_object() || vocab.empty()) {
      return config_error(source, "model.vocab", "expected a non-empty object token -> id");
    }
    // Ids above this are rejected: they would make the id tables absurdly large.
    constexpr uint64_t kMaxId = uint64_t{1} << 24;
    std::vector<const std::string*> id_token;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!it.value().is_number_unsigned() || it.value().get<uint64_t>() >= kMaxId) {
        return config_error(source, absl::StrCat("model.vocab[\"", it.key(), "\"]"),
                            "id must be an integer in [0, 2^24)");
      }
      const uint32_t id = it.value().get<uint32_t>();
      if (id >= id_token.size()) id_token.resize(id + 1, nullptr);
      if (id_token[id] != nullptr) {
        return config_error(source, absl::StrCat("model.vocab[\"", it.key(), "\"]"),
                            absl::StrCat("id ", id, " is also used by \"", *id_token[id], "\""));
      }
      id_token[id] = &it.key();
    }

    const Json& added = root.value("added_tokens", Json::array());
    if (!added.is_array()) return config_error(source, "added_tokens", "expected an array");
    for (size_t i = 0; i < added.size(); ++i) {
      const Json& a = added[i];
      const std::string field = absl::StrCat("added_tokens[", i, "]");
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_unsigned() ||
          a["id"].get<uint64_t>() >= kMaxId || !a.contains("content") || !a["content"].is_string() ||
          a["content"].get<std::string>().empty()) {
        return config_error(source, field, "expected {\"id\": integer, \"content\": non-empty string}");
      }
      for (const char* flag : {"lstrip", "rstrip", "single_word"}) {
        if (a.value(flag, false)) {
          return config_error(source, absl::StrCat(field, ".", flag), "true is not supported");
        }
      }
      AddedToken t{a["content"].get<std::string>(), a["id"].get<uint32_t>(), a.value("special", false)};
      if (find_invalid_utf8(t.content)) return config_error(source, field, "content is not UTF-8");
      // One id, one text: decoding an id shared by two added tokens, or by an added token and a
      // different vocabulary entry, could not give back what was encoded.
      for (size_t j = 0; j < data->added.size(); ++j) {
        if (data->added[j].id == t.id) {
          return config_error(source, field,
                              absl::StrCat("id ", t.id, " is also used by added_tokens[", j, "] (\"",
                                           data->added[j].content, "\")"));
        }
      }
      // The vocabulary may hold the token literally ("<s>") or in byte-level form (U+0120 U+0120
      // for two spaces); either spelling of the same text is consistent.
      if (t.id < id_token.size() && id_token[t.id] != nullptr && *id_token[t.id] != t.content &&
          byte_level_to_bytes(*id_token[t.id]) != std::optional<std::string>(t.content)) {
        return config_error(source, field,
                            absl::StrCat("id ", t.id, " is model.vocab's \"", *id_token[t.id],
                                         "\", not \"", t.content, "\""));
      }
      data->added.push_back(std::move(t));
    }

    uint32_t vocab_size = static_cast<uint32_t>(id_token.size());
    for (const AddedToken& t : data->added) vocab_size = std::max(vocab_size, t.id + 1);
    data->vocab_size = vocab_size;
    data->id_bytes.assign(vocab_size, std::string());
    data->id_known.assign(vocab_size, 0);
    data->id_special.assign(vocab_size, 0);
    data->byte_id.fill(kNoId);
    for (uint32_t id = 0; id < id_token.size(); ++id) {
      if (id_token[id] == nullptr) continue;
      const std::string& tok = *id_token[id];
      data->token_id.emplace(tok, id);
      data->id_known[id] = 1;
      if (std::optional<std::string> bytes = byte_level_to_bytes(tok)) {
        data->id_bytes[id] = *bytes;
        if (bytes->size() == 1) {
          uint32_t& slot = data->byte_id[static_cast<unsigned char>((*bytes)[0])];
          if (slot == kNoId) slot = id;
        }
        if (data->ignore_merges) data->whole_piece_id.emplace(*bytes, id);
      } else {
        // Not made of byte-level characters (possible for an added token's own entry): it
        // decodes to its literal UTF-8, as an added token does.
        data->id_bytes[id] = tok;
      }
    }
    for (const AddedToken& t : data->added) {
      data->token_id[t.content] = t.id;
      data->id_known[t.id] = 1;
      data->id_special[t.id] = t.special ? 1 : 0;
      data->id_bytes[t.id] = t.content;
    }
    for (int b = 0; b < 256; ++b) {
      if (data->byte_id[b] == kNoId) {
        return config_error(source, "model.vocab",
                            absl::StrFormat("no token for byte 0x%02X (byte-level BPE needs all 256)", b));
      }
    }

    const Json& merges = model.value("merges", Json::array());
    if (!merges.is_array()) return config_error(source, "model.merges", "expected an array");
    data->merges.reserve(merges.size());
    uint64_t fp = kFnvOffset;
    fnv1a(fp, "vocab");
    for (uint32_t id = 0; id < id_token.size(); ++id) {
      fnv1a_u32(fp, id);
      if (id_token[id] != nullptr) fnv1a(fp, *id_token[id]);
      fnv1a(fp, std::string_view("\0", 1));
    }
    fnv1a(fp, "merges");
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const Json& m = merges[rank];
      std::string left, right;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          return config_error(source, absl::StrCat("model.merges[", rank, "]"),
                              absl::StrCat("\"", s, "\" is not two tokens separated by one space"));
        }
        left = s.substr(0, sp);
        right = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        return config_error(source, absl::StrCat("model.merges[", rank, "]"),
                            "expected \"a b\" or [\"a\", \"b\"]");
      }
      auto l = data->token_id.find(left), r = data->token_id.find(right),
           n = data->token_id.find(left + right);
      if (l == data->token_id.end() || r == data->token_id.end() || n == data->token_id.end()) {
        return config_error(source, absl::StrCat("model.merges[", rank, "]"),
                            absl::StrCat("\"", left, "\", \"", right, "\" or their merge \"", left,
                                         right, "\" is not in the vocabulary"));
      }
      data->merges.insert(l->second, r->second,
                          Merge{static_cast<uint32_t>(rank), n->second});
      fnv1a_u32(fp, l->second);
      fnv1a_u32(fp, r->second);
    }
    fnv1a(fp, "added");
    for (const AddedToken& t : data->added) {
      fnv1a_u32(fp, t.id);
      fnv1a(fp, t.content);
      fnv1a(fp, t.special ? std::string_view("\1", 1) : std::string_view("\0", 1));
    }
    data->fingerprint = fp;

    // Leftmost-longest matching tries longer contents first at each position.
    std::stable_sort(data->added.begin(), data->added.end(),
                     [](const AddedToken& a, const AddedToken& b) {
                       return a.content.size() > b.content.size();
                     });
    for (const AddedToken& t : data->added) {
      data->added_first_byte[static_cast<unsigned char>(t.content[0])] = true;
    }
    return Tokenizer(std::move(data));
  };
  try {
    return build();
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": a field has the wrong JSON type: ", e.what()));
  }
}

// --- Tokenizer ---------------------------------------------------------------------------------
Tokenizer::Tokenizer(std::shared_ptr<const TokenizerData> data)
    : data_(std::move(data)), cache_(std::make_unique<PieceCache>()) {}
Tokenizer::Tokenizer(const Tokenizer& other)
    : data_(other.data_), cache_(std::make_unique<PieceCache>()) {}
Tokenizer& Tokenizer::operator=(const Tokenizer& other) {
  data_ = other.data_;
  cache_ = std::make_unique<PieceCache>();
  return *this;
}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

uint32_t Tokenizer::vocab_size() const { return data_->vocab_size; }
uint64_t Tokenizer::fingerprint() const { return data_->fingerprint; }
std::optional<uint32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = data_->token_id.find(std::string(token));
  if (it == data_->token_id.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::vector<uint32_t>> Tokenizer::encode(std::string_view text,
                                                        const EncodeOptions& options) {
  std::vector<uint32_t> out;
  out.reserve(text.size() / 3 + 1);
  if (auto s = encode_append(text, out, options); !s.ok()) return s;
  return out;
}

absl::Status Tokenizer::encode_append(std::string_view text, std::vector<uint32_t>& out,
                                      const EncodeOptions& options) {
  if (std::optional<size_t> bad = find_invalid_utf8(text)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("text is not valid UTF-8: bad byte 0x%02X at byte offset %u",
                        static_cast<unsigned char>(text[*bad]), *bad));
  }
  if (options.add_bos) {
    auto it = data_->token_id.find("<s>");
    if (it == data_->token_id.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat(data_->source, ": add_bos requested but there is no \"<s>\" token"));
    }
    out.push_back(it->second);
  }
  const TokenizerData& d = *data_;
  size_t seg_start = 0;
  if (!d.added.empty()) {
    for (size_t i = 0; i < text.size(); ++i) {
      if (!d.added_first_byte[static_cast<unsigned char>(text[i])]) continue;
      for (const AddedToken& t : d.added) {
        if (text.compare(i, t.content.size(), t.content) == 0) {
          if (auto s = encode_segment(text.substr(seg_start, i - seg_start), out); !s.ok()) return s;
          out.push_back(t.id);
          i += t.content.size() - 1;
          seg_start = i + 1;
          break;
        }
      }
    }
  }
  return encode_segment(text.substr(seg_start), out);
}

absl::Status Tokenizer::encode_segment(std::string_view seg, std::vector<uint32_t>& out) {
  // Splits `seg` (valid UTF-8) into the pieces of BLOOM's Split(Isolated): maximal matches of
  // ` ?X+` found left to right, and the runs between them.
  const auto* base = reinterpret_cast<const unsigned char*>(seg.data());
  const size_t n = seg.size();
  size_t pos = 0;
  while (pos < n) {
    size_t j = pos;
    size_t match = n;
    while (j < n) {
      int len;
      const uint32_t cp = decode_utf8(base + j, len);
      if (!is_split_char(cp)) {
        match = j;
        break;
      }
      if (cp == ' ' && j + 1 < n) {
        int len2;
        if (!is_split_char(decode_utf8(base + j + 1, len2))) {
          match = j;
          break;
        }
      }
      j += len;
    }
    if (match > pos) encode_piece(seg.substr(pos, match - pos), out);
    if (match == n) break;
    size_t k = match + (base[match] == ' ' ? 1 : 0);
    while (k < n) {
      int len;
      if (is_split_char(decode_utf8(base + k, len))) break;
      k += len;
    }
    encode_piece(seg.substr(match, k - match), out);
    pos = k;
  }
  return absl::OkStatus();
}

void Tokenizer::encode_piece(std::string_view piece, std::vector<uint32_t>& out) {
  const TokenizerData& d = *data_;
  if (piece.size() == 1) {
    out.push_back(d.byte_id[static_cast<unsigned char>(piece[0])]);
    return;
  }
  PieceCache& cache = *cache_;
  const bool cacheable = piece.size() <= PieceCache::kMaxKeyBytes;
  uint64_t h = 0;
  if (cacheable) {
    h = hash_bytes(piece);
    if (cache.lookup(piece, h, out)) return;
  }
  std::vector<uint32_t>& ids = cache.piece_ids;
  ids.clear();
  if (d.ignore_merges) {
    auto it = d.whole_piece_id.find(std::string(piece));
    if (it != d.whole_piece_id.end()) ids.push_back(it->second);
  }
  if (ids.empty()) {
    // BPE exactly as `tokenizers` runs it: a min-heap of candidate merges ordered by (rank,
    // position); a popped candidate is applied only if its pair still exists and still merges to
    // the same id, so stale candidates left behind by earlier merges are skipped.
    auto& sym = cache.symbols;
    auto& heap = cache.heap;
    const uint32_t n = static_cast<uint32_t>(piece.size());
    sym.resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      sym[i] = {d.byte_id[static_cast<unsigned char>(piece[i])], static_cast<int32_t>(i) - 1,
                i + 1 < n ? static_cast<int32_t>(i + 1) : -1, 1};
    }
    heap.clear();
    const auto push_pair = [&](uint32_t pos) {
      const int32_t next = sym[pos].next;
      if (next < 0) return;
      if (const Merge* m = d.merges.find(sym[pos].id, sym[next].id)) {
        heap.push_back({m->rank, pos, m->new_id});
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
      }
    };
    for (uint32_t i = 0; i + 1 < n; ++i) push_pair(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>());
      const PieceCache::Candidate top = heap.back();
      heap.pop_back();
      PieceCache::Symbol& left = sym[top.pos];
      if (left.len == 0 || left.next < 0) continue;
      PieceCache::Symbol& right = sym[left.next];
      const Merge* m = d.merges.find(left.id, right.id);
      if (m == nullptr || m->new_id != top.new_id) continue;
      left.id = top.new_id;
      left.len += right.len;
      right.len = 0;
      left.next = right.next;
      if (left.next >= 0) sym[left.next].prev = static_cast<int32_t>(top.pos);
      if (left.prev >= 0) push_pair(static_cast<uint32_t>(left.prev));
      push_pair(top.pos);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) ids.push_back(sym[i].id);
  }
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) cache.store(piece, h, ids);
}

absl::StatusOr<std::string> Tokenizer::decode(std::span<const uint32_t> ids,
                                              const DecodeOptions& options) const {
  const TokenizerData& d = *data_;
  std::string out;
  out.reserve(ids.size() * 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint32_t id = ids[i];
    if (id >= d.vocab_size || !d.id_known[id]) {
      return absl::OutOfRangeError(absl::StrCat("decode: id ", id, " at position ", i,
                                                " is not in the vocabulary of ", d.source,
                                                " (size ", d.vocab_size, ")"));
    }
    if (options.skip_special && d.id_special[id]) continue;
    out += d.id_bytes[id];
  }
  return out;
}

// --- byte-level tokenizer.json -----------------------------------------------------------------
std::string byte_level_tokenizer_json() {
  using Ordered = nlohmann::ordered_json;
  Ordered added = Ordered::array();
  Ordered vocab = Ordered::object();
  for (size_t i = 0; i < kByteLevelSpecials.size(); ++i) {
    added.push_back(Ordered{{"id", i},
                            {"content", kByteLevelSpecials[i]},
                            {"single_word", false},
                            {"lstrip", false},
                            {"rstrip", false},
                            {"normalized", false},
                            {"special", true}});
    vocab[std::string(kByteLevelSpecials[i])] = i;
  }
  for (int b = 0; b < 256; ++b) {
    const char byte = static_cast<char>(b);
    vocab[bytes_to_byte_level(std::string_view(&byte, 1))] = kByteLevelSpecials.size() + b;
  }
  Ordered byte_level = {{"type", "ByteLevel"},
                        {"add_prefix_space", false},
                        {"trim_offsets", true},
                        {"use_regex", false}};
  Ordered root = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         Ordered::array({Ordered{{"type", "Split"},
                                 {"pattern", {{"Regex", std::string(kBloomSplitPattern)}}},
                                 {"behavior", "Isolated"},
                                 {"invert", false}},
                         byte_level})}}},
      {"post_processor", nullptr},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", Ordered::array()}}}};
  return root.dump(2) + "\n";
}

absl::Status write_byte_level_tokenizer_json(const std::string& path) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
  f << byte_level_tokenizer_json();
  f.close();
  if (!f) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace engine
