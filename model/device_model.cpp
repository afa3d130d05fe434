// A model's weights in a backend's memory; contract in device_model.h.
#include "model/device_model.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"

namespace engine {

absl::Status make_resident(BloomModel& model, Backend& backend) {
  if (backend.kind() == DeviceKind::kCpu) return absl::OkStatus();
  if (!model.arena.allocated()) {
    return absl::FailedPreconditionError("make_resident: the model's arena is not allocated");
  }
  auto weights = std::make_shared<DeviceWeights>();
  weights->backend = &backend;
  weights->dtype = model.arena.dtype();
  const size_t bytes = model.arena.size_bytes();
  if (absl::Status s = weights->arena.resize(backend, static_cast<int64_t>(bytes)); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("loading the weights (", bytes, " bytes) onto ",
                                               std::string(backend.name()), ": ", s.message()));
  }
  if (absl::Status s = backend.copy_to_device(weights->arena.data(), model.arena.base(), bytes);
      !s.ok()) {
    return s;
  }
  model.device = std::move(weights);
  return absl::OkStatus();
}

absl::StatusOr<const std::byte*> arena_on(const BloomModel& model, const Backend& backend) {
  if (backend.kind() == DeviceKind::kCpu) return model.arena.base();
  if (model.device == nullptr || model.device->backend != &backend) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the model's weights are not resident on ", std::string(backend.name()), " (make_resident first)"));
  }
  return model.device->arena.data();
}

}  // namespace engine
