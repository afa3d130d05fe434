// `engine train --dry_run --device cuda` (model/memory_estimate.h) against what the device path
// allocates, read from the CUDA backend's allocator (Backend::memory_stats: bytes requested and
// live): the resident weights, the trainer's compact gradient, moments, fp32 masters and update
// index each equal their plan line; the activations the backward keeps equal the two activation
// lines (as the CPU test does, tests/memory_estimate_test.cpp); and the peak of a whole step
// stays within the plan's total of device lines. f32 and bf16 weights, with and without
// activation recomputation, on the 2 x 4 x 64 model of the 16-bit training tests.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bf16_training.h"
#include "engine/device.h"
#include "engine/tape.h"
#include "gtest/gtest.h"
#include "model/bloom_backward.h"
#include "model/memory_estimate.h"
#include "surgery/surgery_training.h"

namespace engine {
namespace {

using bf16_training::small_model;
using bf16_training::step_batches;
using bf16_training::three_head_mask;
using bf16_training::three_heads;

int64_t line(const TrainingMemoryPlan& m, const std::string& name) {
  for (const MemoryLine& l : m.lines) {
    if (l.name == name) return l.bytes;
  }
  return 0;  // a line the plan leaves out (e.g. masters of f32 weights) is zero bytes
}

int64_t live(Backend& b) { return b.memory_stats().live_bytes; }

struct Case {
  DType storage;
  bool recompute;
};

class CudaMemoryPlan : public testing::TestWithParam<Case> {};

TEST_P(CudaMemoryPlan, DeviceAllocationsMatchTheDryRunPlan) {
  const Case k = GetParam();
  absl::StatusOr<std::unique_ptr<Backend>> made = make_backend("cuda");
  ASSERT_TRUE(made.ok()) << made.status();
  Backend& backend = **made;
  std::unique_ptr<BloomModel> model = small_model();
  ASSERT_NE(model, nullptr);
  const FrozenMask mask = three_head_mask(*model);
  const SurgeryPlan plan = three_heads();
  std::mt19937 rng(5);
  const std::vector<MicroBatch> micro = step_batches(rng, model->config.vocab_size);
  TrainingMemoryShape shape;
  shape.batch = micro[0].batch, shape.seq = micro[0].seq, shape.recompute = k.recompute;
  shape.weight_bytes = shape.activation_bytes = static_cast<int64_t>(dtype_size(k.storage));
  shape.device = true;
  absl::StatusOr<TrainingMemoryPlan> m = plan_surgery_training_memory(model->config, &plan, shape);
  ASSERT_TRUE(m.ok()) << m.status();
  SCOPED_TRACE(m->table());
  ASSERT_EQ(m->trainable, mask.trainable_count());

  // The weights: one resident arena in the storage type.
  const int64_t empty = live(backend);
  ASSERT_TRUE(make_resident(*model, backend, k.storage).ok());
  EXPECT_EQ(live(backend) - empty, line(*m, "weights"));

  // The trainer's state, each buffer its line (the frozen-mask bits and the run table stay in
  // host memory: the device never reads them).
  const int64_t resident = live(backend);
  OptimizerOptions options;
  Trainer trainer(*model, backend, mask, options);
  trainer.set_recompute(k.recompute);
  const int64_t state = line(*m, "gradient (compact)") + line(*m, "AdamW moments") +
                        line(*m, "fp32 master weights");
  EXPECT_EQ(live(backend) - resident, state);

  // A step: the update index (uploaded by the first update) is its line; the peak of the step
  // stays within the plan's device total.
  backend.reset_peak_memory();
  absl::StatusOr<StepResult> r = trainer.step(micro, 1e-3);
  ASSERT_TRUE(r.ok()) << r.status();
  // The only device memory the plan does not list: the compact gradient's cached segment
  // tables (4 int64 per row piece of a trainable block: engine/tape.h), measured here.
  const int64_t segments = trainer.gradients().segment_table_bytes();
  RecordProperty("segment_table_bytes", absl::StrCat(segments));
  EXPECT_EQ(live(backend) - resident, state + line(*m, "update index") + segments);
  const int64_t device_total = m->total_bytes() - line(*m, "frozen-mask bits") + segments;
  const int64_t peak = backend.memory_stats().peak_live_bytes - empty;
  RecordProperty("peak_over_plan", absl::StrCat(static_cast<double>(peak) / device_total));
  EXPECT_LE(peak, device_total);

  // The activations the backward keeps: the two activation lines, as on the CPU.
  CompactGradients grads(mask.words(), mask.elements(), backend);
  ForwardInputs in;
  in.batch = micro[0].batch, in.seq = micro[0].seq;
  in.ids = micro[0].ids.data();
  in.mask = micro[0].mask.data();
  in.targets = micro[0].targets.data();
  absl::StatusOr<ForwardResult> f =
      bloom_forward_backward(*model, backend, in, grads, 1.0, k.recompute);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->kept_activation_bytes,
            line(*m, "activations (blocks)") + line(*m, "activations (ends)"));
}

INSTANTIATE_TEST_SUITE_P(Storage, CudaMemoryPlan,
                         testing::Values(Case{DType::kF32, false}, Case{DType::kF32, true},
                                         Case{DType::kBF16, false}, Case{DType::kBF16, true}),
                         [](const testing::TestParamInfo<Case>& i) {
                           return absl::StrCat(i.param.storage == DType::kF32 ? "f32" : "bf16",
                                               i.param.recompute ? "_recompute" : "");
                         });

}  // namespace
}  // namespace engine
