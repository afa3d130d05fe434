// Token file reader and writer (format in token_file.h and docs/DATA.md). The reader pulls bytes
// through one ByteSource, plain or zstd-streaming, so both paths share every validation.
#include "model/token_file.h"

#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace engine {

static_assert(std::endian::native == std::endian::little,
              "token files are little-endian and read by memcpy");

namespace {

// Header field offsets (bytes).
constexpr size_t kOffMagic = 0, kOffVersion = 8, kOffHeaderBytes = 12, kOffTokenWidth = 16,
                 kOffTokenCount = 24, kOffDocumentCount = 32, kOffFingerprint = 40,
                 kOffVocabSize = 48;
// Ids are read in blocks of this many so a corrupt count cannot make us allocate unboundedly
// before the data proves to exist.
constexpr size_t kReadBlockIds = size_t{1} << 20;

template <typename T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
void store(unsigned char* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

std::string errno_text() { return std::strerror(errno); }

// Sequential reader over a plain or zstd-compressed file.
class ByteSource {
 public:
  ~ByteSource() {
    if (file_) std::fclose(file_);
    if (dctx_) ZSTD_freeDStream(dctx_);
  }
  absl::Status open(const std::string& path) {
    path_ = path;
    file_ = std::fopen(path.c_str(), "rb");
    if (!file_) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", errno_text()));
    if (is_zstd_path(path)) {
      dctx_ = ZSTD_createDStream();
      if (!dctx_) return absl::ResourceExhaustedError(absl::StrCat(path, ": zstd init failed"));
      ZSTD_initDStream(dctx_);
      in_buf_.resize(ZSTD_DStreamInSize());
    }
    return absl::OkStatus();
  }
  // Reads up to n bytes; returns how many were read (fewer only at the end of the data).
  absl::StatusOr<size_t> read(void* dst, size_t n) {
    if (!dctx_) {
      const size_t got = std::fread(dst, 1, n, file_);
      if (got < n && std::ferror(file_)) {
        return absl::DataLossError(absl::StrCat(path_, ": read error: ", errno_text()));
      }
      return got;
    }
    ZSTD_outBuffer out{dst, n, 0};
    while (out.pos < out.size) {
      if (in_.pos == in_.size) {
        const size_t got = std::fread(in_buf_.data(), 1, in_buf_.size(), file_);
        if (got == 0) {
          if (std::ferror(file_)) {
            return absl::DataLossError(absl::StrCat(path_, ": read error: ", errno_text()));
          }
          if (frame_open_) {
            return absl::DataLossError(
                absl::StrCat(path_, ": truncated zstd stream (file ends inside a frame)"));
          }
          break;
        }
        in_ = ZSTD_inBuffer{in_buf_.data(), got, 0};
      }
      const size_t ret = ZSTD_decompressStream(dctx_, &out, &in_);
      if (ZSTD_isError(ret)) {
        return absl::DataLossError(
            absl::StrCat(path_, ": zstd decompression failed: ", ZSTD_getErrorName(ret)));
      }
      frame_open_ = ret != 0;
    }
    return out.pos;
  }
  // Reads exactly n bytes or fails naming what was being read.
  absl::Status read_exact(void* dst, size_t n, uint64_t at, const std::string& what) {
    absl::StatusOr<size_t> got = read(dst, n);
    if (!got.ok()) return got.status();
    if (*got != n) {
      return absl::DataLossError(absl::StrCat(path_, ": truncated: ", what, " needs bytes [", at,
                                              ", ", at + n, ") but the data ends at byte ",
                                              at + *got));
    }
    return absl::OkStatus();
  }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  ZSTD_DStream* dctx_ = nullptr;
  std::vector<char> in_buf_;
  ZSTD_inBuffer in_{nullptr, 0, 0};
  bool frame_open_ = false;
};

}  // namespace

bool is_zstd_path(const std::string& path) { return absl::EndsWith(path, ".zst"); }

absl::StatusOr<TokenFile> read_token_file(const std::string& path, const TokenFileCheck& check) {
  ByteSource src;
  if (auto s = src.open(path); !s.ok()) return s;
  unsigned char h[TokenFileHeader::kHeaderBytes];
  {
    absl::StatusOr<size_t> got = src.read(h, sizeof h);
    if (!got.ok()) return got.status();
    if (*got >= sizeof TokenFileHeader::kMagic &&
        std::memcmp(h + kOffMagic, TokenFileHeader::kMagic, sizeof TokenFileHeader::kMagic) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": not an engine token file (magic is not \"BLMTOKEN\")"));
    }
    if (*got != sizeof h) {
      return absl::DataLossError(absl::StrCat(path, ": truncated: the 64-byte header ends at byte ",
                                              *got));
    }
  }
  const uint32_t version = load<uint32_t>(h + kOffVersion);
  if (version != TokenFileHeader::kVersion) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": token file version ", version,
                                                   " is not supported (this engine reads ",
                                                   TokenFileHeader::kVersion, ")"));
  }
  if (load<uint32_t>(h + kOffHeaderBytes) != TokenFileHeader::kHeaderBytes ||
      load<uint32_t>(h + kOffTokenWidth) != TokenFileHeader::kTokenWidth) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header size ", load<uint32_t>(h + kOffHeaderBytes), " / token width ",
                     load<uint32_t>(h + kOffTokenWidth), " must be 64 / 4"));
  }
  TokenFile file;
  file.header.token_count = load<uint64_t>(h + kOffTokenCount);
  file.header.document_count = load<uint64_t>(h + kOffDocumentCount);
  file.header.tokenizer_fingerprint = load<uint64_t>(h + kOffFingerprint);
  file.header.vocab_size = load<uint32_t>(h + kOffVocabSize);
  const TokenFileHeader& hd = file.header;
  if (check.tokenizer_fingerprint && *check.tokenizer_fingerprint != hd.tokenizer_fingerprint) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: made by a different tokenizer (fingerprint %016x, expected %016x); re-tokenize it",
        path, hd.tokenizer_fingerprint, *check.tokenizer_fingerprint));
  }
  // Ids must be below both the producing tokenizer's vocabulary and the caller's limit.
  uint32_t limit = hd.vocab_size;
  if (check.vocab_size) limit = std::min(limit, *check.vocab_size);

  uint64_t at = TokenFileHeader::kHeaderBytes;
  while (file.ids.size() < hd.token_count) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kReadBlockIds, hd.token_count - file.ids.size()));
    const size_t old = file.ids.size();
    file.ids.resize(old + n);
    if (auto s = src.read_exact(file.ids.data() + old, n * 4, at,
                                absl::StrCat(hd.token_count, " token ids"));
        !s.ok()) {
      return s;
    }
    for (size_t i = old; i < old + n; ++i) {
      if (file.ids[i] >= limit) {
        return absl::OutOfRangeError(absl::StrCat(path, ": token ", i, " has id ", file.ids[i],
                                                  ", outside the vocabulary (size ", limit, ")"));
      }
    }
    at += n * 4;
  }
  while (file.document_ends.size() < hd.document_count) {
    const size_t n = static_cast<size_t>(
        std::min<uint64_t>(kReadBlockIds, hd.document_count - file.document_ends.size()));
    const size_t old = file.document_ends.size();
    file.document_ends.resize(old + n);
    if (auto s = src.read_exact(file.document_ends.data() + old, n * 8, at,
                                absl::StrCat(hd.document_count, " document offsets"));
        !s.ok()) {
      return s;
    }
    at += n * 8;
  }
  uint64_t prev = 0;
  for (size_t d = 0; d < file.document_ends.size(); ++d) {
    if (file.document_ends[d] < prev || file.document_ends[d] > hd.token_count) {
      return absl::DataLossError(absl::StrCat(path, ": document ", d, " ends at token ",
                                              file.document_ends[d], ", outside [", prev, ", ",
                                              hd.token_count, "]"));
    }
    prev = file.document_ends[d];
  }
  if (hd.document_count > 0 ? prev != hd.token_count : hd.token_count != 0) {
    return absl::DataLossError(absl::StrCat(path, ": the documents cover ", prev, " of ",
                                            hd.token_count, " tokens"));
  }
  unsigned char extra;
  absl::StatusOr<size_t> more = src.read(&extra, 1);
  if (!more.ok()) return more.status();
  if (*more != 0) {
    return absl::DataLossError(
        absl::StrCat(path, ": trailing bytes after the document index (at byte ", at, ")"));
  }
  return file;
}

// --- writer ------------------------------------------------------------------------------------
absl::StatusOr<TokenFileWriter> TokenFileWriter::create(const std::string& path,
                                                        uint64_t tokenizer_fingerprint,
                                                        uint32_t vocab_size) {
  TokenFileWriter w;
  w.path_ = path;
  w.raw_path_ = is_zstd_path(path) ? path + ".partial" : path;
  w.header_.tokenizer_fingerprint = tokenizer_fingerprint;
  w.header_.vocab_size = vocab_size;
  w.file_ = std::fopen(w.raw_path_.c_str(), "wb+");
  if (!w.file_) {
    return absl::PermissionDeniedError(
        absl::StrCat(w.raw_path_, ": cannot open for writing: ", errno_text()));
  }
  // Placeholder header; close() rewrites it with the final counts.
  unsigned char zeros[TokenFileHeader::kHeaderBytes] = {};
  if (std::fwrite(zeros, 1, sizeof zeros, w.file_) != sizeof zeros) {
    return absl::DataLossError(absl::StrCat(w.raw_path_, ": write failed: ", errno_text()));
  }
  return w;
}

TokenFileWriter::TokenFileWriter(TokenFileWriter&& o) noexcept { *this = std::move(o); }
TokenFileWriter& TokenFileWriter::operator=(TokenFileWriter&& o) noexcept {
  std::swap(path_, o.path_);
  std::swap(raw_path_, o.raw_path_);
  std::swap(file_, o.file_);
  std::swap(header_, o.header_);
  std::swap(document_ends_, o.document_ends_);
  return *this;
}
TokenFileWriter::~TokenFileWriter() {
  if (file_) {
    std::fclose(file_);
    if (raw_path_ != path_) std::remove(raw_path_.c_str());
  }
}

absl::Status TokenFileWriter::add_document(std::span<const uint32_t> ids) {
  if (!file_) return absl::FailedPreconditionError(absl::StrCat(path_, ": writer is closed"));
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= header_.vocab_size) {
      return absl::OutOfRangeError(absl::StrCat(path_, ": document ", header_.document_count,
                                                " token ", i, " has id ", ids[i],
                                                ", outside the vocabulary (size ",
                                                header_.vocab_size, ")"));
    }
  }
  if (std::fwrite(ids.data(), 4, ids.size(), file_) != ids.size()) {
    return absl::DataLossError(absl::StrCat(raw_path_, ": write failed: ", errno_text()));
  }
  header_.token_count += ids.size();
  header_.document_count += 1;
  document_ends_.push_back(header_.token_count);
  return absl::OkStatus();
}

namespace {

absl::Status compress_file(const std::string& from, const std::string& to) {
  std::FILE* in = std::fopen(from.c_str(), "rb");
  if (!in) return absl::NotFoundError(absl::StrCat(from, ": cannot reopen: ", errno_text()));
  std::FILE* out = std::fopen(to.c_str(), "wb");
  if (!out) {
    std::fclose(in);
    return absl::PermissionDeniedError(absl::StrCat(to, ": cannot open for writing: ", errno_text()));
  }
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  // Level 3 (zstd's default) compresses token ids about 2x at several hundred MB/s.
  constexpr int kZstdLevel = 3;
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, kZstdLevel);
  std::vector<char> in_buf(ZSTD_CStreamInSize()), out_buf(ZSTD_CStreamOutSize());
  absl::Status status = absl::OkStatus();
  bool done = false;
  while (!done && status.ok()) {
    const size_t got = std::fread(in_buf.data(), 1, in_buf.size(), in);
    if (std::ferror(in)) {
      status = absl::DataLossError(absl::StrCat(from, ": read error: ", errno_text()));
      break;
    }
    const ZSTD_EndDirective mode = got < in_buf.size() ? ZSTD_e_end : ZSTD_e_continue;
    ZSTD_inBuffer input{in_buf.data(), got, 0};
    bool finished = false;
    while (!finished) {
      ZSTD_outBuffer output{out_buf.data(), out_buf.size(), 0};
      const size_t remaining = ZSTD_compressStream2(cctx, &output, &input, mode);
      if (ZSTD_isError(remaining)) {
        status = absl::InternalError(
            absl::StrCat(to, ": zstd compression failed: ", ZSTD_getErrorName(remaining)));
        break;
      }
      if (std::fwrite(out_buf.data(), 1, output.pos, out) != output.pos) {
        status = absl::DataLossError(absl::StrCat(to, ": write failed: ", errno_text()));
        break;
      }
      finished = mode == ZSTD_e_end ? remaining == 0 : input.pos == input.size;
    }
    done = mode == ZSTD_e_end;
  }
  ZSTD_freeCCtx(cctx);
  std::fclose(in);
  if (std::fclose(out) != 0 && status.ok()) {
    status = absl::DataLossError(absl::StrCat(to, ": close failed: ", errno_text()));
  }
  return status;
}

}  // namespace

absl::Status TokenFileWriter::close() {
  if (!file_) return absl::FailedPreconditionError(absl::StrCat(path_, ": writer is closed"));
  const size_t n = document_ends_.size();
  bool ok = std::fwrite(document_ends_.data(), 8, n, file_) == n;
  unsigned char h[TokenFileHeader::kHeaderBytes] = {};
  std::memcpy(h + kOffMagic, TokenFileHeader::kMagic, sizeof TokenFileHeader::kMagic);
  store<uint32_t>(h + kOffVersion, TokenFileHeader::kVersion);
  store<uint32_t>(h + kOffHeaderBytes, TokenFileHeader::kHeaderBytes);
  store<uint32_t>(h + kOffTokenWidth, TokenFileHeader::kTokenWidth);
  store<uint64_t>(h + kOffTokenCount, header_.token_count);
  store<uint64_t>(h + kOffDocumentCount, header_.document_count);
  store<uint64_t>(h + kOffFingerprint, header_.tokenizer_fingerprint);
  store<uint32_t>(h + kOffVocabSize, header_.vocab_size);
  ok = ok && std::fseek(file_, 0, SEEK_SET) == 0 && std::fwrite(h, 1, sizeof h, file_) == sizeof h;
  ok = std::fclose(file_) == 0 && ok;
  file_ = nullptr;
  absl::Status status = ok ? absl::OkStatus()
                           : absl::DataLossError(absl::StrCat(raw_path_, ": write failed: ",
                                                              errno_text()));
  if (raw_path_ != path_) {
    if (status.ok()) status = compress_file(raw_path_, path_);
    std::remove(raw_path_.c_str());
  }
  return status;
}

absl::Status write_token_file(const std::string& path, const TokenFile& file) {
  absl::StatusOr<TokenFileWriter> w =
      TokenFileWriter::create(path, file.header.tokenizer_fingerprint, file.header.vocab_size);
  if (!w.ok()) return w.status();
  uint64_t begin = 0;
  for (uint64_t end : file.document_ends) {
    if (end < begin || end > file.ids.size()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": document end ", end,
                                                     " is outside [", begin, ", ",
                                                     file.ids.size(), "]"));
    }
    if (auto s = w->add_document(std::span(file.ids).subspan(begin, end - begin)); !s.ok()) {
      return s;
    }
    begin = end;
  }
  if (begin != file.ids.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": documents cover ", begin, " of ", file.ids.size(), " ids"));
  }
  return w->close();
}

}  // namespace engine
