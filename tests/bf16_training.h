// Shared pieces of the 16-bit training tests (tests/bf16_training_test.cpp on the CPU twin,
// tests/cuda_training_test.cpp on the device): a model the tensor-core attention takes (2 layers,
// 4 heads, head_dim 64; its shape also serves tests/cuda_repair_test.cpp), a surgery-style mask,
// the micro-batches of a step, and the check that a resident 16-bit copy holds the host arena
// rounded to nearest even.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "engine/dtype.h"
#include "engine/frozen_mask.h"
#include "gtest/gtest.h"
#include "model/bloom_init.h"
#include "model/device_model.h"
#include "model/head_geometry.h"
#include "model/trainer.h"
#include "surgery/head_surgery.h"
#include "surgery/plan.h"

namespace engine::bf16_training {

inline BloomConfig small_config(int64_t vocab_size = 311) {
  BloomConfig c;
  c.vocab_size = vocab_size, c.n_layer = 2, c.n_head = 4, c.hidden_size = 4 * 64;
  return c;
}

inline std::unique_ptr<BloomModel> small_model() {
  absl::StatusOr<BloomModel> m = allocate_bloom_model(small_config());
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return nullptr;
  EXPECT_TRUE(init_bloom_weights(*m, 17, 0.08).ok());
  return std::make_unique<BloomModel>(std::move(*m));
}

// Three heads (two in layer 1): QKV rows, QKV bias and dense columns trainable.
inline SurgeryPlan three_heads() {
  SurgeryPlan plan;
  plan.targets = {{0, 1}, {1, 0}, {1, 2}};
  plan.qkv_weight = QkvWeightInit::kKeep;
  plan.qkv_bias = QkvBiasInit::kKeep;
  plan.dense_columns = DenseColumnsInit::kKeep;
  return plan;
}

inline FrozenMask three_head_mask(const BloomModel& m) {
  const BloomConfig& c = m.config;
  absl::StatusOr<FrozenMask> mask =
      surgery_mask(m.arena, HeadGeometry{c.n_layer, c.n_head, c.head_dim()}, three_heads());
  EXPECT_TRUE(mask.ok()) << mask.status();
  return *std::move(mask);
}

// Two micro-batches of 2 x 16 random tokens, the second right-padded after 11 in its last row.
inline std::vector<MicroBatch> step_batches(std::mt19937& rng, int64_t vocab) {
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(vocab - 1));
  std::vector<MicroBatch> mbs(2);
  for (int k = 0; k < 2; ++k) {
    MicroBatch& mb = mbs[k];
    mb.batch = 2, mb.seq = 16;
    mb.ids.resize(32);
    for (int32_t& t : mb.ids) t = id(rng);
    mb.mask.assign(32, 1);
    if (k == 1) std::fill(mb.mask.begin() + 16 + 11, mb.mask.end(), 0);
    mb.targets.assign(32, -1);
    for (int64_t r = 0; r < 2; ++r) {
      for (int64_t t = 0; t + 1 < 16; ++t) {
        if (mb.mask[r * 16 + t + 1] != 0) mb.targets[r * 16 + t] = mb.ids[r * 16 + t + 1];
      }
    }
  }
  return mbs;
}

// Elements of the model's resident 16-bit copy that are not the host arena's value rounded to
// nearest even (after Trainer::download_weights the host arena holds the masters of the
// trainable elements and the untouched fp32 values of the frozen ones).
inline int64_t copy_mismatches(const BloomModel& m, Backend& backend) {
  if (m.device == nullptr || m.device->storage == DType::kF32) return -1;
  const int64_t n = m.arena.size_elements();
  std::vector<uint16_t> copy(static_cast<size_t>(n));
  EXPECT_TRUE(backend.copy_to_host(copy.data(), m.device->arena.data(), n * sizeof(uint16_t)).ok());
  std::vector<uint16_t> want(static_cast<size_t>(n));
  convert_from_f32(m.device->storage, reinterpret_cast<const float*>(m.arena.base()), want.data(),
                   static_cast<size_t>(n));
  int64_t bad = 0;
  for (int64_t e = 0; e < n; ++e) bad += copy[e] != want[e] ? 1 : 0;
  return bad;
}

// Frozen elements of the host arena whose bits differ from `initial`'s.
inline int64_t frozen_changed(const BloomModel& m, const FrozenMask& mask,
                              const std::vector<float>& initial) {
  const float* w = reinterpret_cast<const float*>(m.arena.base());
  int64_t changed = 0;
  for (int64_t e = 0; e < mask.elements(); ++e) {
    if (!mask.trainable(e)) changed += std::memcmp(w + e, &initial[e], sizeof(float)) != 0 ? 1 : 0;
  }
  return changed;
}

inline std::vector<float> snapshot(const BloomModel& m) {
  const float* p = reinterpret_cast<const float*>(m.arena.base());
  return std::vector<float>(p, p + m.arena.size_elements());
}

}  // namespace engine::bf16_training
