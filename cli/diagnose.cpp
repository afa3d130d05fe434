// `engine diagnose`: find collapsed heads (docs/DIAGNOSE.md).
//   engine diagnose --model DIR (--data FILE | --prompt TEXT) [--out report.json] [--seq_len 512]
//                   [--max_seqs K] [--batch B] [--csv F] [--svg F] [--html F]
//                   [--dead 0.95 --sink 0.5 --low_entropy 0.5] [--json]
//   engine diagnose --compare BEFORE.json AFTER.json [--plan plan.json] [--drift 0.05]
//                   [--out comparison.json] [--csv F] [--svg F] [--html F] [--json]
// The first form scans the sequences of FILE (surgery/corpus_scan.h), writes report.json v1 and
// the optional renderings, and prints the layer x head grid, counts and band (or, with --json, the
// report). The second compares two reports (surgery/report_compare.h).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/progress.h"
#include "cli/model_loading.h"
#include "engine/io.h"
#include "surgery/corpus_scan.h"
#include "surgery/diagnosis.h"
#include "surgery/report_compare.h"

ABSL_DECLARE_FLAG(std::string, tokenizer);
ABSL_DECLARE_FLAG(std::string, prompt);
ABSL_DECLARE_FLAG(int, batch);
ABSL_FLAG(int, max_seqs, 0, "diagnose: use at most this many sequences (0 = all)");
ABSL_FLAG(std::string, csv, "", "diagnose: also write one CSV row per head here");
ABSL_FLAG(std::string, svg, "", "diagnose: also write the heatmap (SVG) here");
ABSL_FLAG(std::string, html, "", "diagnose: also write a self-contained HTML page here");
ABSL_FLAG(double, dead, engine::Thresholds{}.dead, "diagnose: DEAD when bos_mass > this");
ABSL_FLAG(double, sink, engine::Thresholds{}.sink, "diagnose: SINK when bos_mass > this");
ABSL_FLAG(double, low_entropy, engine::Thresholds{}.low_entropy,
          "diagnose: LOW_ENTROPY when entropy < this (nats)");
ABSL_FLAG(bool, compare, false,
          "diagnose: compare two reports given as positional arguments BEFORE.json AFTER.json");
ABSL_FLAG(double, drift, engine::ReportComparison::kDefaultDriftThreshold,
          "diagnose --compare: a head drifts when |delta bos_mass| exceeds this");

namespace engine::cli {
namespace {

// Writes each non-empty (path, text) pair atomically; the first failure is returned.
absl::Status write_outputs(const std::vector<std::pair<std::string, std::string>>& outputs) {
  for (const auto& [path, text] : outputs) {
    if (path.empty()) continue;
    if (absl::Status s = write_string_atomically(path, text); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// The directory's own name, also for "DIR/" and "DIR/.".
std::string model_name(const std::string& dir) {
  std::filesystem::path p = std::filesystem::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "DIR/" normalises with an empty filename
  return p.filename().string();
}

int run_compare(const std::vector<std::string>& args) {
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: engine diagnose --compare BEFORE.json AFTER.json [--plan "
                         "plan.json] [--drift 0.05] [--out F] [--csv F] [--svg F] [--html F]\n");
    return 2;
  }
  absl::StatusOr<DiagnosisReport> before = load_report(args[0]);
  if (!before.ok()) return fail(std::string(before.status().message()));
  absl::StatusOr<DiagnosisReport> after = load_report(args[1]);
  if (!after.ok()) return fail(std::string(after.status().message()));
  std::optional<SurgeryPlan> plan;
  const std::string plan_path = absl::GetFlag(FLAGS_plan);
  if (!plan_path.empty()) {
    absl::StatusOr<SurgeryPlan> p = load_plan(plan_path);
    if (!p.ok()) return fail(std::string(p.status().message()));
    plan = std::move(*p);
  }
  absl::StatusOr<ReportComparison> c =
      compare_reports(*before, *after, plan ? &*plan : nullptr, absl::GetFlag(FLAGS_drift),
                      args[0], args[1], plan_path);
  if (!c.ok()) return fail(std::string(c.status().message()));
  const std::string json_text = comparison_to_json(*c).dump(2) + "\n";
  if (absl::Status s = write_outputs({{absl::GetFlag(FLAGS_out), json_text},
                                      {absl::GetFlag(FLAGS_csv), render_comparison_csv(*c)},
                                      {absl::GetFlag(FLAGS_svg), render_delta_svg(*c)},
                                      {absl::GetFlag(FLAGS_html), render_comparison_html(*c)}});
      !s.ok()) {
    return fail(std::string(s.message()));
  }
  std::fputs(absl::GetFlag(FLAGS_json) ? json_text.c_str() : render_comparison_text(*c).c_str(),
             stdout);
  return 0;
}

// The sequences named by --data or --prompt.
absl::StatusOr<std::vector<TokenSequence>> input_sequences(const BloomModel& model,
                                                           const std::string& model_dir,
                                                           const SequenceOptions& options) {
  const std::string data = absl::GetFlag(FLAGS_data);
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  if (data.empty() == prompt.empty()) {
    return absl::InvalidArgumentError("diagnose: give exactly one of --data FILE and --prompt TEXT");
  }
  absl::StatusOr<std::optional<Tokenizer>> tokenizer = optional_tokenizer(model_dir);
  if (!tokenizer.ok()) return tokenizer.status();
  const std::string no_tokenizer = absl::StrCat(
      model_dir, " has no tokenizer.json and no --tokenizer FILE was given: text needs one; token "
                 "ids can be diagnosed from a token file or a .jsonl of {\"input_ids\": [...]}");
  if (!prompt.empty()) {
    if (!tokenizer->has_value()) return absl::FailedPreconditionError(absl::StrCat("--prompt: ", no_tokenizer));
    absl::StatusOr<std::vector<uint32_t>> ids = (*tokenizer)->encode(prompt);
    if (!ids.ok()) return ids.status();
    if (ids->empty()) return absl::InvalidArgumentError("--prompt: the prompt has no tokens");
    std::vector<TokenSequence> out;
    append_document_sequences(*ids, SequenceCut::kTruncate, options, out);
    return out;
  }
  DataReadOptions read;
  read.tokenizer = tokenizer->has_value() ? &**tokenizer : nullptr;
  read.vocab_size = static_cast<uint32_t>(model.config.vocab_size);
  absl::StatusOr<std::vector<TokenSequence>> seqs = read_diagnosis_sequences(data, read, options);
  if (!seqs.ok() && read.tokenizer == nullptr &&
      seqs.status().code() == absl::StatusCode::kFailedPrecondition) {
    return absl::FailedPreconditionError(absl::StrCat(data, ": ", no_tokenizer));
  }
  return seqs;
}

}  // namespace

int run_diagnose(const std::vector<std::string>& args) {
  if (absl::GetFlag(FLAGS_compare)) return run_compare(args);
  if (!args.empty()) return fail(absl::StrCat("diagnose: unexpected argument '", args[0], "'"));
  apply_thread_flag();
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty() || (absl::GetFlag(FLAGS_data).empty() && absl::GetFlag(FLAGS_prompt).empty())) {
    std::fprintf(stderr, "usage: engine diagnose --model DIR (--data FILE | --prompt TEXT) [--out "
                         "report.json] [--seq_len 512] [--max_seqs K] [--batch B] [--csv F] [--svg "
                         "F] [--html F] [--dead 0.95] [--sink 0.5] [--low_entropy 0.5] [--json]\n"
                         "       engine diagnose --compare BEFORE.json AFTER.json [--plan "
                         "plan.json]\n");
    return 2;
  }
  DiagnoseOptions options;
  options.seq_len = absl::GetFlag(FLAGS_seq_len);
  options.batch = absl::GetFlag(FLAGS_batch);
  options.thresholds = Thresholds{absl::GetFlag(FLAGS_dead), absl::GetFlag(FLAGS_sink),
                                  absl::GetFlag(FLAGS_low_entropy)};
  options.model_name = model_name(model_dir);
  if (absl::Status s = validate_thresholds(options.thresholds); !s.ok()) {
    return fail(absl::StrCat("diagnose: ", std::string(s.message())));
  }
  if (options.seq_len <= 0) return fail(absl::StrCat("--seq_len must be positive, got ", options.seq_len));
  if (options.batch <= 0) return fail(absl::StrCat("--batch must be positive, got ", options.batch));

  absl::StatusOr<BloomModel> model = load_checked_model(model_dir);
  if (!model.ok()) return fail(std::string(model.status().message()));
  SequenceOptions seq_options;
  seq_options.seq_len = options.seq_len;
  seq_options.max_seqs = absl::GetFlag(FLAGS_max_seqs);
  absl::StatusOr<std::vector<TokenSequence>> sequences =
      input_sequences(*model, model_dir, seq_options);
  if (!sequences.ok()) return fail(std::string(sequences.status().message()));

  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  ProgressBar bar("diagnose", "sequences");
  auto progress = [&](int64_t done, int64_t total) { bar.update(done, total); };
  absl::StatusOr<std::unique_ptr<Backend>> device = command_backend_for("diagnose", *model);
  if (!device.ok()) return fail(std::string(device.status().message()));
  std::unique_ptr<Backend> backend = *std::move(device);
  absl::StatusOr<DiagnosisReport> report =
      diagnose_sequences(*model, *backend, *sequences, options, progress);
  if (!report.ok()) return fail(std::string(report.status().message()));
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  const std::string json_text = report_to_json(*report).dump(2) + "\n";
  if (absl::Status s = write_outputs({{absl::GetFlag(FLAGS_out), json_text},
                                      {absl::GetFlag(FLAGS_csv), render_csv(*report)},
                                      {absl::GetFlag(FLAGS_svg), render_svg(*report)},
                                      {absl::GetFlag(FLAGS_html), render_html(*report)}});
      !s.ok()) {
    return fail(std::string(s.message()));
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::fputs(json_text.c_str(), stdout);
  } else {
    std::printf("model %s: %lld layers x %lld heads; %lld sequences, %lld tokens (seq_len %lld), "
                "%.2f s\n",
                options.model_name.c_str(), static_cast<long long>(report->n_layer),
                static_cast<long long>(report->n_head), static_cast<long long>(report->sequences),
                static_cast<long long>(report->tokens), static_cast<long long>(report->seq_len),
                seconds);
    std::fputs(render_grid(*report).c_str(), stdout);
  }
  return 0;
}

}  // namespace engine::cli
