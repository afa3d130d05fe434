// model/memory_estimate.h: the planned memory of a training run against what the CPU trainer
// actually holds for the same model, plan and shape (trainable elements, parameters, the
// activations kept for the backward), and the published case (bloom-1b7, pass-1 plan, seq 512,
// micro-batch 1, recomputation, bf16) within a 16 GB GPU.
#include "model/memory_estimate.h"

#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "engine/backend.h"
#include "engine/tape.h"
#include "model/bloom_backward.h"
#include "model/bloom_layout.h"
#include "model/model_directory.h"
#include "engine/frozen_mask.h"
#include "surgery/head_surgery.h"
#include "surgery/surgery_training.h"
#include "tests/fixture_reference.h"

namespace engine {
namespace {

using testing_fixtures::kFixtures;

int64_t line_bytes(const TrainingMemoryPlan& m, const std::string& name) {
  for (const MemoryLine& l : m.lines) {
    if (l.name == name) return l.bytes;
  }
  ADD_FAILURE() << "no line " << name;
  return -1;
}

SurgeryPlan plan_of(std::vector<HeadTarget> targets) {
  SurgeryPlan plan;
  plan.targets = std::move(targets);
  return plan;
}

// One training micro-batch of `batch` x `seq` ids on the CPU; returns the bytes of activations
// the backward held, and fills the trainable count of the mask.
int64_t kept_bytes(const BloomModel& model, const FrozenMask& mask, int64_t batch, int64_t seq,
                   bool recompute) {
  std::vector<int32_t> ids(batch * seq), targets(batch * seq);
  for (int64_t i = 0; i < batch * seq; ++i) {
    ids[i] = static_cast<int32_t>((i * 7 + 3) % model.config.vocab_size);
    targets[i] = static_cast<int32_t>((i * 5 + 1) % model.config.vocab_size);
  }
  ForwardInputs in;
  in.batch = batch, in.seq = seq, in.ids = ids.data(), in.targets = targets.data();
  CompactGradients grads(mask.words(), mask.elements());
  std::unique_ptr<Backend> backend = make_cpu_backend();
  absl::StatusOr<ForwardResult> r =
      bloom_forward_backward(model, *backend, in, grads, 1.0, recompute);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->kept_activation_bytes : -1;
}

TEST(MemoryEstimate, MatchesWhatTheCpuTrainerHolds) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "bloom-h6-l3");
  ASSERT_TRUE(model.ok()) << model.status();
  const BloomConfig& c = model->config;
  const HeadGeometry g{c.n_layer, c.n_head, c.head_dim()};
  const int64_t batch = 2, seq = 24;
  struct Case {
    const char* what;
    std::vector<HeadTarget> targets;  // empty: every parameter trains
    bool recompute;
  };
  const Case cases[] = {
      {"surgery from layer 1", {{1, 1}, {1, 4}, {2, 5}}, false},
      {"surgery from layer 1, recompute", {{1, 1}, {1, 4}, {2, 5}}, true},
      {"surgery in layer 0", {{0, 2}, {2, 0}}, false},
      {"full fine-tuning", {}, false},
      {"full fine-tuning, recompute", {}, true},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    const SurgeryPlan plan = plan_of(k.targets);
    const bool full = k.targets.empty();
    absl::StatusOr<FrozenMask> mask = full ? absl::StatusOr<FrozenMask>(
                                                 FrozenMask::all_trainable(model->arena))
                                           : surgery_mask(model->arena, g, plan);
    ASSERT_TRUE(mask.ok()) << mask.status();
    TrainingMemoryShape shape;
    shape.batch = batch, shape.seq = seq, shape.recompute = k.recompute;
    absl::StatusOr<TrainingMemoryPlan> m = plan_surgery_training_memory(c, full ? nullptr : &plan, shape);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->parameters, model->arena.parameter_elements());
    EXPECT_EQ(m->trainable, mask->trainable_count());
    EXPECT_EQ(line_bytes(*m, "weights"), model->arena.parameter_elements() * 4);
    EXPECT_EQ(line_bytes(*m, "AdamW moments"), 8 * mask->trainable_count());
    EXPECT_EQ(line_bytes(*m, "activations (blocks)") + line_bytes(*m, "activations (ends)"),
              kept_bytes(*model, *mask, batch, seq, k.recompute));
  }
}

// The same for the families' training variants: MPT's clip_qkv keeps each block's pre-clamp
// projection (3 hidden widths per row), and an untied LM head adds V x C parameters.
TEST(MemoryEstimate, CountsTheClampAndTheUntiedHead) {
  for (const char* name : {"mpt-h4-clip-l2", "falcon-h4-untied-l2"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / name);
    ASSERT_TRUE(model.ok()) << model.status();
    const BloomConfig& c = model->config;
    const HeadGeometry g = HeadGeometry::of(c);
    const int64_t batch = 2, seq = 12;
    for (const auto& [targets, recompute] :
         {std::pair{std::vector<HeadTarget>{{1, 1}}, false},
          std::pair{std::vector<HeadTarget>{{0, 2}, {1, 0}}, true},
          std::pair{std::vector<HeadTarget>{}, false}, std::pair{std::vector<HeadTarget>{}, true}}) {
      const SurgeryPlan plan = plan_of(targets);
      const bool full = targets.empty();
      absl::StatusOr<FrozenMask> mask = full ? absl::StatusOr<FrozenMask>(
                                                   FrozenMask::all_trainable(model->arena))
                                             : surgery_mask(model->arena, g, plan);
      ASSERT_TRUE(mask.ok()) << mask.status();
      TrainingMemoryShape shape;
      shape.batch = batch, shape.seq = seq, shape.recompute = recompute;
      absl::StatusOr<TrainingMemoryPlan> m =
          plan_surgery_training_memory(c, full ? nullptr : &plan, shape);
      ASSERT_TRUE(m.ok()) << m.status();
      EXPECT_EQ(m->parameters, model->arena.parameter_elements());
      EXPECT_EQ(m->trainable, mask->trainable_count());
      EXPECT_EQ(line_bytes(*m, "activations (blocks)") + line_bytes(*m, "activations (ends)"),
                kept_bytes(*model, *mask, batch, seq, recompute));
    }
  }
}

// METHOD.md's published case: bloom-1b7 (24 layers, 16 heads of 128, vocabulary 250,880), the
// pass-1 plan of 108 heads in layers 5-22, seq 512, micro-batch 1, recomputation, bf16 weights
// with fp32 masters and state for the trainable elements only: well inside 16 GB.
TEST(MemoryEstimate, PublishedCaseFitsASixteenGigabyteGpu) {
  BloomConfig c;
  c.vocab_size = 250880, c.hidden_size = 2048, c.n_layer = 24, c.n_head = 16;
  std::vector<HeadTarget> targets;
  for (int64_t l = 5; l <= 22; ++l) {
    for (int64_t h = 0; h < 6; ++h) targets.push_back({l, (h * 3 + l) % 16});
  }
  ASSERT_EQ(targets.size(), 108u);
  const SurgeryPlan plan = plan_of(targets);
  TrainingMemoryShape shape;
  shape.batch = 1, shape.seq = 512, shape.recompute = true;
  shape.weight_bytes = 2, shape.activation_bytes = 2;
  absl::StatusOr<TrainingMemoryPlan> m = plan_surgery_training_memory(c, &plan, shape);
  ASSERT_TRUE(m.ok()) << m.status();
  // Per head: its Q, K, V rows of the fused weight (3 x 128 x 2048) and bias, and its 128
  // columns of the dense weight (2048 x 128).
  EXPECT_EQ(m->trainable, 108 * (3 * 128 * 2048 + 3 * 128 + 2048 * 128));
  const double gib = static_cast<double>(m->total_bytes()) / (1 << 30);
  EXPECT_LT(gib, 12.0) << m->table();  // 16 GB = 14.9 GiB: "room to spare"
  EXPECT_GT(gib, 3.2) << m->table();   // at least the bf16 weights (1.7 G parameters)
  // Without recomputation the kept activations grow, but stay far below the weights.
  shape.recompute = false;
  absl::StatusOr<TrainingMemoryPlan> kept = plan_surgery_training_memory(c, &plan, shape);
  ASSERT_TRUE(kept.ok());
  EXPECT_GT(line_bytes(*kept, "activations (blocks)"), line_bytes(*m, "activations (blocks)"));
}

TEST(MemoryEstimate, RejectsPlansOutsideTheModelAndEmptyShapes) {
  BloomConfig c;
  c.vocab_size = 100, c.hidden_size = 64, c.n_layer = 2, c.n_head = 4;
  const SurgeryPlan bad = plan_of({{2, 0}});
  absl::StatusOr<TrainingMemoryPlan> m = plan_surgery_training_memory(c, &bad, TrainingMemoryShape{});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("layer"), std::string::npos) << m.status();
  TrainingMemoryShape empty;
  empty.seq = 0;
  EXPECT_FALSE(plan_surgery_training_memory(c, nullptr, empty).ok());
}

}  // namespace
}  // namespace engine
