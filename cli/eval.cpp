// `engine eval --model DIR --data FILE [--seq_len N] [--stride S] [--batch B] [--json]`:
// Hugging Face sliding-window perplexity (model/perplexity.h) over every document of FILE
// (.txt split at blank lines, .jsonl text/input_ids, or a token file), each scored from its own
// position 0. --json prints {"tokens_scored": N, "nll": mean nll per token, "ppl": exp(nll)}.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>

#include <omp.h>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/progress.h"
#include "cli/model_loading.h"
#include "model/bloom_forward.h"
#include "model/dataset.h"
#include "model/device_model.h"
#include "model/perplexity.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

ABSL_DECLARE_FLAG(std::string, tokenizer);
ABSL_FLAG(int, stride, 0,
          "eval: window stride in tokens (0 = seq_len / 2, so every token but a document's first "
          "is scored; stride = seq_len leaves each window's first token unscored)");
ABSL_FLAG(int, batch, 1, "eval: windows per forward pass");

namespace engine::cli {
namespace {

}  // namespace

absl::StatusOr<std::optional<Tokenizer>> optional_tokenizer(const std::string& model_dir) {
  std::string path = absl::GetFlag(FLAGS_tokenizer);
  if (path.empty()) {
    const std::filesystem::path candidate = std::filesystem::path(model_dir) / "tokenizer.json";
    if (!std::filesystem::exists(candidate)) return std::optional<Tokenizer>();
    path = candidate.string();
  }
  absl::StatusOr<Tokenizer> t = Tokenizer::load(path);
  if (!t.ok()) return t.status();
  return std::optional<Tokenizer>(std::move(*t));
}

absl::StatusOr<BloomModel> load_checked_model(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("--model DIR is required");
  absl::StatusOr<BloomModel> model = load_model_directory(dir);
  if (!model.ok()) return model.status();
  if (absl::Status s = check_finite_parameters(*model); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": ", std::string(s.message())));
  }
  return model;
}

void apply_thread_flag() {
  const int threads = absl::GetFlag(FLAGS_threads);
  if (threads > 0) omp_set_num_threads(threads);
}

int run_eval(const std::vector<std::string>& args) {
  apply_thread_flag();
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  const std::string data = absl::GetFlag(FLAGS_data);
  if (data.empty()) return fail("eval: --data FILE is required");
  absl::StatusOr<BloomModel> model = load_checked_model(model_dir);
  if (!model.ok()) return fail(std::string(model.status().message()));
  absl::StatusOr<std::optional<Tokenizer>> tokenizer = optional_tokenizer(model_dir);
  if (!tokenizer.ok()) return fail(std::string(tokenizer.status().message()));

  DataReadOptions read;
  read.tokenizer = tokenizer->has_value() ? &**tokenizer : nullptr;
  read.vocab_size = static_cast<uint32_t>(model->config.vocab_size);
  std::vector<std::vector<int32_t>> documents;
  absl::Status s = for_each_document(data, read, [&](std::span<const uint32_t> ids) {
    documents.emplace_back(ids.begin(), ids.end());
    return absl::OkStatus();
  });
  if (!s.ok()) return fail(std::string(s.message()));
  if (documents.empty()) return fail(absl::StrCat(data, ": no documents"));
  for (size_t d = 0; d < documents.size(); ++d) {
    if (documents[d].empty()) {
      return fail(absl::StrCat(data, ": document ", d, " is empty (no tokens to score)"));
    }
  }

  PerplexityOptions options;
  options.seq_len = absl::GetFlag(FLAGS_seq_len);
  options.stride = absl::GetFlag(FLAGS_stride) == 0 ? std::max<int64_t>(1, options.seq_len / 2)
                                                  : absl::GetFlag(FLAGS_stride);
  options.batch = absl::GetFlag(FLAGS_batch);
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  ProgressBar bar("eval", "windows");
  auto progress = [&](int64_t done, int64_t total) { bar.update(done, total); };
  absl::StatusOr<std::unique_ptr<Backend>> device = command_backend_for("eval", *model);
  if (!device.ok()) return fail(std::string(device.status().message()));
  std::unique_ptr<Backend> backend = *std::move(device);
  absl::StatusOr<PerplexityResult> r =
      sliding_window_perplexity(*model, *backend, documents, options, progress);
  if (!r.ok()) return fail(std::string(r.status().message()));
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const double nll = r->mean_nll();
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json j = {{"tokens_scored", r->tokens_scored},
                        {"nll", nll},
                        {"ppl", std::exp(nll)},
                        {"device", std::string(backend->name())},
                        {"dtype", dtype_name(storage_on(*model, *backend))}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("documents      %zu\nwindows        %lld (seq_len %lld, stride %lld)\n"
                "tokens scored  %lld\nmean nll       %.6f\nperplexity     %.4f\n"
                "device         %s (%s)\n"
                "time           %.2f s (%.1f scored tokens/s)\n",
                documents.size(), static_cast<long long>(r->windows),
                static_cast<long long>(options.seq_len), static_cast<long long>(options.stride),
                static_cast<long long>(r->tokens_scored), nll, std::exp(nll),
                std::string(backend->name()).c_str(), dtype_name(storage_on(*model, *backend)),
                seconds,
                r->tokens_scored / std::max(seconds, 1e-9));
  }
  return 0;
}

}  // namespace engine::cli
