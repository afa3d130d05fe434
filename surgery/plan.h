// SurgeryPlan: which heads to operate on and how (plan.json, version 1; docs/FORMATS.md).
// Contract: parsing is strict (unknown keys, wrong types, duplicates and empty target lists are
// errors naming the field and value); omitted fields take the published method's defaults;
// `plan_to_json` writes exactly the documented form, so parse(write(p)) == p.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/head_geometry.h"
#include "nlohmann/json.hpp"

namespace engine {

enum class QkvWeightInit { kXavierUniform, kXavierNormal, kKeep };
enum class QkvBiasInit { kZero, kKeep };
enum class DenseColumnsInit { kZero, kKeep };

struct SurgeryPlan {
  static constexpr int kVersion = 1;
  std::vector<HeadTarget> targets;
  QkvWeightInit qkv_weight = QkvWeightInit::kXavierUniform;
  QkvBiasInit qkv_bias = QkvBiasInit::kZero;
  DenseColumnsInit dense_columns = DenseColumnsInit::kZero;
  TrainableSlices trainable;
  uint64_t seed = 0;
  std::string comment;
  bool operator==(const SurgeryPlan&) const = default;
};

// `source` names the file (or "<string>") in error messages.
absl::StatusOr<SurgeryPlan> parse_plan(const nlohmann::json& j, const std::string& source);
absl::StatusOr<SurgeryPlan> parse_plan_text(const std::string& text, const std::string& source);
absl::StatusOr<SurgeryPlan> load_plan(const std::string& path);
nlohmann::json plan_to_json(const SurgeryPlan& plan);

// "xavier_uniform" | "xavier_normal" | "keep", as plan.json spells reinit.qkv_weight.
absl::StatusOr<QkvWeightInit> qkv_weight_init_from_name(const std::string& name);

// Every target inside the model: layer < n_layer, head < n_head.
absl::Status validate_plan(const SurgeryPlan& plan, const HeadGeometry& geometry,
                           const std::string& source);

}  // namespace engine
