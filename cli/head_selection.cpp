// See cli/head_selection.h.
#include "cli/head_selection.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, select, "collapsed", "plan/repair: collapsed | sink | dead | all-in-band");
ABSL_FLAG(std::string, heads, "",
          "plan/repair: explicit targets LAYER:HEAD,... (overrides --select)");
ABSL_FLAG(std::string, layers, "", "plan/repair: keep only layers A-B");
ABSL_FLAG(std::string, head_indices, "", "plan/repair: keep only head indices A-B");
ABSL_FLAG(std::string, exclude, "", "plan/repair: drop these LAYER:HEAD,...");
ABSL_FLAG(std::string, init, "xavier_uniform",
          "plan/repair: QKV re-init: xavier_uniform | xavier_normal | keep");

namespace engine::cli {

absl::StatusOr<PlanSelection> selection_from_flags() {
  PlanSelection sel;
  sel.select = absl::GetFlag(FLAGS_select);
  if (!absl::GetFlag(FLAGS_heads).empty()) {
    absl::StatusOr<std::vector<HeadTarget>> h = parse_head_list(absl::GetFlag(FLAGS_heads), "heads");
    if (!h.ok()) return h.status();
    sel.heads = *h;
  }
  if (!absl::GetFlag(FLAGS_exclude).empty()) {
    absl::StatusOr<std::vector<HeadTarget>> h =
        parse_head_list(absl::GetFlag(FLAGS_exclude), "exclude");
    if (!h.ok()) return h.status();
    sel.exclude = *h;
  }
  if (!absl::GetFlag(FLAGS_layers).empty()) {
    absl::StatusOr<IndexRange> r = parse_index_range(absl::GetFlag(FLAGS_layers), "layers");
    if (!r.ok()) return r.status();
    sel.layers = *r;
  }
  if (!absl::GetFlag(FLAGS_head_indices).empty()) {
    absl::StatusOr<IndexRange> r =
        parse_index_range(absl::GetFlag(FLAGS_head_indices), "head_indices");
    if (!r.ok()) return r.status();
    sel.head_indices = *r;
  }
  return sel;
}

}  // namespace engine::cli
