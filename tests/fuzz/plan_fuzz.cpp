// libFuzzer target: plan.json bytes -> parse_plan_text must never crash, and every plan it accepts
// must have targets and round-trip exactly through plan_to_json (the contract in surgery/plan.h).
// validate_plan against a small geometry must also be total.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "surgery/plan.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<engine::SurgeryPlan> plan = engine::parse_plan_text(text, "plan.json");
  if (!plan.ok()) {
    if (plan.status().message().empty()) std::abort();
    return 0;
  }
  if (plan->targets.empty()) std::abort();
  absl::StatusOr<engine::SurgeryPlan> again =
      engine::parse_plan(engine::plan_to_json(*plan), "written plan.json");
  if (!again.ok() || !(*again == *plan)) std::abort();
  const engine::HeadGeometry geometry{/*n_layer=*/4, /*n_head=*/8, /*head_dim=*/16};
  const absl::Status valid = engine::validate_plan(*plan, geometry, "plan.json");
  for (const engine::HeadTarget& t : plan->targets) {
    const bool inside = t.layer >= 0 && t.layer < geometry.n_layer && t.head >= 0 &&
                        t.head < geometry.n_head;
    if (!inside && valid.ok()) std::abort();
  }
  return 0;
}
