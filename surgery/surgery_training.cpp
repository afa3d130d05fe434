// Training with a surgery plan; contract in surgery/surgery_training.h.
#include "surgery/surgery_training.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "surgery/head_scan.h"
#include "surgery/head_surgery.h"

namespace engine {

TrainSelection surgery_selection(const SurgeryPlan& plan) {
  TrainSelection s;
  s.validate = [plan](const HeadGeometry& geometry) {
    return validate_plan(plan, geometry, "surgery plan");
  };
  s.prepare = [plan](ParameterArena& arena,
                     const HeadGeometry& geometry) -> absl::StatusOr<FrozenMask> {
    absl::StatusOr<FrozenMask> m = apply_surgery(arena, geometry, plan);
    if (!m.ok()) {
      return absl::Status(m.status().code(),
                          absl::StrCat("surgery plan: ", std::string(m.status().message())));
    }
    return m;
  };
  s.record = plan_to_json(plan);
  return s;
}

absl::StatusOr<TrainRunResult> run_surgery_training(const SurgeryTrainOptions& options,
                                                    const TrainData& data, Backend& backend) {
  TrainRunOptions run = options;
  run.selection = options.plan.has_value() ? surgery_selection(*options.plan) : TrainSelection{};
  run.scan = options.scan_chunks.empty()
                 ? nullptr
                 : head_scan_for_training(
                       options.scan_chunks,
                       options.plan.has_value() ? options.plan->targets : std::vector<HeadTarget>{});
  return run_training(run, data, backend);
}

absl::StatusOr<TrainingMemoryPlan> plan_surgery_training_memory(const BloomConfig& config,
                                                                const SurgeryPlan* plan,
                                                                const TrainingMemoryShape& shape) {
  // The shape's errors come before the plan's.
  absl::StatusOr<TrainingMemoryPlan> full = plan_training_memory(config, nullptr, shape);
  if (!full.ok() || plan == nullptr) return full;
  if (absl::Status st = validate_plan(
          *plan, HeadGeometry::of(config), "plan");
      !st.ok()) {
    return st;
  }
  const TrainableHeads heads{plan->targets, plan->trainable};
  return plan_training_memory(config, &heads, shape);
}

}  // namespace engine
