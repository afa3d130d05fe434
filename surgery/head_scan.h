// The head scan of a training run (METHOD.md section 2, default thresholds) compared with the
// scan of the base model before surgery (section 5): class counts, how many targets are no longer
// collapsed, and the frozen heads that drifted (surgery/drift.h), split into those in layers that
// hold a target ("inside" the surgical zone) and all others ("outside").
// `head_scan_for_training` wraps it as the TrainingScan a training run takes (model/trainer.h).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "model/bloom_forward.h"
#include "model/head_geometry.h"
#include "model/trainer.h"
#include "nlohmann/json.hpp"
#include "surgery/drift.h"

namespace engine {

struct HeadScan {
  static constexpr double kDriftThreshold = kDefaultDriftThreshold;
  std::vector<double> bos_mass;  // (L, H) means over the scan sequences
  nlohmann::json summary;        // the metrics fields
};

// The same scan as `engine diagnose` (surgery/corpus_scan.h) over `chunks`; `before_surgery`
// null: no drift fields.
absl::StatusOr<HeadScan> scan_heads(const BloomModel& model, Backend& backend,
                                    const std::vector<std::vector<int32_t>>& chunks,
                                    const std::vector<HeadTarget>& targets,
                                    const HeadScan* before_surgery);

// The scans of a run over `chunks`: the base model's (no targets, no drift), then each later one
// against it with `targets`, with its progress line.
std::shared_ptr<TrainingScan> head_scan_for_training(std::vector<std::vector<int32_t>> chunks,
                                                     std::vector<HeadTarget> targets);

}  // namespace engine
