// A model's weights in a backend's memory. The host ParameterArena is the model's record (what
// is loaded, surgically edited and saved); a device backend computes on a copy of it, made once
// by make_resident and refreshed explicitly, never behind the caller's back.
// Contract:
// - make_resident(model, cpu) does nothing: the CPU backend reads the host arena itself.
// - make_resident(model, device) uploads the whole arena, in the arena's layout (same element
//   offsets), and records it in model.device; calling it again re-uploads (after the host copy
//   changed). Memory errors name the device and the size; the host arena is untouched.
// - arena_on(model, backend) is the base address the backend's ops read the weights from: the
//   host arena for the CPU backend, the resident copy for a device; FailedPrecondition when the
//   model is not resident on that backend.
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/device_array.h"
#include "engine/dtype.h"
#include "model/model_directory.h"

namespace engine {

struct DeviceWeights {
  Backend* backend = nullptr;
  DType dtype = DType::kF32;
  DeviceArray<std::byte> arena;  // the arena's bytes, same layout as the host arena
};

absl::Status make_resident(BloomModel& model, Backend& backend);

absl::StatusOr<const std::byte*> arena_on(const BloomModel& model, const Backend& backend);

}  // namespace engine
