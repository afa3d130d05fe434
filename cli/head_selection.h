// The head-selection flags shared by `engine plan` and `engine repair` (--select, --heads,
// --layers, --head_indices, --exclude, --init), defined and turned into a PlanSelection here only.
#pragma once

#include <string>

#include "absl/flags/declare.h"
#include "absl/status/statusor.h"
#include "surgery/plan_select.h"

ABSL_DECLARE_FLAG(std::string, select);
ABSL_DECLARE_FLAG(std::string, heads);
ABSL_DECLARE_FLAG(std::string, layers);
ABSL_DECLARE_FLAG(std::string, head_indices);
ABSL_DECLARE_FLAG(std::string, exclude);
ABSL_DECLARE_FLAG(std::string, init);

namespace engine::cli {

// The selection the flags describe; an error names the flag as --help spells it.
absl::StatusOr<PlanSelection> selection_from_flags();

}  // namespace engine::cli
