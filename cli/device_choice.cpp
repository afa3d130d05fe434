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
                                                          bool auto_may_pick_cuda) {
  if (!auto_may_pick_cuda && absl::GetFlag(FLAGS_device) == "auto") {
    return command_backend(command, false);  // auto means cpu there
  }
  return command_backend(command, true);
}

absl::StatusOr<WeightStorage> weight_storage(const std::string& command, bool cuda,
                                             int64_t head_dim) {
  const std::string name = absl::GetFlag(FLAGS_dtype);
  absl::StatusOr<StorageChoice> c = choose_storage(name, cuda, head_dim);  // the one rule
  if (!c.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(command, ": --dtype ", c.status().message()));
  }
  WeightStorage w;
  w.dtype = c->dtype;
  w.reason = name == "auto" ? c->reason : absl::StrCat("--dtype ", name);
  return w;
}

absl::StatusOr<WeightStorage> training_storage(const std::string& command, const Backend& backend,
                                               int64_t head_dim) {
  const bool cuda = backend.kind() == DeviceKind::kCuda;
  absl::StatusOr<WeightStorage> w = weight_storage(command, cuda, head_dim);
  if (!w.ok()) return w;
  if (w->dtype != DType::kF32 && cuda && !cuda_16bit_attention_supports(head_dim)) {
    return absl::InvalidArgumentError(absl::StrCat(
        command, ": --dtype ", absl::GetFlag(FLAGS_dtype),
        ": the CUDA 16-bit attention takes head_dim 64, 80, 96 or 128, this model has ", head_dim,
        "; use --dtype f32"));
  }
  return w;
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
  absl::StatusOr<WeightStorage> storage =
      weight_storage(command, (*backend)->kind() == DeviceKind::kCuda, model.config.head_dim());
  if (!storage.ok()) return storage.status();
  if (absl::Status s = make_resident(model, **backend, storage->dtype); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(command, ": ", s.message()));
  }
  return backend;
}

}  // namespace engine::cli
