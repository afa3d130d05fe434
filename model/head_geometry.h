// Attention heads as training sees them: which head (a target), which of its slices train, and
// the model shape the heads are cut from. Surgery plans (surgery/plan.h) list targets and slices;
// the trainer, the memory plan and the head scans take them without knowing about plans.
#pragma once

#include <cstdint>

#include "model/config.h"

namespace engine {

struct HeadTarget {
  int64_t layer = 0;
  int64_t head = 0;
  bool operator==(const HeadTarget&) const = default;
  bool operator<(const HeadTarget& o) const {
    return layer != o.layer ? layer < o.layer : head < o.head;
  }
};

// Which slices of each target head the optimizer may change (surgery/head_surgery.h cuts them).
struct TrainableSlices {
  bool qkv_weight = true;
  bool qkv_bias = true;
  bool dense_columns = true;
  bool operator==(const TrainableSlices&) const = default;
};

// The model shape a set of head targets is checked against.
// The family names the tensors a head's slices are cut from (model/bloom_layout.h) and says
// whether its fused QKV has a bias.
struct HeadGeometry {
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t head_dim = 0;
  ModelFamily family = ModelFamily::kBloom;
  bool qkv_bias = true;
  int64_t hidden() const { return n_head * head_dim; }
  static HeadGeometry of(const BloomConfig& c) {
    return {c.n_layer, c.n_head, c.head_dim(), c.family, family_traits(c).linear_bias};
  }
};

}  // namespace engine
