// The repair pipeline (`engine repair`, METHOD.md sections 2-5, docs/REPAIR.md): per pass k,
// diagnose the current model on held-out scan sequences -> select targets -> train with surgery
// (fresh optimizer and schedule) -> keep the checkpoint with the best held-out perplexity ->
// re-diagnose it. Stops early when nothing is collapsed.
// Contract:
// - Layout: OUT/pass_k/{report_before.json, plan.json, train/ (run_training's directory:
//   metrics.jsonl, step_N/, best/, final/), report_after.json, comparison.json, pass.json},
//   OUT/final/ (Hugging Face model directory of the last chosen checkpoint, or of the input model
//   when no pass trained), OUT/repair.json (summary) and OUT/report.html (self-contained: no
//   external resource). report_after.json is written last in a pass and marks it finished.
// - Pass k > 1 starts from pass k-1's chosen checkpoint. A pass whose report_before shows nothing
//   to select ends the pipeline there (no training) unless it is pass 1 and `fallback_healthy` is
//   set: then the plan re-initialises one healthy head column (the head index with the highest
//   mean bos_mass over all layers, in the upper half of the layers), the published "healthy heads
//   too" experiment, and the summary says so. After a pass whose report_after has no collapsed
//   head, no further pass runs.
// - Frozen parameters (everything outside the plans' targets) of OUT/final/ are bit-identical to
//   the input model's: run_training's masked optimizer never writes them.
// - `resume`: a pass with report_after.json is skipped (its pass.json is read back); a pass with
//   a complete training checkpoint resumes training (run_training's resume). Without `resume`, an
//   OUT that holds a previous repair is refused before any work.
// - Errors are one line naming the pass, file or option at fault.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "model/trainer.h"
#include "nlohmann/json.hpp"
#include "surgery/corpus_scan.h"
#include "surgery/diagnosis.h"
#include "surgery/plan.h"
#include "surgery/plan_select.h"
#include "surgery/repair_report.h"

namespace engine {

struct RepairOptions {
  std::filesystem::path model_dir;  // --model
  std::filesystem::path out_dir;    // --out
  int64_t passes = 2;
  PlanSelection selection;          // --select / --heads / --layers / ... as in `engine plan`
  QkvWeightInit qkv_init = QkvWeightInit::kXavierUniform;
  bool fallback_healthy = false;
  Thresholds thresholds;
  double drift_threshold = 0.05;
  int64_t scan_batch = 4;
  // Per-pass training; model_dir, out_dir, selection (the pass's plan), resume and log are set
  // by the pipeline.
  TrainRunOptions train;
  bool resume = false;
  // Recorded in the report.
  std::vector<std::string> commands;  // e.g. the pretrain and the repair command lines
  std::string version;
  std::string data_description;
  // How the model was made, when known: written to repair.json as "subject" (e.g. the
  // "collapse" record of pretrain.json when the collapse was induced) and, as `subject_note`, at
  // the top of report.html. Null / empty: nothing is said.
  nlohmann::json subject;
  std::string subject_note;
  std::function<void(const std::string&)> log;
};

struct RepairData {
  const ChunkedDataset* train = nullptr;          // training chunks (seeded order)
  std::vector<std::vector<int32_t>> eval_chunks;  // held-out perplexity and checkpoint choice
  std::vector<TokenSequence> scan_sequences;      // held-out diagnosis sequences
};

struct RepairResult {
  std::vector<PassSummary> passes;  // passes that trained
  std::string stop_reason;
  std::filesystem::path final_dir, report_html;
};

absl::StatusOr<RepairResult> run_repair(const RepairOptions& options, const RepairData& data,
                                        Backend& backend);

// The fallback plan's head index: the one with the highest mean bos_mass over all layers (ties:
// the lowest index); its targets are that head in layers [n_layer / 2, n_layer).
std::vector<HeadTarget> healthy_column_targets(const DiagnosisReport& report, int64_t* head_index);

nlohmann::json pass_summary_to_json(const PassSummary& p);
absl::StatusOr<PassSummary> pass_summary_from_json(const nlohmann::json& j,
                                                   const std::string& source);

}  // namespace engine
