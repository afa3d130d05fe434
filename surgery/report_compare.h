// Comparing two diagnosis reports of the same model shape (before and after surgery, or two
// checkpoints): per-head deltas, heads whose class changed, and drift (METHOD.md section 5).
// Contract:
// - Both reports must cover the same layer x head grid; a plan, when given, must fit it. The
//   error names the report or plan and the mismatch.
// - delta = after - before for bos_mass, entropy and local_mass (the reported means). Each
//   report's classes are the ones its own thresholds give; `thresholds_match` says whether the
//   two reports used the same thresholds (a class change is only meaningful when they do).
// - A head drifts when |delta bos_mass| > drift_threshold (0.05 by default; surgery/drift.h).
//   With a plan, drifting heads are split into the plan's targets (re-initialised, so movement
//   is expected) and the others (frozen heads that moved: the side effect to watch); the frozen
//   drifters in layers below the lowest target layer are listed again, since nothing upstream of
//   them changed and any drift there points at a bug or at reports of different models. Without
//   a plan every drifting head is "outside".
// - Lists are in (layer, head) order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "surgery/diagnosis.h"
#include "surgery/drift.h"
#include "surgery/plan.h"

namespace engine {

struct HeadComparison {
  int64_t layer = 0, head = 0;
  bool target = false;  // in the plan's targets
  double bos_before = 0, bos_after = 0;
  double entropy_before = 0, entropy_after = 0;
  double local_before = 0, local_after = 0;
  HeadClass class_before = HeadClass::kHealthy, class_after = HeadClass::kHealthy;
  bool drifted = false;  // |bos_after - bos_before| > drift_threshold

  double delta_bos() const { return bos_after - bos_before; }
  double delta_entropy() const { return entropy_after - entropy_before; }
  double delta_local() const { return local_after - local_before; }
  bool class_changed() const { return class_before != class_after; }
};

struct ReportComparison {
  static constexpr double kDefaultDriftThreshold = engine::kDefaultDriftThreshold;
  int64_t n_layer = 0, n_head = 0;
  double drift_threshold = kDefaultDriftThreshold;
  bool thresholds_match = true;
  bool has_plan = false;
  int64_t plan_targets = 0;
  int64_t lowest_target_layer = -1;  // -1 without a plan
  HeadCounts before, after;
  std::vector<HeadComparison> heads;  // (L, H) row-major
  std::vector<HeadTarget> class_changes;
  std::vector<HeadTarget> drift_inside;   // drifting plan targets
  std::vector<HeadTarget> drift_outside;  // drifting heads that are not targets
  std::vector<HeadTarget> drift_below_lowest_target_layer;  // subset of drift_outside

  const HeadComparison& at(int64_t layer, int64_t head) const { return heads[layer * n_head + head]; }
};

// `plan` may be null. `before_name` / `after_name` / `plan_name` label errors.
absl::StatusOr<ReportComparison> compare_reports(
    const DiagnosisReport& before, const DiagnosisReport& after, const SurgeryPlan* plan,
    double drift_threshold = ReportComparison::kDefaultDriftThreshold,
    const std::string& before_name = "before", const std::string& after_name = "after",
    const std::string& plan_name = "plan");

// The comparison as JSON (docs/FORMATS.md, "Report comparison").
nlohmann::json comparison_to_json(const ReportComparison& c);

// Human renderings: a text summary (counts before/after, class changes, drift), one CSV row per
// head, a layer x head heatmap of delta bos_mass (SVG), and a self-contained page with the
// heatmap and the tables (HTML).
std::string render_comparison_text(const ReportComparison& c);
std::string render_comparison_csv(const ReportComparison& c);
std::string render_delta_svg(const ReportComparison& c);
std::string render_comparison_html(const ReportComparison& c);

}  // namespace engine
