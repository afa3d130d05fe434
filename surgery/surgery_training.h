// Training with a surgery plan: surgery/'s side of the plan-free training run (model/trainer.h)
// and memory plan (model/memory_estimate.h). The run itself knows no plan; this builds what it
// takes from one:
// - the TrainSelection: the plan is validated against the base model's shape before any work
//   (errors name "surgery plan" and the field), the surgery (surgery/head_surgery.h) is applied to
//   the base weights, giving the frozen mask, and the plan's JSON is recorded in the trainer state
//   (a resume must agree on it) and written as plan.json into every checkpoint;
// - the head scans (surgery/head_scan.h) over `scan_chunks` with the plan's targets;
// - for the memory plan, the trainable heads (targets and slices), the plan validated first.
// With no plan every parameter trains, and nothing is recorded, as with the plain run.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "model/config.h"
#include "model/memory_estimate.h"
#include "model/trainer.h"
#include "surgery/plan.h"

namespace engine {

// The run's options plus the plan and the scan sequences; `selection` and `scan` of the base are
// replaced by what these give.
struct SurgeryTrainOptions : TrainRunOptions {
  std::optional<SurgeryPlan> plan;  // --surgery; none = every parameter trainable
  std::vector<std::vector<int32_t>> scan_chunks;  // sequences of the head scan; empty = no scan
};

// The plan as a training run takes it.
TrainSelection surgery_selection(const SurgeryPlan& plan);

// run_training (model/trainer.h) with the plan's selection and the head scans.
absl::StatusOr<TrainRunResult> run_surgery_training(const SurgeryTrainOptions& options,
                                                    const TrainData& data, Backend& backend);

// plan_training_memory (model/memory_estimate.h) for a plan; `plan` null: every parameter trains.
// Errors name a plan target outside the model (as validate_plan, source "plan").
absl::StatusOr<TrainingMemoryPlan> plan_surgery_training_memory(const BloomConfig& config,
                                                                const SurgeryPlan* plan,
                                                                const TrainingMemoryShape& shape);

}  // namespace engine
