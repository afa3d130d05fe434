// Loading tokenizer.json (the pipeline BLOOM uses, checked strictly; the vocabulary, merges and
// added tokens) and writing the byte-level tokenizer.json; contract in model/tokenizer.h.
#include <algorithm>
#include <array>
#include <fstream>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/io.h"
#include "model/tokenizer.h"
#include "model/tokenizer_internal.h"
#include "nlohmann/json.hpp"

namespace engine {
namespace {

using Json = nlohmann::json;
using tokenizer_internal::byte_level_to_bytes;
using tokenizer_internal::bytes_to_byte_level;
using tokenizer_internal::kBloomSplitPattern;
using tokenizer_internal::kNoId;

constexpr std::array<std::string_view, 4> kByteLevelSpecials = {"<unk>", "<s>", "</s>", "<pad>"};

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

}  // namespace

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

namespace {

// Ids above this are rejected: they would make the id tables absurdly large.
constexpr uint64_t kMaxId = uint64_t{1} << 24;

// model: byte-level BPE without dropout, prefixes, suffixes or byte fallback.
absl::Status check_model(const Json& model, const std::string& source) {
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
  return absl::OkStatus();
}

// model.vocab as id -> token (null where no token has the id); each id at most once. The
// pointers are to `vocab`'s keys: the caller keeps `vocab` alive while they are used.
absl::StatusOr<std::vector<const std::string*>> read_vocab(const Json& vocab,
                                                           const std::string& source) {
  if (!vocab.is_object() || vocab.empty()) {
    return config_error(source, "model.vocab", "expected a non-empty object token -> id");
  }
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
  return id_token;
}

// added_tokens into data->added, each consistent with the vocabulary and with each other.
absl::Status read_added_tokens(const Json& root, const std::vector<const std::string*>& id_token,
                               const std::string& source, TokenizerData& data) {
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
    for (size_t j = 0; j < data.added.size(); ++j) {
      if (data.added[j].id == t.id) {
        return config_error(source, field,
                            absl::StrCat("id ", t.id, " is also used by added_tokens[", j, "] (\"",
                                         data.added[j].content, "\")"));
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
    data.added.push_back(std::move(t));
  }
  return absl::OkStatus();
}

// The id tables (bytes, known, special, token -> id, the 256 byte ids) from the vocabulary and
// the added tokens; every byte must have a token.
absl::Status build_id_tables(const std::vector<const std::string*>& id_token,
                             const std::string& source, TokenizerData& data) {
  uint32_t vocab_size = static_cast<uint32_t>(id_token.size());
  for (const AddedToken& t : data.added) vocab_size = std::max(vocab_size, t.id + 1);
  data.vocab_size = vocab_size;
  data.id_bytes.assign(vocab_size, std::string());
  data.id_known.assign(vocab_size, 0);
  data.id_special.assign(vocab_size, 0);
  data.byte_id.fill(kNoId);
  for (uint32_t id = 0; id < id_token.size(); ++id) {
    if (id_token[id] == nullptr) continue;
    const std::string& tok = *id_token[id];
    data.token_id.emplace(tok, id);
    data.id_known[id] = 1;
    if (std::optional<std::string> bytes = byte_level_to_bytes(tok)) {
      data.id_bytes[id] = *bytes;
      if (bytes->size() == 1) {
        uint32_t& slot = data.byte_id[static_cast<unsigned char>((*bytes)[0])];
        if (slot == kNoId) slot = id;
      }
      if (data.ignore_merges) data.whole_piece_id.emplace(*bytes, id);
    } else {
      // Not made of byte-level characters (possible for an added token's own entry): it
      // decodes to its literal UTF-8, as an added token does.
      data.id_bytes[id] = tok;
    }
  }
  for (const AddedToken& t : data.added) {
    data.token_id[t.content] = t.id;
    data.id_known[t.id] = 1;
    data.id_special[t.id] = t.special ? 1 : 0;
    data.id_bytes[t.id] = t.content;
  }
  for (int b = 0; b < 256; ++b) {
    if (data.byte_id[b] == kNoId) {
      return config_error(source, "model.vocab",
                          absl::StrFormat("no token for byte 0x%02X (byte-level BPE needs all 256)", b));
    }
  }
  return absl::OkStatus();
}

// model.merges into the merge table, and the fingerprint over vocabulary, merges and added
// tokens (in that order).
absl::Status read_merges(const Json& model, const std::vector<const std::string*>& id_token,
                         const std::string& source, TokenizerData& data) {
  const Json& merges = model.value("merges", Json::array());
  if (!merges.is_array()) return config_error(source, "model.merges", "expected an array");
  data.merges.reserve(merges.size());
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
    auto l = data.token_id.find(left), r = data.token_id.find(right),
         n = data.token_id.find(left + right);
    if (l == data.token_id.end() || r == data.token_id.end() || n == data.token_id.end()) {
      return config_error(source, absl::StrCat("model.merges[", rank, "]"),
                          absl::StrCat("\"", left, "\", \"", right, "\" or their merge \"", left,
                                       right, "\" is not in the vocabulary"));
    }
    data.merges.insert(l->second, r->second, Merge{static_cast<uint32_t>(rank), n->second});
    fnv1a_u32(fp, l->second);
    fnv1a_u32(fp, r->second);
  }
  fnv1a(fp, "added");
  for (const AddedToken& t : data.added) {
    fnv1a_u32(fp, t.id);
    fnv1a(fp, t.content);
    fnv1a(fp, t.special ? std::string_view("\1", 1) : std::string_view("\0", 1));
  }
  data.fingerprint = fp;
  return absl::OkStatus();
}

}  // namespace

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
    if (auto s = check_model(model, source); !s.ok()) return s;
    auto data = std::make_shared<TokenizerData>();
    data->source = source;
    data->ignore_merges = model.value("ignore_merges", false);
    const Json vocab = model.value("vocab", Json());  // owns the keys id_token points to
    absl::StatusOr<std::vector<const std::string*>> id_token = read_vocab(vocab, source);
    if (!id_token.ok()) return id_token.status();
    if (auto s = read_added_tokens(root, *id_token, source, *data); !s.ok()) return s;
    if (auto s = build_id_tables(*id_token, source, *data); !s.ok()) return s;
    if (auto s = read_merges(model, *id_token, source, *data); !s.ok()) return s;
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
