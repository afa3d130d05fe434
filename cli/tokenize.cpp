// `engine tokenize`: text (.txt, .jsonl) or token files -> one token file (.tok, .tok.zst) or a
// JSON Lines file of {"input_ids": [...]} per document (when --out ends in .jsonl).
// `engine detokenize`: token files or .jsonl -> UTF-8 text, documents separated by a blank line
// (the same separator .txt input is split on), to --out or standard output.
// Both take the tokenizer from --tokenizer FILE or --model DIR (DIR/tokenizer.json). Input files
// come from --in (comma-separated) and/or positional arguments.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "model/dataset.h"
#include "model/token_file.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, tokenizer, "", "tokenizer.json to use instead of the one in --model");
ABSL_FLAG(std::vector<std::string>, in, {}, "input files (comma-separated; positional args too)");
ABSL_FLAG(bool, add_bos, false, "tokenize: start every document with <s> (BLOOM adds none)");

namespace engine::cli {
namespace {

// On a terminal the progress line is redrawn this often; otherwise a plain line is printed this
// often, so logs stay readable.
constexpr double kTtyRefreshSeconds = 0.2;
constexpr double kLogRefreshSeconds = 10.0;
constexpr double kBytesPerMB = 1e6;

absl::StatusOr<Tokenizer> load_tokenizer() {
  std::string path = absl::GetFlag(FLAGS_tokenizer);
  if (path.empty()) {
    const std::string model = absl::GetFlag(FLAGS_model);
    if (model.empty()) {
      return absl::InvalidArgumentError("give --model DIR or --tokenizer FILE");
    }
    path = (std::filesystem::path(model) / "tokenizer.json").string();
  }
  return Tokenizer::load(path);
}

std::vector<std::string> input_paths(const std::vector<std::string>& args) {
  std::vector<std::string> paths;
  for (const std::string& p : absl::GetFlag(FLAGS_in)) {
    if (!p.empty()) paths.push_back(p);
  }
  paths.insert(paths.end(), args.begin(), args.end());
  return paths;
}

// Progress over a list of input files, measured in input bytes.
class Progress {
 public:
  Progress(const char* verb, uint64_t total_bytes)
      : verb_(verb), total_(total_bytes), tty_(::isatty(::fileno(stderr)) != 0),
        start_(Clock::now()), last_(start_) {}
  void file_done(uint64_t file_bytes) { done_before_ += file_bytes; }
  void update(uint64_t bytes_in_file, uint64_t tokens, bool final = false) {
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (!final && since < (tty_ ? kTtyRefreshSeconds : kLogRefreshSeconds)) return;
    last_ = now;
    const uint64_t done = done_before_ + bytes_in_file;
    const double secs = std::max(1e-9, std::chrono::duration<double>(now - start_).count());
    const double pct = total_ ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
    std::fprintf(stderr, "%s%s: %.1f / %.1f MB (%.0f%%), %.1f MB/s, %llu tokens%s", tty_ ? "\r" : "",
                 verb_, done / kBytesPerMB, total_ / kBytesPerMB, pct, done / kBytesPerMB / secs,
                 static_cast<unsigned long long>(tokens), (tty_ && !final) ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  const char* verb_;
  uint64_t total_;
  bool tty_;
  Clock::time_point start_, last_;
  uint64_t done_before_ = 0;
};

uint64_t total_size(const std::vector<std::string>& paths) {
  uint64_t total = 0;
  for (const std::string& p : paths) {
    std::error_code ec;
    const auto n = std::filesystem::file_size(p, ec);
    if (!ec) total += n;
  }
  return total;
}

// Runs `sink` over every document of every path with a progress line.
absl::Status for_each_input(const char* verb, const std::vector<std::string>& paths,
                            Tokenizer& tokenizer, uint64_t& tokens, const DocumentSink& sink) {
  Progress progress(verb, total_size(paths));
  uint64_t in_file = 0;
  DataReadOptions options{.tokenizer = &tokenizer};
  options.progress = [&](uint64_t bytes) {
    in_file = bytes;
    progress.update(bytes, tokens);
  };
  for (const std::string& p : paths) {
    in_file = 0;
    if (auto s = for_each_document(p, options, sink); !s.ok()) return s;
    std::error_code ec;
    const auto n = std::filesystem::file_size(p, ec);
    progress.file_done(ec ? in_file : n);
    in_file = 0;
  }
  progress.update(0, tokens, true);
  return absl::OkStatus();
}

}  // namespace

int run_tokenize(const std::vector<std::string>& args) {
  const std::vector<std::string> paths = input_paths(args);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (paths.empty() || out.empty()) {
    std::fprintf(stderr,
                 "usage: engine tokenize (--model DIR | --tokenizer FILE) --in FILE[,FILE...] "
                 "--out FILE.tok[.zst]|FILE.jsonl\n");
    return 2;
  }
  absl::StatusOr<Tokenizer> tokenizer = load_tokenizer();
  if (!tokenizer.ok()) return fail(std::string(tokenizer.status().message()));
  const uint32_t bos = tokenizer->token_to_id("<s>").value_or(0);
  const bool add_bos = absl::GetFlag(FLAGS_add_bos);
  if (add_bos && !tokenizer->token_to_id("<s>")) return fail("--add_bos: tokenizer has no <s>");

  uint64_t tokens = 0;
  std::vector<uint32_t> with_bos;
  const auto maybe_bos = [&](std::span<const uint32_t> ids) {
    if (!add_bos) return ids;
    with_bos.assign(1, bos);
    with_bos.insert(with_bos.end(), ids.begin(), ids.end());
    return std::span<const uint32_t>(with_bos);
  };
  absl::Status status;
  if (absl::EndsWith(out, ".jsonl")) {
    std::ofstream f(out, std::ios::binary | std::ios::trunc);
    if (!f) return fail(absl::StrCat(out, ": cannot open for writing"));
    std::string line;
    status = for_each_input("tokenize", paths, *tokenizer, tokens, [&](std::span<const uint32_t> ids) {
      ids = maybe_bos(ids);
      line = "{\"input_ids\": [";
      for (size_t i = 0; i < ids.size(); ++i) absl::StrAppend(&line, i ? ", " : "", ids[i]);
      line += "]}\n";
      f << line;
      tokens += ids.size();
      return f ? absl::OkStatus() : absl::DataLossError(absl::StrCat(out, ": write failed"));
    });
  } else {
    absl::StatusOr<TokenFileWriter> writer =
        TokenFileWriter::create(out, tokenizer->fingerprint(), tokenizer->vocab_size());
    if (!writer.ok()) return fail(std::string(writer.status().message()));
    status = for_each_input("tokenize", paths, *tokenizer, tokens, [&](std::span<const uint32_t> ids) {
      ids = maybe_bos(ids);
      tokens += ids.size();
      return writer->add_document(ids);
    });
    if (status.ok()) status = writer->close();
  }
  if (!status.ok()) return fail(std::string(status.message()));
  return 0;
}

int run_detokenize(const std::vector<std::string>& args) {
  const std::vector<std::string> paths = input_paths(args);
  if (paths.empty()) {
    std::fprintf(stderr,
                 "usage: engine detokenize (--model DIR | --tokenizer FILE) --in FILE.tok[.zst]|"
                 "FILE.jsonl [--out FILE.txt]\n");
    return 2;
  }
  absl::StatusOr<Tokenizer> tokenizer = load_tokenizer();
  if (!tokenizer.ok()) return fail(std::string(tokenizer.status().message()));
  const std::string out = absl::GetFlag(FLAGS_out);
  std::FILE* f = (out.empty() || out == "-") ? stdout : std::fopen(out.c_str(), "wb");
  if (!f) return fail(absl::StrCat(out, ": cannot open for writing"));
  uint64_t tokens = 0;
  bool first = true;
  absl::Status status = for_each_input("detokenize", paths, *tokenizer, tokens,
                                       [&](std::span<const uint32_t> ids) -> absl::Status {
    absl::StatusOr<std::string> text = tokenizer->decode(ids);
    if (!text.ok()) return text.status();
    if (!first) std::fputs("\n\n", f);
    first = false;
    tokens += ids.size();
    if (std::fwrite(text->data(), 1, text->size(), f) != text->size()) {
      return absl::DataLossError(absl::StrCat(out, ": write failed"));
    }
    return absl::OkStatus();
  });
  if (!first) std::fputs("\n", f);
  if (f != stdout && std::fclose(f) != 0 && status.ok()) {
    status = absl::DataLossError(absl::StrCat(out, ": close failed"));
  }
  if (!status.ok()) return fail(std::string(status.message()));
  return 0;
}

}  // namespace engine::cli
