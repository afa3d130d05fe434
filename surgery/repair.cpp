// The repair pipeline; contract in surgery/repair.h.
#include "surgery/repair.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/io.h"
#include "model/device_model.h"
#include "model/model_directory.h"
#include "model/perplexity.h"
#include "model/pretrain.h"
#include "surgery/report_compare.h"
#include "surgery/repair_report.h"
#include "surgery/surgery_training.h"

namespace engine {
namespace fs = std::filesystem;

namespace {

constexpr const char* kReportBefore = "report_before.json";
constexpr const char* kReportAfter = "report_after.json";
constexpr const char* kPlanFile = "plan.json";
constexpr const char* kComparisonFile = "comparison.json";
constexpr const char* kPassFile = "pass.json";
constexpr const char* kTrainDir = "train";
constexpr const char* kSummaryFile = "repair.json";
constexpr const char* kReportHtml = "report.html";

absl::StatusOr<nlohmann::json> read_json_file(const fs::path& file) {
  std::ifstream in(file);
  if (!in) return absl::NotFoundError(absl::StrCat(file.string(), ": cannot open"));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return absl::DataLossError(absl::StrCat(file.string(), ": invalid JSON"));
  return j;
}

absl::Status write_json_file(const fs::path& file, const nlohmann::json& j) {
  return write_string_atomically(file, j.dump(2) + "\n");
}

nlohmann::json counts_json(const HeadCounts& c) {
  return {{"HEALTHY", c.healthy}, {"LOW_ENTROPY", c.low_entropy}, {"SINK", c.sink},
          {"DEAD", c.dead}};
}

absl::StatusOr<HeadCounts> counts_from_json(const nlohmann::json& j, const std::string& source) {
  HeadCounts c;
  try {
    c.healthy = j.at("HEALTHY").get<int64_t>();
    c.low_entropy = j.at("LOW_ENTROPY").get<int64_t>();
    c.sink = j.at("SINK").get<int64_t>();
    c.dead = j.at("DEAD").get<int64_t>();
  } catch (const nlohmann::json::exception&) {
    return absl::DataLossError(absl::StrCat(source, ": counts need integer HEALTHY, LOW_ENTROPY, "
                                            "SINK and DEAD"));
  }
  return c;
}

nlohmann::json optional_json(const std::optional<double>& v) {
  return v.has_value() ? nlohmann::json(*v) : nlohmann::json();
}

// A model read from disk, with its weights resident on `backend` in the training's storage when
// that is a device or 16-bit (the CPU's twin): the diagnoses and perplexities of a repair read
// the weights its training computes with. A checkpoint holds the trained fp32 masters (or their
// 16-bit rounding), so its 16-bit resident copy is the refreshed 16-bit copy the training ended
// with: RNE of each master, and the frozen elements as loaded.
absl::StatusOr<BloomModel> load_on(const fs::path& dir, Backend& backend, DType storage) {
  absl::StatusOr<BloomModel> model = load_model_directory(dir);
  if (!model.ok()) return model.status();
  if (backend.kind() != DeviceKind::kCpu || storage != DType::kF32) {
    if (absl::Status s = make_resident(*model, backend, storage); !s.ok()) return s;
  }
  return model;
}

absl::StatusOr<std::optional<double>> held_out_perplexity(const BloomModel& model,
                                                          Backend& backend,
                                                          const RepairData& data,
                                                          const TrainRunOptions& train) {
  if (data.eval_chunks.empty()) return std::optional<double>();
  PerplexityOptions po;
  po.seq_len = train.seq_len;
  po.stride = train.seq_len;
  po.batch = train.batch;
  absl::StatusOr<PerplexityResult> r =
      sliding_window_perplexity(model, backend, data.eval_chunks, po);
  if (!r.ok()) return r.status();
  return std::optional<double>(std::exp(r->mean_nll()));
}

// Loss and evaluation curves of one training directory's metrics.jsonl; after a resume a step
// appears twice and the later line counts.
absl::StatusOr<TrainingCurves> read_curves(const fs::path& metrics) {
  std::ifstream in(metrics);
  if (!in) return absl::NotFoundError(absl::StrCat(metrics.string(), ": cannot open"));
  std::map<int64_t, double> loss, eval;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::DataLossError(
          absl::StrCat(metrics.string(), ": line ", number, " is not a JSON object"));
    }
    const std::string event = j.value("event", "");
    if (event == "step" && j.contains("loss") && j["loss"].is_number()) {
      loss[j.value("step", int64_t{0})] = j["loss"].get<double>();
    } else if (event == "eval" && j.contains("eval_nll") && j["eval_nll"].is_number()) {
      eval[j.value("step", int64_t{0})] = j["eval_nll"].get<double>();
    }
  }
  TrainingCurves c;
  c.loss.assign(loss.begin(), loss.end());
  c.eval_nll.assign(eval.begin(), eval.end());
  return c;
}

std::string targets_text(const std::vector<HeadTarget>& targets) {
  std::string s;
  for (const HeadTarget& t : targets) absl::StrAppend(&s, s.empty() ? "" : ",", t.layer, ":", t.head);
  return s;
}

}  // namespace

std::vector<HeadTarget> healthy_column_targets(const DiagnosisReport& report, int64_t* head_index) {
  int64_t best = 0;
  double best_mean = -1.0;
  for (int64_t h = 0; h < report.n_head; ++h) {
    double sum = 0.0;
    for (int64_t l = 0; l < report.n_layer; ++l) sum += report.at(l, h).bos_mass.mean;
    const double mean = sum / static_cast<double>(std::max<int64_t>(report.n_layer, 1));
    if (mean > best_mean) {
      best_mean = mean;
      best = h;
    }
  }
  if (head_index != nullptr) *head_index = best;
  std::vector<HeadTarget> targets;
  for (int64_t l = report.n_layer / 2; l < report.n_layer; ++l) targets.push_back({l, best});
  return targets;
}

nlohmann::json pass_summary_to_json(const PassSummary& p) {
  return {{"pass", p.pass},
          {"counts_before", counts_json(p.before)},
          {"counts_after", counts_json(p.after)},
          {"targets", p.targets},
          {"fallback_healthy", p.fallback_healthy},
          {"plan_note", p.plan_note},
          {"ppl_before", optional_json(p.ppl_before)},
          {"ppl_after", optional_json(p.ppl_after)},
          {"steps", p.steps},
          {"chosen_checkpoint", p.chosen_checkpoint},
          {"drift_outside", p.drift_outside},
          {"drift_inside", p.drift_inside},
          {"drift_below_lowest_target_layer", p.drift_below}};
}

absl::StatusOr<PassSummary> pass_summary_from_json(const nlohmann::json& j,
                                                   const std::string& source) {
  PassSummary p;
  try {
    p.pass = j.at("pass").get<int64_t>();
    absl::StatusOr<HeadCounts> before = counts_from_json(j.at("counts_before"), source);
    if (!before.ok()) return before.status();
    absl::StatusOr<HeadCounts> after = counts_from_json(j.at("counts_after"), source);
    if (!after.ok()) return after.status();
    p.before = *before;
    p.after = *after;
    p.targets = j.at("targets").get<int64_t>();
    p.fallback_healthy = j.at("fallback_healthy").get<bool>();
    p.plan_note = j.at("plan_note").get<std::string>();
    if (!j.at("ppl_before").is_null()) p.ppl_before = j.at("ppl_before").get<double>();
    if (!j.at("ppl_after").is_null()) p.ppl_after = j.at("ppl_after").get<double>();
    p.steps = j.at("steps").get<int64_t>();
    p.chosen_checkpoint = j.at("chosen_checkpoint").get<std::string>();
    p.drift_outside = j.at("drift_outside").get<int64_t>();
    p.drift_inside = j.at("drift_inside").get<int64_t>();
    p.drift_below = j.at("drift_below_lowest_target_layer").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(source, ": not a pass summary (", e.what(), ")"));
  }
  if (p.chosen_checkpoint != "best" && p.chosen_checkpoint != "final") {
    return absl::DataLossError(absl::StrCat(source, ": chosen_checkpoint \"", p.chosen_checkpoint,
                                            "\" is neither best nor final"));
  }
  return p;
}

namespace {

// One repair, in steps: validate the inputs, then per pass either read a finished pass back or
// run it (diagnose, select the heads, train with surgery, re-diagnose and compare), record it,
// and at the end write the final model, repair.json and the report.
class RepairRun {
 public:
  RepairRun(const RepairOptions& options, const RepairData& data, Backend& backend)
      : options_(options), data_(data), backend_(backend), current_(options.model_dir) {}

  absl::StatusOr<RepairResult> run();

 private:
  void log(const std::string& line) const {
    if (options_.log) options_.log(line);
  }
  absl::Status validate_inputs();
  absl::StatusOr<RepairPassView> read_finished_pass(const fs::path& dir,
                                                    const std::string& tag) const;
  // A new pass; nullopt when there is nothing to repair (then result_.stop_reason says why).
  absl::StatusOr<std::optional<RepairPassView>> run_pass(int64_t k, const fs::path& dir,
                                                         const std::string& tag);
  absl::StatusOr<DiagnosisReport> diagnose_before(const fs::path& dir, const std::string& tag,
                                                  PassSummary& summary);
  // The pass's targets; nullopt when nothing is selected and there is no fallback.
  absl::StatusOr<std::optional<std::vector<HeadTarget>>> select_targets(
      int64_t k, const DiagnosisReport& before, const std::string& tag, PassSummary& summary);
  absl::StatusOr<TrainRunResult> train_with_surgery(const fs::path& dir, const std::string& tag,
                                                    const SurgeryPlan& plan);
  absl::StatusOr<DiagnosisReport> diagnose_after(const fs::path& dir, const std::string& tag,
                                                 const DiagnosisReport& before,
                                                 const SurgeryPlan& plan,
                                                 const TrainRunResult& run, PassSummary& summary);
  // Shared by fresh and skipped passes; true: no collapsed head left, stop.
  absl::StatusOr<bool> record_pass(RepairPassView view, const fs::path& dir,
                                   const std::string& tag);
  absl::Status write_outputs();

  const RepairOptions& options_;
  const RepairData& data_;
  Backend& backend_;
  std::optional<BloomConfig> input_config_;
  DiagnoseOptions diagnose_;
  RepairResult result_;
  std::vector<RepairPassView> views_;
  fs::path current_;  // the model the next pass starts from
  bool trained_any_ = false;
};

// Everything is checked before any work.
absl::Status RepairRun::validate_inputs() {
  const RepairOptions& options = options_;
  if (options.model_dir.empty()) return absl::InvalidArgumentError("repair: --model DIR is required");
  if (options.out_dir.empty()) return absl::InvalidArgumentError("repair: --out DIR is required");
  if (options.passes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("repair: --passes ", options.passes, " < 1"));
  }
  if (absl::Status s = validate_thresholds(options.thresholds); !s.ok()) return s;
  if (data_.train == nullptr || data_.train->train_size() == 0) {
    return absl::InvalidArgumentError("repair: no training chunk in the data");
  }
  if (data_.scan_sequences.empty()) {
    return absl::InvalidArgumentError("repair: no held-out sequence to diagnose on");
  }
  std::error_code ec;
  if (fs::exists(options.out_dir, ec) && !fs::is_directory(options.out_dir, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.out_dir.string(), ": output path exists and is not a directory"));
  }
  if (!options.resume && (fs::exists(options.out_dir / "pass_1", ec) ||
                          fs::exists(options.out_dir / kSummaryFile, ec))) {
    return absl::AlreadyExistsError(absl::StrCat(
        options.out_dir.string(), ": holds a previous repair; pass --resume or choose another --out"));
  }
  absl::StatusOr<BloomConfig> input_config = load_bloom_config(options.model_dir / "config.json");
  if (!input_config.ok()) return input_config.status();
  input_config_ = std::move(*input_config);
  diagnose_.seq_len = options.train.seq_len;
  diagnose_.batch = options.scan_batch;
  diagnose_.thresholds = options.thresholds;
  diagnose_.model_name = options.model_dir.filename().string();
  return absl::OkStatus();
}

absl::StatusOr<RepairPassView> RepairRun::read_finished_pass(const fs::path& dir,
                                                             const std::string& tag) const {
  absl::StatusOr<nlohmann::json> pj = read_json_file(dir / kPassFile);
  if (!pj.ok()) return pj.status();
  absl::StatusOr<PassSummary> summary = pass_summary_from_json(*pj, (dir / kPassFile).string());
  if (!summary.ok()) return summary.status();
  absl::StatusOr<DiagnosisReport> before = load_report((dir / kReportBefore).string());
  if (!before.ok()) return before.status();
  absl::StatusOr<DiagnosisReport> after = load_report((dir / kReportAfter).string());
  if (!after.ok()) return after.status();
  absl::StatusOr<SurgeryPlan> plan = load_plan((dir / kPlanFile).string());
  if (!plan.ok()) return plan.status();
  RepairPassView view;
  view.summary = *summary;
  view.before = std::move(*before);
  view.after = std::move(*after);
  view.plan = std::move(*plan);
  log(absl::StrCat(tag, ": finished earlier (", kReportAfter, " exists), skipped"));
  return view;
}

// The diagnosis and perplexity of the pass's input model, written as report_before.json.
absl::StatusOr<DiagnosisReport> RepairRun::diagnose_before(const fs::path& dir,
                                                           const std::string& tag,
                                                           PassSummary& summary) {
  absl::StatusOr<BloomModel> model = load_on(current_, backend_, options_.train.storage);
  if (!model.ok()) return model.status();
  log(absl::StrCat(tag, ": diagnosing ", current_.string(), " on ", data_.scan_sequences.size(),
                   " held-out sequences"));
  absl::StatusOr<DiagnosisReport> before =
      diagnose_sequences(*model, backend_, data_.scan_sequences, diagnose_);
  if (!before.ok()) return before.status();
  absl::StatusOr<std::optional<double>> ppl_before =
      held_out_perplexity(*model, backend_, data_, options_.train);
  if (!ppl_before.ok()) return ppl_before.status();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir.string(), ": ", ec.message()));
  if (absl::Status s = write_json_file(dir / kReportBefore, report_to_json(*before)); !s.ok()) {
    return s;
  }
  const HeadCounts& c = before->counts;
  log(absl::StrFormat("%s: before: %d HEALTHY, %d LOW_ENTROPY, %d SINK, %d DEAD", tag, c.healthy,
                      c.low_entropy, c.sink, c.dead));
  summary.before = before->counts;
  summary.ppl_before = *ppl_before;
  return before;
}

absl::StatusOr<std::optional<std::vector<HeadTarget>>> RepairRun::select_targets(
    int64_t k, const DiagnosisReport& before, const std::string& tag, PassSummary& summary) {
  const RepairOptions& options = options_;
  std::vector<HeadTarget> targets;
  absl::StatusOr<std::vector<HeadTarget>> selected = select_heads(before, options.selection);
  if (selected.ok()) {
    targets = std::move(*selected);
    summary.plan_note = absl::StrCat(
        options.selection.heads.empty() ? absl::StrCat("--select ", options.selection.select)
                                        : std::string("--heads"),
        ": ", targets.size(), " heads");
  } else if (selected.status().code() != absl::StatusCode::kNotFound) {
    return absl::Status(selected.status().code(),
                        absl::StrCat(tag, ": ", std::string(selected.status().message())));
  } else if (k == 1 && options.fallback_healthy) {
    int64_t column = 0;
    targets = healthy_column_targets(before, &column);
    summary.fallback_healthy = true;
    summary.plan_note = absl::StrCat(
        "nothing selected by --select ", options.selection.select,
        "; fallback: re-initialising the healthy head column ", column, " in layers ",
        input_config_->n_layer / 2, "-", input_config_->n_layer - 1,
        " (highest mean bos_mass over layers)");
  } else {
    result_.stop_reason = absl::StrCat(tag, ": nothing to repair (",
                                       std::string(selected.status().message()), ")");
    log(result_.stop_reason);
    return std::optional<std::vector<HeadTarget>>();
  }
  return std::optional<std::vector<HeadTarget>>(std::move(targets));
}

absl::StatusOr<TrainRunResult> RepairRun::train_with_surgery(const fs::path& dir,
                                                             const std::string& tag,
                                                             const SurgeryPlan& plan) {
  std::error_code ec;
  TrainRunOptions train = options_.train;
  train.model_dir = current_;
  train.out_dir = dir / kTrainDir;
  train.selection = surgery_selection(plan);
  train.resume = options_.resume && has_resumable_checkpoint(train.out_dir);
  if (!train.resume && fs::exists(train.out_dir, ec)) {
    // Left by a run interrupted before its first checkpoint: nothing in it can be resumed.
    fs::remove_all(train.out_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat(train.out_dir.string(), ": ", ec.message()));
  }
  train.log = [&](const std::string& line) { log(absl::StrCat(tag, ": ", line)); };
  TrainData train_data;
  train_data.train = data_.train;
  train_data.eval_chunks = data_.eval_chunks;
  absl::StatusOr<TrainRunResult> run = run_training(train, train_data, backend_);
  if (!run.ok()) {
    return absl::Status(run.status().code(),
                        absl::StrCat(tag, ": ", std::string(run.status().message())));
  }
  if (run->final_dir.empty()) {
    return absl::AbortedError(absl::StrCat(tag, ": training stopped before its last step"));
  }
  return run;
}

// The chosen checkpoint re-diagnosed and compared with the input: comparison.json, pass.json and
// report_after.json (written last: it marks the pass finished).
absl::StatusOr<DiagnosisReport> RepairRun::diagnose_after(const fs::path& dir,
                                                          const std::string& tag,
                                                          const DiagnosisReport& before,
                                                          const SurgeryPlan& plan,
                                                          const TrainRunResult& run,
                                                          PassSummary& summary) {
  std::error_code ec;
  summary.steps = run.steps;
  summary.chosen_checkpoint = fs::exists(dir / kTrainDir / "best", ec) ? "best" : "final";
  const fs::path chosen = dir / kTrainDir / summary.chosen_checkpoint;
  absl::StatusOr<BloomModel> repaired = load_on(chosen, backend_, options_.train.storage);
  if (!repaired.ok()) return repaired.status();
  absl::StatusOr<DiagnosisReport> after =
      diagnose_sequences(*repaired, backend_, data_.scan_sequences, diagnose_);
  if (!after.ok()) return after.status();
  if (summary.chosen_checkpoint == "best") {
    summary.ppl_after = run.best_ppl;
  } else {
    absl::StatusOr<std::optional<double>> p =
        held_out_perplexity(*repaired, backend_, data_, options_.train);
    if (!p.ok()) return p.status();
    summary.ppl_after = *p;
  }
  summary.after = after->counts;
  absl::StatusOr<ReportComparison> comparison =
      compare_reports(before, *after, &plan, options_.drift_threshold, kReportBefore,
                      kReportAfter, kPlanFile);
  if (!comparison.ok()) return comparison.status();
  summary.drift_outside = static_cast<int64_t>(comparison->drift_outside.size());
  summary.drift_inside = static_cast<int64_t>(comparison->drift_inside.size());
  summary.drift_below = static_cast<int64_t>(comparison->drift_below_lowest_target_layer.size());
  if (absl::Status s = write_json_file(dir / kComparisonFile, comparison_to_json(*comparison));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = write_json_file(dir / kPassFile, pass_summary_to_json(summary)); !s.ok()) {
    return s;
  }
  if (absl::Status s = write_json_file(dir / kReportAfter, report_to_json(*after)); !s.ok()) {
    return s;
  }
  const HeadCounts& a = after->counts;
  log(absl::StrFormat("%s: after (%s checkpoint): %d HEALTHY, %d LOW_ENTROPY, %d SINK, %d DEAD",
                      tag, summary.chosen_checkpoint, a.healthy, a.low_entropy, a.sink, a.dead));
  return after;
}

absl::StatusOr<std::optional<RepairPassView>> RepairRun::run_pass(int64_t k, const fs::path& dir,
                                                                  const std::string& tag) {
  PassSummary summary;
  summary.pass = k;
  absl::StatusOr<DiagnosisReport> before = diagnose_before(dir, tag, summary);
  if (!before.ok()) return before.status();
  absl::StatusOr<std::optional<std::vector<HeadTarget>>> targets =
      select_targets(k, *before, tag, summary);
  if (!targets.ok()) return targets.status();
  if (!targets->has_value()) return std::optional<RepairPassView>();
  log(absl::StrCat(tag, ": plan: ", summary.plan_note, " [", targets_text(**targets), "]"));
  SurgeryPlan plan;
  plan.targets = **targets;
  plan.qkv_weight = options_.qkv_init;
  plan.seed = options_.train.seed + static_cast<uint64_t>(k);
  plan.comment = absl::StrCat("engine repair ", tag, ": ", summary.plan_note);
  if (absl::Status s = write_json_file(dir / kPlanFile, plan_to_json(plan)); !s.ok()) return s;
  summary.targets = static_cast<int64_t>((*targets)->size());

  absl::StatusOr<TrainRunResult> run = train_with_surgery(dir, tag, plan);
  if (!run.ok()) return run.status();
  absl::StatusOr<DiagnosisReport> after = diagnose_after(dir, tag, *before, plan, *run, summary);
  if (!after.ok()) return after.status();
  RepairPassView view;
  view.summary = summary;
  view.before = std::move(*before);
  view.after = std::move(*after);
  view.plan = std::move(plan);
  return std::optional<RepairPassView>(std::move(view));
}

absl::StatusOr<bool> RepairRun::record_pass(RepairPassView view, const fs::path& dir,
                                            const std::string& tag) {
  absl::StatusOr<ReportComparison> comparison = compare_reports(
      view.before, view.after, &view.plan, options_.drift_threshold, kReportBefore, kReportAfter,
      kPlanFile);
  if (!comparison.ok()) return comparison.status();
  view.comparison = std::move(*comparison);
  absl::StatusOr<TrainingCurves> curves = read_curves(dir / kTrainDir / "metrics.jsonl");
  if (!curves.ok()) return curves.status();
  view.curves = std::move(*curves);
  current_ = dir / kTrainDir / view.summary.chosen_checkpoint;
  trained_any_ = true;
  result_.passes.push_back(view.summary);
  const bool nothing_collapsed = view.summary.after.collapsed() == 0;
  views_.push_back(std::move(view));
  if (nothing_collapsed) {
    result_.stop_reason = absl::StrCat(tag, ": no collapsed head left; stopping");
    log(result_.stop_reason);
  }
  return nothing_collapsed;
}

// The final model, repair.json and report.html.
absl::Status RepairRun::write_outputs() {
  const RepairOptions& options = options_;
  absl::StatusOr<BloomModel> final_model = load_model_directory(current_);
  if (!final_model.ok()) return final_model.status();
  result_.final_dir = options.out_dir / "final";
  if (absl::Status s = save_model_directory(*final_model, result_.final_dir); !s.ok()) return s;
  nlohmann::json passes = nlohmann::json::array();
  for (const PassSummary& p : result_.passes) passes.push_back(pass_summary_to_json(p));
  nlohmann::json summary = {{"model", options.model_dir.string()},
                                  {"data", options.data_description},
                                  {"version", options.version},
                                  {"commands", options.commands},
                                  {"passes", passes},
                                  {"trained", trained_any_},
                                  {"device", std::string(backend_.name())},
                                  {"stop_reason", result_.stop_reason},
                                  {"final", result_.final_dir.string()}};
  summary["dtype"] = absl::AsciiStrToLower(dtype_name(options.train.storage));
  if (!options.train.storage_reason.empty()) summary["dtype_reason"] = options.train.storage_reason;
  if (!options.subject.is_null()) summary["subject"] = options.subject;
  if (absl::Status s = write_json_file(options.out_dir / kSummaryFile, summary); !s.ok()) return s;
  RepairReportHeader header;
  header.model = options.model_dir.string();
  header.data = options.data_description;
  header.version = options.version;
  header.device = std::string(backend_.name());
  header.commands = options.commands;
  header.stop_reason = result_.stop_reason;
  header.subject_note = options.subject_note;
  header.drift_threshold = options.drift_threshold;
  result_.report_html = options.out_dir / kReportHtml;
  return write_string_atomically(result_.report_html, render_repair_html(header, views_));
}

absl::StatusOr<RepairResult> RepairRun::run() {
  if (absl::Status s = validate_inputs(); !s.ok()) return s;
  for (int64_t k = 1; k <= options_.passes; ++k) {
    const fs::path dir = options_.out_dir / absl::StrCat("pass_", k);
    const std::string tag = absl::StrCat("pass ", k);
    std::error_code ec;
    RepairPassView view;
    if (options_.resume && fs::exists(dir / kReportAfter, ec)) {
      // A finished pass: read it back.
      absl::StatusOr<RepairPassView> finished = read_finished_pass(dir, tag);
      if (!finished.ok()) return finished.status();
      view = std::move(*finished);
    } else {
      absl::StatusOr<std::optional<RepairPassView>> fresh = run_pass(k, dir, tag);
      if (!fresh.ok()) return fresh.status();
      if (!fresh->has_value()) break;  // nothing to repair
      view = std::move(**fresh);
    }
    absl::StatusOr<bool> stop = record_pass(std::move(view), dir, tag);
    if (!stop.ok()) return stop.status();
    if (*stop) break;
  }
  if (result_.stop_reason.empty()) {
    result_.stop_reason = absl::StrCat("ran all ", options_.passes, " passes");
  }
  if (absl::Status s = write_outputs(); !s.ok()) return s;
  return std::move(result_);
}

}  // namespace

absl::StatusOr<RepairResult> run_repair(const RepairOptions& options, const RepairData& data,
                                        Backend& backend) {
  RepairRun run(options, data, backend);
  return run.run();
}

}  // namespace engine
