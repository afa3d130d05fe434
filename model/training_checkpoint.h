// The checkpoint directories of a training run (docs/FORMATS.md, docs/TRAINING.md): OUT/step_N
// holds a model directory, the optimizer state, the trainer state, the plan when the run has one,
// and the content manifest (model/checkpoint_manifest.h) over all of them, written last.
// Internal to model/: run_training (model/training_run.cpp) is its only user.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/bloom_forward.h"
#include "model/trainer.h"
#include "nlohmann/json.hpp"

namespace engine::run_checkpoint {

inline constexpr const char* kStateFile = "trainer_state.json";
inline constexpr const char* kOptimizerFile = "optimizer.bin";
inline constexpr const char* kMastersFile = "masters.bin";

// Writes `name` (a model directory plus the trainer's files, then the manifest over all of them)
// under a temporary name in `out`, then renames it into place: a reader sees either no directory
// or a complete one. On failure (a full disk, say) everything this call wrote is removed, so the
// space is given back, and the checkpoints already in place are untouched. `plan` (plan.json's
// contents) is null for a run without a surgery plan.
// `dtype`: the weights' type in model.safetensors; with a 16-bit one the directory also holds
// kMastersFile (the trainer's fp32 masters, compact order).
absl::Status save_checkpoint(const std::filesystem::path& out, const std::string& name,
                             const BloomModel& model, Trainer& trainer,
                             const nlohmann::json& state, const nlohmann::json* plan,
                             DType dtype = DType::kF32);

// Reads kMastersFile: exactly `count` fp32 values after its magic.
absl::StatusOr<std::vector<float>> read_masters(const std::filesystem::path& file, int64_t count);

// Loads optimizer.bin into the trainer's moments and sets its step count to `step`; the file must
// belong to a trainer of the same trainable count, at `step`.
absl::Status read_optimizer_state(const std::filesystem::path& file, Trainer& trainer,
                                  int64_t step);

// The largest N with a complete OUT/step_N (one holding the trainer state), or -1.
int64_t last_checkpoint(const std::filesystem::path& out);

}  // namespace engine::run_checkpoint
