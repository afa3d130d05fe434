// Hugging Face BLOOM model directories: config.json + safetensors weights (+ tokenizer files).
// Contract:
//  - load_model_directory reads config.json and the weights (model.safetensors, or the shards a
//    model.safetensors.index.json lists) into one f32 ParameterArena laid out by
//    declare_bloom_parameters, converting f16/bf16 exactly. Tensor names may carry the
//    "transformer." prefix transformers' BloomForCausalLM writes. With a tied head (the default)
//    a lm_head.weight tensor is accepted only if it equals word_embeddings.weight bit for bit
//    after conversion; with tie_word_embeddings false it is a parameter like any other (required,
//    loaded, saved under that name). Missing, unexpected, duplicated, mis-shaped or
//    non-float tensors are errors naming the file and tensor. A directory holding only
//    pytorch_model.bin is refused with a pointer to scripts/convert_pytorch_bin.py: the engine
//    never unpickles.
//    When the directory holds a manifest (model/checkpoint_manifest.h), the files read are first
//    checked against it, and a mismatch is refused naming the file; without one nothing is checked.
//  - save_model_directory writes model.safetensors (released names, no prefix, in arena order,
//    stored as `dtype`) and config.json, both atomically, then copies the tokenizer files found in
//    the model's source directory unchanged, and last writes manifest.json listing these files
//    (any earlier manifest is removed first).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/arena.h"
#include "engine/dtype.h"
#include "model/config.h"

namespace engine {

struct DeviceWeights;  // model/device_model.h

struct BloomModel {
  BloomConfig config;
  ParameterArena arena;              // f32, declared by declare_bloom_parameters
  std::filesystem::path source;      // directory it was loaded from (empty if built in memory)
  DType source_dtype = DType::kF32;  // dtype of word_embeddings.weight in the source files
  // The arena's copy in a device backend's memory (make_resident, model/device_model.h); null
  // while the weights live only on the host, which is all the CPU backend reads.
  std::shared_ptr<DeviceWeights> device;
};

// Tokenizer files a model directory may carry; copied verbatim on save.
extern const char* const kTokenizerFiles[3];

// A zeroed model with an allocated f32 arena for `config` (for tests and fresh exports).
absl::StatusOr<BloomModel> allocate_bloom_model(const BloomConfig& config);

// The weight files load_model_directory would read, in reading order.
absl::StatusOr<std::vector<std::filesystem::path>> model_weight_files(
    const std::filesystem::path& dir);

// The files load_model_directory reads (config.json, the weights, a shard index), as names
// relative to `dir`: with a manifest present, the files it verifies.
absl::StatusOr<std::vector<std::string>> model_directory_read_files(const std::filesystem::path& dir);

// What `engine info` reports: everything load_model_directory checks except tensor values (the
// lm_head tie), without converting or allocating the weights.
struct ModelDirectoryInfo {
  BloomConfig config;
  DType source_dtype = DType::kF32;
  std::vector<std::pair<std::filesystem::path, uint64_t>> files;  // (path, size in bytes)
};
absl::StatusOr<ModelDirectoryInfo> inspect_model_directory(const std::filesystem::path& dir);

absl::StatusOr<BloomModel> load_model_directory(const std::filesystem::path& dir);
absl::Status save_model_directory(const BloomModel& m, const std::filesystem::path& dir,
                                  DType dtype = DType::kF32);

}  // namespace engine
