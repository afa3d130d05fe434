// OUT/report.html of `engine repair`: one self-contained page (inline CSS and SVG, no script, no
// external resource) with a sentence per pass on top (pass_sentence), how the model was made
// (RepairReportHeader::subject_note), the commands and version used, a counts table per pass
// (HEALTHY / LOW_ENTROPY / SINK / DEAD before and after, held-out perplexity, drift of frozen
// heads), and per pass the plan, the head grids before and after side by side (render_svg), the delta
// heatmap (render_delta_svg) and the loss curves from metrics.jsonl.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "surgery/diagnosis.h"
#include "surgery/plan.h"
#include "surgery/report_compare.h"

namespace engine {

// What one pass did (OUT/pass_k/pass.json).
struct PassSummary {
  int64_t pass = 0;
  HeadCounts before, after;
  int64_t targets = 0;
  bool fallback_healthy = false;  // the plan is the healthy-column fallback
  std::string plan_note;          // how the targets were chosen, in words
  std::optional<double> ppl_before, ppl_after;
  int64_t steps = 0;
  std::string chosen_checkpoint;  // "best" or "final"
  int64_t drift_outside = 0, drift_inside = 0, drift_below = 0;
};

struct TrainingCurves {
  std::vector<std::pair<int64_t, double>> loss;      // (step, training loss), by step
  std::vector<std::pair<int64_t, double>> eval_nll;  // (step, held-out mean NLL), by step
};

// Everything the page shows about one pass.
struct RepairPassView {
  PassSummary summary;
  DiagnosisReport before, after;
  SurgeryPlan plan;
  ReportComparison comparison;
  TrainingCurves curves;
};

struct RepairReportHeader {
  std::string model, data, version, stop_reason;
  std::string device;  // where it computed (the backend's name); empty: not shown
  // How the model was made, when known (e.g. its collapse was induced by `engine pretrain
  // --collapse`); shown at the top of the page. Empty: nothing is said.
  std::string subject_note;
  std::vector<std::string> commands;
  double drift_threshold = 0.05;
};

// The loss curve as an inline SVG: the per-step training loss (faint) and its bias-corrected
// EMA on the left scale, the held-out NLL as points on a right scale of its own, and a legend.
std::string render_loss_svg(const TrainingCurves& curves);

// One sentence per pass for the top of the page, e.g. "Pass 1: 5 collapsed heads found in layers
// 2-3; 0 left after pass 1; held-out perplexity 9.410 -> 9.020."
std::string pass_sentence(const RepairPassView& pass);

std::string render_repair_html(const RepairReportHeader& header,
                               const std::vector<RepairPassView>& passes);

}  // namespace engine
