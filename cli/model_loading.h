// Helpers shared by the subcommands that run a model (eval, generate, diagnose).
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "model/model_directory.h"
#include "model/tokenizer.h"

namespace engine::cli {

// Loads DIR and refuses weights holding NaN or Inf (the error names the tensor).
absl::StatusOr<BloomModel> load_checked_model(const std::string& dir);
// The tokenizer from --tokenizer, else DIR/tokenizer.json when present; none is fine for inputs
// that already hold ids.
absl::StatusOr<std::optional<Tokenizer>> optional_tokenizer(const std::string& model_dir);
// Applies --threads (0 keeps OpenMP's default, all cores).
void apply_thread_flag();

}  // namespace engine::cli
