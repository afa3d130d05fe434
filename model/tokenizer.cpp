// Byte-level BPE tokenizer (see tokenizer.h for the contract). The pre-tokenizer is written by
// hand instead of using a regex engine: BLOOM's pattern ` ?[^(\s|[.,!?…。，、।۔،])]+` reduces to
// one character class, and a hand-written scanner over UTF-8 is both exact and several times
// faster than Oniguruma. Loading tokenizer.json is in model/tokenizer_json.cpp.
#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <queue>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/tokenizer_internal.h"

namespace engine {
namespace {

using tokenizer_internal::kNoId;

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

}  // namespace

namespace tokenizer_internal {

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


}  // namespace tokenizer_internal

namespace {

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

}  // namespace engine
