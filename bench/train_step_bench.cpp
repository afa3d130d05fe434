// One optimizer step (forward, tape backward, masked AdamW) on a random BLOOM-shaped model:
// ordinary fine-tuning (every parameter trainable) against a pass-1-like surgery plan (layers
// 5-22, heads 9-15 of 24 x 16), with and without --recompute. The plan's step skips every frozen
// weight gradient, stops the backward below layer 5 and keeps optimizer state for the target
// slices only; the counters show tokens/s and the trainable / optimizer-state sizes.
// Shape: 24 layers and 16 heads as bloom-560m, but hidden 256 and vocabulary 8192 so that a step
// takes well under a second on a small machine; batch 1 x seq 256, one micro-batch per step.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "bench/random_bloom_model.h"
#include "engine/backend.h"
#include "model/model_directory.h"
#include "model/trainer.h"
#include "surgery/head_surgery.h"

namespace {

constexpr int64_t kLayers = 24, kHeads = 16, kHidden = 256, kVocab = 8192, kSeq = 256;

// range(0): 0 = every parameter trainable, 1 = pass-1 plan; range(1): recompute.
void BM_TrainStep(benchmark::State& state) {
  engine::BloomModel model = engine_bench::random_bloom_model(kVocab, kHidden, kLayers, kHeads);
  const bool surgical = state.range(0) != 0;
  std::optional<engine::FrozenMask> mask;
  if (surgical) {
    engine::SurgeryPlan plan;
    for (int64_t l = 5; l <= 22; ++l) {
      for (int64_t h = 9; h <= 15; ++h) plan.targets.push_back({l, h});
    }
    absl::StatusOr<engine::FrozenMask> m = engine::apply_surgery(
        model.arena, engine::HeadGeometry{kLayers, kHeads, kHidden / kHeads}, plan);
    if (!m.ok()) std::abort();
    mask.emplace(std::move(*m));
  } else {
    mask.emplace(engine::FrozenMask::all_trainable(model.arena));
  }
  std::unique_ptr<engine::Backend> backend = engine::make_cpu_backend();
  engine::Trainer trainer(model, *backend, *mask, engine::OptimizerOptions{});
  trainer.set_recompute(state.range(1) != 0);
  std::mt19937 rng(4);
  std::uniform_int_distribution<int32_t> id(0, kVocab - 1);
  engine::MicroBatch mb;
  mb.batch = 1, mb.seq = kSeq;
  for (int64_t t = 0; t < kSeq; ++t) mb.ids.push_back(id(rng));
  mb.targets = engine::next_token_targets(mb.ids.data(), nullptr, 1, kSeq);
  const std::vector<engine::MicroBatch> micro = {mb};
  for (auto _ : state) {
    absl::StatusOr<engine::StepResult> r = trainer.step(micro, 1e-5);
    if (!r.ok()) state.SkipWithError(std::string(r.status().message()).c_str());
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(kSeq), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["trainable_M"] = static_cast<double>(trainer.trainable_count()) / 1e6;
  state.counters["optimizer_MiB"] =
      2.0 * static_cast<double>(trainer.first_moment().size()) * sizeof(float) / (1 << 20);
}
BENCHMARK(BM_TrainStep)
    ->ArgNames({"surgical", "recompute"})
    ->Args({0, 0})
    ->Args({1, 0})
    ->Args({1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
