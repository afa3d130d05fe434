// Helpers shared by the subcommands that run a model (eval, generate).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "model/model_directory.h"

namespace engine::cli {

// Loads DIR and refuses weights holding NaN or Inf (the error names the tensor).
absl::StatusOr<BloomModel> load_checked_model(const std::string& dir);
// Applies --threads (0 keeps OpenMP's default, all cores).
void apply_thread_flag();

}  // namespace engine::cli
