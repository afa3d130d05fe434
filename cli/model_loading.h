// Helpers shared by the subcommands that run a model (eval, generate, diagnose).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"
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

// The backend --device names for `command` (cli/device_choice.cpp). `runs_on_cuda`: whether the
// command runs on a CUDA device yet; when it does not, auto means cpu and an explicit cuda is a
// one-line error saying so. Other errors are make_backend's, prefixed with the command.
absl::StatusOr<std::unique_ptr<Backend>> command_backend(const std::string& command,
                                                         bool runs_on_cuda);
// The backend for `command` with `model`'s weights resident on it (model/device_model.h) in
// the storage --dtype names (auto: bf16 on cuda, f32 on the cpu). A model of another family than
// BLOOM runs on the cpu: auto picks it and an explicit cuda is a one-line error naming the family.
absl::StatusOr<std::unique_ptr<Backend>> command_backend_for(const std::string& command,
                                                             BloomModel& model);

}  // namespace engine::cli
