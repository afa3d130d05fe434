// Helpers shared by the subcommands that run a model (eval, generate, diagnose).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/dtype.h"
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
// The backend of a training command (train, repair, pretrain): --device as command_backend
// (auto: a real visible CUDA device, else the cpu; never the emulated device), except that
// auto means cpu when `auto_may_pick_cuda` is false (several ranks: the device data-parallel
// path has not run on hardware yet). --dtype is read by weight_storage / training_storage.
absl::StatusOr<std::unique_ptr<Backend>> training_backend(const std::string& command,
                                                          bool auto_may_pick_cuda = true);

// The weights' storage --dtype names and why (the reason the metrics and the start line state).
struct WeightStorage {
  DType dtype = DType::kF32;
  std::string reason;  // e.g. "auto: cuda, head_dim 64", "--dtype bf16"
};
// The one --dtype rule of every command that runs a model (eval, diagnose, generate, train,
// repair, pretrain), model/device_model.h's choose_storage (the public API's too): auto is bf16
// on a CUDA device (`cuda`) whose tensor-core attention takes `head_dim` (64, 80, 96 and 128:
// every released BLOOM), else f32 (on the cpu always: its arithmetic is the fp32 reference);
// f32, bf16 and f16 are taken as given. Another value is a one-line error naming it.
absl::StatusOr<WeightStorage> weight_storage(const std::string& command, bool cuda,
                                             int64_t head_dim);
// weight_storage for a training command on `backend`; an explicit 16-bit --dtype on a CUDA
// device whose tensor-core attention does not take `head_dim` is a one-line error naming it.
absl::StatusOr<WeightStorage> training_storage(const std::string& command, const Backend& backend,
                                               int64_t head_dim);
// The backend for `command` with `model`'s weights resident on it (model/device_model.h) in
// the storage --dtype names (auto: bf16 on cuda, f32 on the cpu). A model of another family than
// BLOOM runs on the cpu: auto picks it and an explicit cuda is a one-line error naming the family.
absl::StatusOr<std::unique_ptr<Backend>> command_backend_for(const std::string& command,
                                                             BloomModel& model);

}  // namespace engine::cli
