// A model's weights in a backend's memory, in the storage type it computes in. The host
// ParameterArena (f32) is the model's record (what is loaded, surgically edited and saved); a
// backend computes on it directly (the CPU at f32) or on a copy made by make_resident and
// refreshed explicitly, never behind the caller's back.
// Contract:
// - make_resident(model, backend, storage): the CPU at F32 needs no copy (any earlier one is
//   dropped); every other case copies the whole arena, in the arena's layout (same element
//   offsets), converted to `storage` (BF16 / F16 rounded to nearest even), into the backend's
//   memory and records it in model.device. Calling it again re-copies (after the host arena
//   changed). Errors (an integer storage type, a full device) name the value; the host arena is
//   untouched.
// - arena_on(model, backend) is where the backend's ops read the weights: the resident copy when
//   there is one for that backend, else the host arena for the CPU; FailedPrecondition for a
//   device the model is not resident on. storage_on(model, backend) is its element type.
// - choose_storage(name, cuda, head_dim) is the one rule for the storage a caller names (the
//   CLI's --dtype, the public API's dtype): "auto" is bf16 on a CUDA device whose tensor-core
//   attention takes `head_dim` (64, 80, 96 and 128: every released BLOOM), else f32 (the CPU
//   always: its arithmetic is the fp32 reference); "f32", "bf16" and "f16" are taken as given.
//   The reason says which case applied. Another name is InvalidArgument naming it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/device_array.h"
#include "engine/dtype.h"
#include "model/model_directory.h"

namespace engine {

struct DeviceWeights {
  Backend* backend = nullptr;
  DType storage = DType::kF32;
  DeviceArray<std::byte> arena;  // the arena's elements as `storage`, same layout as the host's
};

absl::Status make_resident(BloomModel& model, Backend& backend, DType storage = DType::kF32);

absl::StatusOr<const std::byte*> arena_on(const BloomModel& model, const Backend& backend);
DType storage_on(const BloomModel& model, const Backend& backend);

struct StorageChoice {
  DType dtype = DType::kF32;
  std::string reason;  // e.g. "auto: cuda, head_dim 64", "auto: cpu", "bf16"
};
absl::StatusOr<StorageChoice> choose_storage(std::string_view name, bool cuda, int64_t head_dim);

}  // namespace engine
