// One optimizer step on the CUDA backend (forward, tape backward, masked AdamW, all on the
// device) of a bloom-560m-shaped random model (24 layers, 16 heads of 64, hidden 1024,
// vocabulary 250,880) at seq 512: every parameter trainable, and a pass-1-like surgery plan
// (layers 5-22, heads 9-15), micro-batch 1 and 4, weights stored as f32 or bf16.
//
// Counters: tokens/s; model TFLOP/s = tokens/s x (6 N + 6 L C T), the usual count for a
// training step (N the parameters in matrix products, the LM head included; the second term the
// causal attention products), charged in full for the surgical step too (it skips most weight
// gradients, so its model TFLOP/s overstates its work); MFU = model TFLOP/s / ENGINE_PEAK_TFLOPS
// when that variable is set (scripts/gpu-check.sh sets it from the GPU's name: the dense bf16
// tensor-core peak).
//
// Only a real GPU runs the full shape; without one every benchmark reports a skip.
// ENGINE_BENCH_SHAPE=tiny (2 layers, 4 heads of 64, vocabulary 512, seq 64) runs on any CUDA
// device, the emulated one included: the smoke test of this file.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench/random_bloom_model.h"
#include "engine/device.h"
#include "model/device_model.h"
#include "model/model_directory.h"
#include "model/trainer.h"
#include "surgery/head_surgery.h"

namespace {

struct Shape {
  int64_t layers, heads, hidden, vocab, seq;
  int64_t plan_first, plan_last, head_first;  // the surgical plan's layers and heads
};
constexpr Shape kBloom560m{24, 16, 1024, 250880, 512, 5, 22, 9};
constexpr Shape kTiny{2, 4, 256, 512, 64, 1, 1, 2};

bool tiny() {
  const char* s = std::getenv("ENGINE_BENCH_SHAPE");
  return s != nullptr && std::strcmp(s, "tiny") == 0;
}

// Model FLOPs of one token of a training step (see the file comment).
double flops_per_token(const Shape& s) {
  const double C = static_cast<double>(s.hidden), L = static_cast<double>(s.layers);
  const double matmul_params = L * 12.0 * C * C + static_cast<double>(s.vocab) * C;
  return 6.0 * matmul_params + 6.0 * L * C * static_cast<double>(s.seq);
}

// range(0): 0 = every parameter trainable, 1 = surgical plan; range(1): micro-batch;
// range(2): 0 = f32 weights, 1 = bf16 weights (fp32 masters).
void BM_TrainStepCuda(benchmark::State& state) {
  const Shape s = tiny() ? kTiny : kBloom560m;
  if (!tiny() && engine::resolve_device("auto") != "cuda") {
    state.SkipWithError("no CUDA device (set ENGINE_BENCH_SHAPE=tiny to run the small shape on "
                        "an emulated one)");
    return;
  }
  absl::StatusOr<std::unique_ptr<engine::Backend>> backend = engine::make_backend("cuda");
  if (!backend.ok()) {
    state.SkipWithError(std::string(backend.status().message()).c_str());
    return;
  }
  engine::BloomModel model =
      engine_bench::random_bloom_model(s.vocab, s.hidden, s.layers, s.heads);
  std::optional<engine::FrozenMask> mask;
  if (state.range(0) != 0) {
    engine::SurgeryPlan plan;
    for (int64_t l = s.plan_first; l <= s.plan_last; ++l) {
      for (int64_t h = s.head_first; h < s.heads; ++h) plan.targets.push_back({l, h});
    }
    absl::StatusOr<engine::FrozenMask> m = engine::apply_surgery(
        model.arena, engine::HeadGeometry{s.layers, s.heads, s.hidden / s.heads}, plan);
    if (!m.ok()) std::abort();
    mask.emplace(std::move(*m));
  } else {
    mask.emplace(engine::FrozenMask::all_trainable(model.arena));
  }
  const engine::DType storage = state.range(2) != 0 ? engine::DType::kBF16 : engine::DType::kF32;
  if (absl::Status st = engine::make_resident(model, **backend, storage); !st.ok()) {
    state.SkipWithError(std::string(st.message()).c_str());
    return;
  }
  engine::Trainer trainer(model, **backend, *mask, engine::OptimizerOptions{});
  trainer.set_recompute(true);  // the published recipe's setting
  const int64_t batch = state.range(1);
  std::mt19937 rng(4);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(s.vocab - 1));
  engine::MicroBatch mb;
  mb.batch = batch, mb.seq = s.seq;
  for (int64_t t = 0; t < batch * s.seq; ++t) mb.ids.push_back(id(rng));
  mb.targets = engine::next_token_targets(mb.ids.data(), nullptr, batch, s.seq);
  const std::vector<engine::MicroBatch> micro = {mb};
  // One untimed step: the allocations of the first step are not the steady state.
  if (absl::StatusOr<engine::StepResult> r = trainer.step(micro, 1e-5); !r.ok()) {
    state.SkipWithError(std::string(r.status().message()).c_str());
    return;
  }
  for (auto _ : state) {
    absl::StatusOr<engine::StepResult> r = trainer.step(micro, 1e-5);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
  }
  const double tokens = static_cast<double>(batch * s.seq);
  state.counters["tokens/s"] =
      benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["model_TFLOP/s"] = benchmark::Counter(
      tokens * flops_per_token(s) / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  if (const char* peak = std::getenv("ENGINE_PEAK_TFLOPS"); peak != nullptr && std::atof(peak) > 0) {
    state.counters["MFU"] = benchmark::Counter(tokens * flops_per_token(s) / 1e12 / std::atof(peak),
                                               benchmark::Counter::kIsIterationInvariantRate);
  }
  state.counters["trainable_M"] = static_cast<double>(trainer.trainable_count()) / 1e6;
}
BENCHMARK(BM_TrainStepCuda)
    ->ArgNames({"surgical", "batch", "bf16"})
    ->ArgsProduct({{0, 1}, {1, 4}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(5);

}  // namespace
