// libFuzzer target: report.json bytes -> report_from_json must never crash (nor throw), and every
// report it accepts must hold a full n_layer x n_head grid in (layer, head) order, so that the
// renderers and head selection, which index it by (layer, head), stay in bounds.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "nlohmann/json.hpp"
#include "surgery/diagnosis.h"
#include "surgery/plan_select.h"

namespace {
// Renderers draw one cell per head; larger (still valid) grids only cost time, not coverage.
constexpr int64_t kMaxRenderedHeads = 4096;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr,
                                                 /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  absl::StatusOr<engine::DiagnosisReport> r = engine::report_from_json(j, "report.json");
  if (!r.ok()) {
    if (r.status().message().empty()) std::abort();
    return 0;
  }
  if (r->n_layer <= 0 || r->n_head <= 0) std::abort();
  if (static_cast<int64_t>(r->heads.size()) != r->n_layer * r->n_head) std::abort();
  for (int64_t l = 0; l < r->n_layer; ++l) {
    for (int64_t h = 0; h < r->n_head; ++h) {
      if (r->at(l, h).layer != l || r->at(l, h).head != h) std::abort();
    }
  }
  absl::StatusOr<engine::DiagnosisReport> again =
      engine::report_from_json(engine::report_to_json(*r), "written report.json");
  if (!again.ok() || again->heads.size() != r->heads.size()) std::abort();
  if (static_cast<int64_t>(r->heads.size()) <= kMaxRenderedHeads) {
    engine::render_grid(*r);
    engine::render_csv(*r);
    engine::render_svg(*r);
    engine::render_html(*r);
  }
  for (const char* select : {"collapsed", "sink", "dead", "all-in-band"}) {
    engine::PlanSelection selection;
    selection.select = select;
    absl::StatusOr<std::vector<engine::HeadTarget>> targets = engine::select_heads(*r, selection);
    if (!targets.ok()) continue;
    for (const engine::HeadTarget& t : *targets) {
      if (t.layer < 0 || t.layer >= r->n_layer || t.head < 0 || t.head >= r->n_head) std::abort();
    }
  }
  return 0;
}
