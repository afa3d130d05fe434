// Pretraining a small BLOOM-architecture model from scratch (`engine pretrain`): the engine's own
// test subject for the repair pipeline on machines that have no released BLOOM weights.
// Contract:
// - run_pretraining writes OUT/init/ (config.json for a byte-level vocabulary of 260 ids, the
//   engine's byte-level tokenizer.json, and weights drawn by init_bloom_weights), trains EVERY
//   parameter of it with run_training (no plan) into OUT/train/, then saves the checkpoint with
//   the best held-out perplexity (the final one when nothing is held out) as a Hugging Face model
//   directory in OUT itself (config.json, model.safetensors, tokenizer.json) and writes
//   OUT/pretrain.json (the recipe, the result, the seconds taken) last: its presence marks a
//   finished model. With `collapse` set, pretrain.json says under "collapse" that the named heads'
//   attention sinks were induced, and how (heads, weight, steps).
// - Everything is a pure function of (options, data): same options and data give the same bytes.
// - `resume` continues an interrupted OUT/train/ (run_training's resume); without it an OUT that
//   already holds a run is refused before any work.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "model/bloom_init.h"
#include "model/config.h"
#include "model/head_geometry.h"
#include "model/trainer.h"
#include "nlohmann/json.hpp"

namespace engine {

// Vocabulary of the byte-level tokenizer (model/tokenizer.h): 4 special ids + 256 bytes.
inline constexpr int64_t kByteLevelVocab = 260;

struct PretrainOptions {
  std::filesystem::path data;     // text corpus (.txt / .jsonl / token file made by the tokenizer)
  std::filesystem::path out_dir;
  int64_t n_layer = 4, n_head = 8, hidden_size = 128;
  double init_std = kBloomInitStd;
  // The training run; model_dir, out_dir and plan are set by run_pretraining.
  TrainRunOptions train;
  double holdout = 0.005;         // share of the chunks held out for perplexity (~100 of fortunes)
  bool resume = false;
  // Controlled collapse (docs/REPAIR.md): these (layer, head) pairs train with the auxiliary loss
  // collapse_weight * mean over real query rows of -log A[t, first key] (model/bloom_backward.h),
  // which induces attention-sink heads there; the rest of the model trains normally. Each pair
  // must be inside the architecture and listed once; collapse_weight must be positive and finite.
  std::vector<HeadTarget> collapse;
  double collapse_weight = 1.0;
  std::string command;            // recorded in pretrain.json
  std::function<void(const std::string&)> log;
};

// Defaults of the pretraining recipe that differ from fine-tuning's: lr 1e-3, betas 0.9/0.95
// (BLOOM's), seq_len 128, batch 8, grad_accum 1, warm-up 30 steps then cosine, 400 steps,
// evaluation every 100 steps. The measured outcome is in docs/REPAIR.md.
TrainRunOptions default_pretrain_recipe();

// The config.json of the small model.
BloomConfig small_bloom_config(int64_t n_layer, int64_t n_head, int64_t hidden_size);

struct PretrainResult {
  int64_t steps = 0;
  double final_loss = 0.0;
  std::optional<double> best_ppl;
  double seconds = 0.0;
  nlohmann::json summary;  // what pretrain.json holds
};

absl::StatusOr<PretrainResult> run_pretraining(const PretrainOptions& options, Backend& backend);

// True when `dir` holds a complete training checkpoint step_N (one with its trainer state), i.e.
// something run_training's resume can continue from.
bool has_resumable_checkpoint(const std::filesystem::path& dir);

// Name of the marker file written last.
inline constexpr const char* kPretrainSummaryFile = "pretrain.json";

}  // namespace engine
