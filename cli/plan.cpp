// `engine plan --report report.json --out plan.json [selection]`: a diagnosis report becomes a
// surgery plan (surgery/plan_select.h has the selection rules).
#include <fstream>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/head_selection.h"
#include "engine/io.h"
#include "surgery/plan_select.h"

ABSL_FLAG(std::string, report, "", "plan: diagnosis report (report.json)");
ABSL_FLAG(std::string, comment, "", "plan: free-text comment stored in the plan");

namespace engine::cli {

int run_plan(const std::vector<std::string>& args) {
  const std::string report_path = absl::GetFlag(FLAGS_report);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (report_path.empty() || out.empty()) {
    std::cerr << "usage: engine plan --report report.json --out plan.json [--select collapsed|sink|"
                 "dead|all-in-band] [--heads L:H,...] [--layers A-B] [--head_indices A-B] "
                 "[--exclude L:H,...] [--init xavier_uniform|xavier_normal|keep] [--seed S]\n";
    return 2;
  }
  auto report = load_report(report_path);
  if (!report.ok()) return fail(std::string(report.status().message()));

  absl::StatusOr<PlanSelection> selection = selection_from_flags();
  if (!selection.ok()) return fail(std::string(selection.status().message()));
  const PlanSelection& sel = *selection;
  auto targets = select_heads(*report, sel);
  if (!targets.ok()) return fail(absl::StrCat(report_path, ": ", targets.status().message()));

  SurgeryPlan plan;
  plan.targets = *targets;
  auto init = qkv_weight_init_from_name(absl::GetFlag(FLAGS_init));
  if (!init.ok()) return fail(std::string(init.status().message()));
  plan.qkv_weight = *init;
  plan.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  plan.comment = absl::GetFlag(FLAGS_comment);
  if (plan.comment.empty()) {
    plan.comment = absl::StrCat("from ", report_path, " (select ", sel.heads.empty() ? sel.select : "heads", ")");
  }
  const std::string text = plan_to_json(plan).dump(2) + "\n";
  if (auto s = write_string_atomically(out, text); !s.ok()) return fail(std::string(s.message()));
  std::cout << "plan: " << plan.targets.size() << " target heads written to " << out << "\n";
  return 0;
}

}  // namespace engine::cli
