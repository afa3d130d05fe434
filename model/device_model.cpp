// A model's weights in a backend's memory; contract in device_model.h.
#include "model/device_model.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/device.h"

namespace engine {
namespace {

bool resident_on(const BloomModel& model, const Backend& backend) {
  return model.device != nullptr && model.device->backend == &backend;
}

}  // namespace

absl::Status make_resident(BloomModel& model, Backend& backend, DType storage) {
  if (storage != DType::kF32 && storage != DType::kBF16 && storage != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("weights cannot be stored as ",
                                                   dtype_name(storage), ": use f32, bf16 or f16"));
  }
  if (!model.arena.allocated() || model.arena.dtype() != DType::kF32) {
    return absl::FailedPreconditionError("make_resident: the model's arena is not an f32 arena");
  }
  if (backend.kind() == DeviceKind::kCpu && storage == DType::kF32) {
    model.device.reset();  // the CPU reads the host arena itself
    return absl::OkStatus();
  }
  auto weights = std::make_shared<DeviceWeights>();
  weights->backend = &backend;
  weights->storage = storage;
  const size_t elements = static_cast<size_t>(model.arena.size_elements());
  const size_t bytes = elements * dtype_size(storage);
  if (absl::Status s = weights->arena.resize(backend, static_cast<int64_t>(bytes)); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("loading the weights (", bytes, " bytes) onto ",
                                               std::string(backend.name()), ": ", s.message()));
  }
  const auto* host = reinterpret_cast<const float*>(model.arena.base());
  if (storage == DType::kF32) {
    if (absl::Status s = backend.copy_to_device(weights->arena.data(), host, bytes); !s.ok()) {
      return s;
    }
  } else {
    // Converted on the host in slices, so the staging buffer stays small next to the arena.
    constexpr size_t kSlice = size_t{1} << 22;
    std::vector<std::byte> staging(std::min(elements, kSlice) * dtype_size(storage));
    for (size_t first = 0; first < elements; first += kSlice) {
      const size_t n = std::min(kSlice, elements - first);
      convert_from_f32(storage, host + first, staging.data(), n);
      if (absl::Status s = backend.copy_to_device(
              weights->arena.data() + first * dtype_size(storage), staging.data(),
              n * dtype_size(storage));
          !s.ok()) {
        return s;
      }
    }
  }
  model.device = std::move(weights);
  return absl::OkStatus();
}

absl::StatusOr<const std::byte*> arena_on(const BloomModel& model, const Backend& backend) {
  if (resident_on(model, backend)) return model.device->arena.data();
  if (backend.kind() == DeviceKind::kCpu) return model.arena.base();
  return absl::FailedPreconditionError(absl::StrCat("the model's weights are not resident on ",
                                                    std::string(backend.name()),
                                                    " (make_resident first)"));
}

DType storage_on(const BloomModel& model, const Backend& backend) {
  return resident_on(model, backend) ? model.device->storage : DType::kF32;
}

absl::StatusOr<StorageChoice> choose_storage(std::string_view name, bool cuda, int64_t head_dim) {
  StorageChoice c;
  if (name != "auto") {
    const std::optional<DType> chosen = float_dtype_from_flag(name);
    if (!chosen.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", std::string(name), "' is not auto, f32, bf16 or f16"));
    }
    c.dtype = *chosen;
    c.reason = std::string(name);
  } else if (!cuda) {
    c.reason = "auto: cpu";
  } else if (cuda_16bit_attention_supports(head_dim)) {
    c.dtype = DType::kBF16;
    c.reason = absl::StrCat("auto: cuda, head_dim ", head_dim);
  } else {
    c.reason = absl::StrCat("auto: head_dim ", head_dim, " has no tensor-core kernel");
  }
  return c;
}

}  // namespace engine
