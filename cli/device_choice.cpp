// --device for the subcommands; contract in model_loading.h.
#include <memory>
#include <optional>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/flags.h"
#include "cli/model_loading.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "model/device_model.h"

namespace engine::cli {

absl::StatusOr<std::unique_ptr<Backend>> command_backend(const std::string& command,
                                                         bool runs_on_cuda) {
  std::string device = absl::GetFlag(FLAGS_device);
  if (!runs_on_cuda) {
    if (device == "auto") device = "cpu";
    if (device.rfind("cuda", 0) == 0) {
      return absl::UnimplementedError(absl::StrCat(
          command, ": --device ", device,
          ": this command does not run on a CUDA device yet; use --device cpu"));
    }
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend = make_backend(device);
  if (!backend.ok()) {
    return absl::Status(backend.status().code(),
                        absl::StrCat(command, ": ", backend.status().message()));
  }
  return backend;
}

absl::StatusOr<std::unique_ptr<Backend>> training_backend(const std::string& command,
                                                          bool auto_may_pick_cuda,
                                                          bool trains_16bit) {
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (!trains_16bit && dtype != "auto" && dtype != "f32") {
    if (!float_dtype_from_flag(dtype).has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(command, ": --dtype '", dtype, "' is not auto, f32, bf16 or f16"));
    }
    return absl::UnimplementedError(absl::StrCat(
        command, ": --dtype ", dtype,
        ": this command trains f32 weights (16-bit training: engine train --dtype); use --dtype f32"));
  }
  if (!auto_may_pick_cuda && absl::GetFlag(FLAGS_device) == "auto") {
    return command_backend(command, false);  // auto means cpu there
  }
  return command_backend(command, true);
}

absl::StatusOr<std::unique_ptr<Backend>> command_backend_for(const std::string& command,
                                                             BloomModel& model) {
  // Families other than BLOOM run on the CPU only (model/bloom_forward.h): auto picks it, and an
  // explicit CUDA device is refused naming the family.
  const bool bloom = model.config.family == ModelFamily::kBloom;
  if (const std::string device = absl::GetFlag(FLAGS_device);
      !bloom && device.rfind("cuda", 0) == 0) {
    return absl::UnimplementedError(absl::StrCat(command, ": --device ", device, ": the ",
                                                 family_name(model.config.family),
                                                 " family runs on the CPU only; use --device cpu"));
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend = command_backend(command, bloom);
  if (!backend.ok()) return backend;
  const std::string name = absl::GetFlag(FLAGS_dtype);
  // auto: bf16 on a CUDA device whose tensor-core attention takes the model's head dim (64, 80,
  // 96 and 128: every released BLOOM), else f32.
  DType storage = (*backend)->kind() == DeviceKind::kCuda &&
                          cuda_16bit_attention_supports(model.config.head_dim())
                      ? DType::kBF16
                      : DType::kF32;
  if (name != "auto") {
    const std::optional<DType> chosen = float_dtype_from_flag(name);
    if (!chosen.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(command, ": --dtype '", name, "' is not auto, f32, bf16 or f16"));
    }
    storage = *chosen;
  }
  if (absl::Status s = make_resident(model, **backend, storage); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(command, ": ", s.message()));
  }
  return backend;
}

}  // namespace engine::cli
