// The memory a training run will need, by component, computed from the model's config.json and
// what trains alone (nothing is allocated, no weights are read): `engine train --dry-run`, with
// surgery/surgery_training.h turning a surgery plan into the trainable heads.
// Contract: the components follow what the trainer actually allocates (model/trainer.cpp,
// model/bloom_backward.cpp, engine/tape.cpp):
//   - weights: every parameter at the weight storage size;
//   - trainable state: per trainable element the compact gradient (fp32), AdamW's two moments
//     (fp32) and, when weights are stored in 16 bits, an fp32 master copy; plus the frozen-mask
//     bit words (one bit per element, held by the compact gradient, in host memory); on a
//     device, the update's chunk of arena offsets;
//   - kept activations: without recomputation every block from the lowest one holding a
//     trainable element (layer 0 when the embedding trains), without the ln2 / GELU outputs of
//     blocks whose MLP weights are frozen, plus one shared scratch block; with recomputation
//     every block's input plus two blocks' intermediates (the forward's and the backward's);
//     plus the embedding, ln_f and final residual rows; with MPT's clip_qkv each block also
//     keeps its pre-clamp QKV projection (3 hidden widths);
//   - the classifier's input gradient (rows x hidden, fp32) when the embedding is frozen;
//   - the backward's transient gradients: the largest live set inside one block (about 14 hidden
//     widths per row) plus the largest dense weight-gradient block of a trainable slice.
// Shapes: rows = batch x seq. Activation storage is fp32 on the CPU; the CUDA plan stores
// activations and weights in bf16 (LayerNorm moments and the attention log-sum-exp stay fp32).
// Everything is an estimate of live buffers, not of allocator overhead or the process itself.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/head_geometry.h"

namespace engine {

struct TrainingMemoryShape {
  int64_t batch = 1, seq = 512;
  bool recompute = false;
  int64_t weight_bytes = 4;      // 4: fp32 (CPU); 2: bf16 weights + fp32 masters (CUDA plan)
  int64_t activation_bytes = 4;  // storage of kept activations
  // A CUDA device: the masked update reads the arena offsets of its chunk of trainable elements
  // from device memory (model/trainer.cpp: at most 2^20 of them, uploaded once when one chunk
  // holds them all), an "update index" line of 8 B each.
  bool device = false;
};

struct MemoryLine {
  std::string name;
  int64_t bytes = 0;
  std::string detail;
};

struct TrainingMemoryPlan {
  int64_t parameters = 0, trainable = 0;
  std::vector<MemoryLine> lines;
  int64_t total_bytes() const;
  // One aligned line per component and the total, in GiB / MiB.
  std::string table() const;
};

// What trains when only some attention heads do: the slices of `targets` that `trainable` names
// (embedding, LayerNorms and MLPs stay frozen).
struct TrainableHeads {
  std::vector<HeadTarget> targets;
  TrainableSlices trainable;
};

// `heads` null: every parameter trains (ordinary fine-tuning). Errors name a target outside the
// model or a non-positive shape.
absl::StatusOr<TrainingMemoryPlan> plan_training_memory(const BloomConfig& config,
                                                        const TrainableHeads* heads,
                                                        const TrainingMemoryShape& shape);

}  // namespace engine
