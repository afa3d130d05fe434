// Surgery on attention heads, as views into the parameter arena (METHOD.md section 3).
// Contract: a plan never copies the model. For each target (layer l, head h) with head dim d:
//   - rows [3dh, 3d(h+1)) of the layer's fused QKV weight (the head's Q, K, V block; the arena
//     holds every family's QKV per head, model/bloom_layout.h, so for MPT these are the rows
//     [dh, d(h+1)) of each of the checkpoint's Q, K and V blocks)
//   - the same rows of the fused QKV bias, when the family has one
//   - columns [dh, d(h+1)) of the attention output projection (BLOOM/Falcon
//     h.l.self_attention.dense.weight, MPT blocks.l.attn.out_proj.weight)
// are re-initialised in place as the plan says, and the slices the plan names trainable are
// marked in a FrozenMask. The same plan and seed always produce bit-identical weights, whatever
// the order of the targets (each element's random draw depends only on seed, layer, head, index).
#pragma once

#include "absl/status/statusor.h"
#include "engine/arena.h"
#include "engine/tensor.h"
#include "engine/frozen_mask.h"
#include "surgery/plan.h"

namespace engine {

struct HeadSlices {
  TensorView qkv_weight_rows;  // (3D, C)
  TensorView qkv_bias_rows;    // (3D); empty (arena_offset -1) when the family has no bias
  bool has_qkv_bias = true;
  TensorView dense_columns;    // (C, D), row stride C
};

// Views of one head's slices. Errors name the missing parameter or the out-of-range head.
absl::StatusOr<HeadSlices> head_slices(const ParameterArena& arena, const HeadGeometry& geometry,
                                       const HeadTarget& target);

// Re-initialises every target as the plan says and returns the mask of trainable elements.
// Validates the plan against the geometry first; on error nothing has been modified.
absl::StatusOr<FrozenMask> apply_surgery(ParameterArena& arena, const HeadGeometry& geometry,
                                         const SurgeryPlan& plan);

// The mask a plan implies, without touching any weight (for resuming a run).
absl::StatusOr<FrozenMask> surgery_mask(const ParameterArena& arena, const HeadGeometry& geometry,
                                        const SurgeryPlan& plan);

}  // namespace engine
