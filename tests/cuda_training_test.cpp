// The backward on the CUDA backend against the CPU reference: the tape's bookkeeping ops (add,
// column sums, compact scatter-add) and bloom_forward_backward with F32 weights resident on the
// device, filling a device-resident compact gradient, on a model the size the tensor-core
// attention takes (2 layers, 4 heads, head_dim 64) with a surgery-style mask (a few heads' QKV
// rows and dense columns trainable, everything else frozen). Runs on a GPU or under the CUDA
// emulator (label gpu). Bound: docs/TOLERANCES.md, "Training on the CUDA backend".
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/device_array.h"
#include "engine/frozen_mask.h"
#include "engine/tape.h"
#include "model/bloom_backward.h"
#include "model/bloom_init.h"
#include "model/device_model.h"
#include "model/head_geometry.h"
#include "model/pretrain.h"
#include "model/trainer.h"
#include "surgery/head_surgery.h"
#include "surgery/plan.h"
#include "surgery/surgery_training.h"
#include "tests/bf16_training.h"
#include "tests/training_data.h"
#include "nlohmann/json.hpp"

namespace engine {
namespace {

// Per element: |cuda - cpu| <= kRel |cpu| + kAbs max |cpu| over the parameter tensor (the fp32
// gradient bound of TOLERANCES.md; only the summation order differs).
constexpr double kRel = 1e-3;
constexpr double kAbs = 1e-5;
constexpr double kLossBound = 1e-5;  // relative, as the CPU gradient tests
// After 20 AdamW steps (TOLERANCES.md, "Training on the CUDA backend"): step loss and gradient
// norm relative; trainable weights absolute, as a fraction of the worst case 2 x steps x lr.
constexpr double kStepLossBound = 1e-4;
constexpr double kStepNormBound = 1e-3;
constexpr double kWeightFractionOfWorstCase = 0.1;

std::unique_ptr<Backend> cuda_backend() {
  absl::StatusOr<std::unique_ptr<Backend>> cuda = make_backend("cuda");
  EXPECT_TRUE(cuda.ok()) << cuda.status();
  return cuda.ok() ? *std::move(cuda) : nullptr;
}

template <typename T>
std::vector<T> download(const DeviceArray<T>& a) {
  std::vector<T> host;
  EXPECT_TRUE(a.download(host).ok());
  return host;
}

// The bookkeeping ops give the CPU's bits: add and the scatter-add are one fp32 add per element,
// the column sums are accumulated in double in row order on both.
TEST(CudaTapeOps, AddColumnSumsAndScatterAddMatchTheCpuBitForBit) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 37, cols = 53, ld = 61;
  std::vector<float> x(static_cast<size_t>(rows * ld)), y(x.size());
  for (float& v : x) v = normal(rng);
  for (float& v : y) v = normal(rng);
  DeviceArray<float> dx, dy, dsum;
  ASSERT_TRUE(dx.upload(*cuda, std::span<const float>(x)).ok());
  ASSERT_TRUE(dy.upload(*cuda, std::span<const float>(y)).ok());
  ASSERT_TRUE(dsum.resize(*cuda, cols).ok());
  std::vector<float> sum(static_cast<size_t>(cols));
  ASSERT_TRUE(cpu->column_sums(x.data() + 5, rows, cols, ld, sum.data()).ok());
  ASSERT_TRUE(cuda->column_sums(dx.data() + 5, rows, cols, ld, dsum.data()).ok());
  EXPECT_EQ(download(dsum), sum);
  ASSERT_TRUE(cpu->add(y.data(), x.data(), rows * ld).ok());
  ASSERT_TRUE(cuda->add(dy.data(), dx.data(), rows * ld).ok());
  EXPECT_EQ(download(dy), y);
  // Segments (row, col, dst, length) of a (rows, cols) block of x into a compact buffer.
  const std::vector<int64_t> segments = {0, 0, 0, 7, 2, 10, 7, 40, 36, 3, 47, 1, 20, 50, 48, 3};
  std::vector<float> compact(64, 0.5f);
  DeviceArray<float> dcompact;
  DeviceArray<int64_t> dseg;
  ASSERT_TRUE(dcompact.upload(*cuda, std::span<const float>(compact)).ok());
  ASSERT_TRUE(dseg.upload(*cuda, std::span<const int64_t>(segments)).ok());
  CompactScatterParams p;
  p.segments = 4, p.segment = segments.data(), p.g = x.data(), p.ld = ld;
  p.compact = compact.data();
  ASSERT_TRUE(cpu->compact_scatter_add(p).ok());
  p.segment = dseg.data(), p.g = dx.data(), p.compact = dcompact.data();
  ASSERT_TRUE(cuda->compact_scatter_add(p).ok());
  EXPECT_EQ(download(dcompact), compact);
  EXPECT_EQ(compact[63], 0.5f);  // past the last segment: untouched
}

struct Case {
  const char* name;
  bool recompute;
  bool all_trainable;
  bool sink = false;  // with the controlled-collapse sink loss on two heads (pretrain --collapse)
};

class CudaTraining : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    model_ = bf16_training::small_model();
    ASSERT_NE(model_, nullptr);
    cpu_ = make_cpu_backend();
    cuda_ = cuda_backend();
    ASSERT_NE(cuda_, nullptr);
    ASSERT_TRUE(make_resident(*model_, *cuda_).ok());
  }

  FrozenMask mask() const {
    if (GetParam().all_trainable) return FrozenMask::all_trainable(model_->arena);
    // Two non-adjacent heads of layer 0 and one of layer 1: several row runs of a fused QKV
    // weight and several column runs of a dense weight.
    SurgeryPlan plan;
    plan.targets = {{0, 0}, {0, 2}, {1, 3}};
    const BloomConfig& c = model_->config;
    absl::StatusOr<FrozenMask> m =
        surgery_mask(model_->arena, HeadGeometry{c.n_layer, c.n_head, c.head_dim()}, plan);
    EXPECT_TRUE(m.ok()) << m.status();
    return *std::move(m);
  }

  // Two rows of 24 tokens, the second right-padded after 15 (pads unscored).
  void inputs(ForwardInputs& in) {
    std::mt19937 rng(11);
    std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(model_->config.vocab_size - 1));
    const int64_t T = 24;
    ids_.resize(2 * T), mask_.assign(2 * T, 1), targets_.resize(2 * T);
    for (int32_t& t : ids_) t = id(rng);
    for (int64_t t = 15; t < T; ++t) mask_[T + t] = 0;
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const bool scored = t + 1 < T && mask_[b * T + t + 1] != 0;
        targets_[b * T + t] = scored ? ids_[b * T + t + 1] : -1;
      }
    }
    in.batch = 2, in.seq = T;
    in.ids = ids_.data(), in.mask = mask_.data(), in.targets = targets_.data();
  }

  std::unique_ptr<BloomModel> model_;
  std::unique_ptr<Backend> cpu_, cuda_;
  std::vector<int32_t> ids_, targets_;
  std::vector<uint8_t> mask_;
};

TEST_P(CudaTraining, CompactGradientMatchesTheCpuAndFrozenElementsGetNone) {
  const FrozenMask m = mask();
  ForwardInputs in;
  inputs(in);
  CompactGradients want(m.words(), m.elements());
  CompactGradients got(m.words(), m.elements(), *cuda_);
  ASSERT_TRUE(got.status().ok()) << got.status();
  ASSERT_EQ(got.size(), m.trainable_count());
  // With the sink loss: heads 0:2 and 1:3 (weight 2 and 1), both trainable in the surgery mask
  // or in every element's case; its value is a loss, within the loss bound.
  SinkLoss cpu_sink, cuda_sink;
  if (GetParam().sink) {
    const BloomConfig& cfg = model_->config;
    cpu_sink.weight.assign(static_cast<size_t>(cfg.n_layer * cfg.n_head), 0.0f);
    cpu_sink.weight[0 * cfg.n_head + 2] = 2.0f;
    cpu_sink.weight[1 * cfg.n_head + 3] = 1.0f;
    cuda_sink.weight = cpu_sink.weight;
  }
  // Two micro-batches' worth, as the trainer accumulates (the second at half scale).
  for (double scale : {1.0, 0.5}) {
    absl::StatusOr<ForwardResult> c = bloom_forward_backward(
        *model_, *cpu_, in, want, scale, GetParam().recompute, GetParam().sink ? &cpu_sink : nullptr);
    ASSERT_TRUE(c.ok()) << c.status();
    absl::StatusOr<ForwardResult> g = bloom_forward_backward(
        *model_, *cuda_, in, got, scale, GetParam().recompute, GetParam().sink ? &cuda_sink : nullptr);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->scored, c->scored);
    EXPECT_LE(std::abs(g->loss - c->loss), kLossBound * std::abs(c->loss));
    if (GetParam().sink) {
      EXPECT_GT(cpu_sink.value, 0.0);
      EXPECT_LE(std::abs(cuda_sink.value - cpu_sink.value), kLossBound * cpu_sink.value);
    }
  }
  std::vector<float> g;
  ASSERT_TRUE(got.download(g).ok());
  ASSERT_EQ(static_cast<int64_t>(g.size()), want.size());
  // Per parameter tensor, over its trainable elements.
  int64_t checked = 0, bad = 0;
  double worst = 0.0;  // max over elements of |diff| / (kRel |ref| + kAbs max |ref|)
  std::vector<double> tensor_max;
  for (const ParameterInfo& p : model_->arena.parameters()) {
    double max_ref = 0.0;
    std::vector<int64_t> positions;
    for (int64_t i = 0; i < want.size(); ++i) {
      const int64_t a = want.arena_index(i);
      if (a >= p.offset && a < p.offset + p.numel) {
        positions.push_back(i);
        max_ref = std::max(max_ref, std::abs(static_cast<double>(want.data()[i])));
      }
    }
    for (int64_t i : positions) {
      const double ref = want.data()[i];
      const double bound = kRel * std::abs(ref) + kAbs * max_ref;
      const double diff = std::abs(static_cast<double>(g[i]) - ref);
      if (bound > 0) worst = std::max(worst, diff / bound);
      if (!(diff <= bound)) {
        if (++bad <= 10) {
          ADD_FAILURE() << p.name << " arena " << want.arena_index(i) << ": cuda " << g[i]
                        << " cpu " << ref << " bound " << bound;
        }
      }
      ++checked;
    }
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(checked, want.size());
  std::printf("[ measured ] %s: %lld trainable elements, worst |cuda - cpu| / bound = %.3g\n",
              GetParam().name, static_cast<long long>(checked), worst);

  // Frozen elements get no gradient: one masked SGD step on the resident arena with the device
  // compact gradient leaves every frozen element's bits as they were.
  std::vector<int64_t> index(static_cast<size_t>(got.size()));
  got.arena_indices(0, got.size(), index.data());
  DeviceArray<int64_t> dindex;
  ASSERT_TRUE(dindex.upload(*cuda_, std::span<const int64_t>(index)).ok());
  MaskedAdamWParams sgd;
  sgd.n = got.size(), sgd.index = dindex.data();
  sgd.params = model_->device->arena.data();
  sgd.grad = got.data();
  sgd.lr = 0.1f;
  ASSERT_TRUE(cuda_->masked_sgd(sgd).ok());
  std::vector<std::byte> after;
  ASSERT_TRUE(model_->device->arena.download(after).ok());
  const float* before = reinterpret_cast<const float*>(model_->arena.base());
  const float* now = reinterpret_cast<const float*>(after.data());
  int64_t frozen_changed = 0, trainable_moved = 0;
  for (int64_t e = 0; e < m.elements(); ++e) {
    const bool same = std::memcmp(before + e, now + e, sizeof(float)) == 0;
    if (!m.trainable(e) && !same) ++frozen_changed;
    if (m.trainable(e) && !same) ++trainable_moved;
  }
  EXPECT_EQ(frozen_changed, 0);
  EXPECT_GT(trainable_moved, got.size() / 2);
}

INSTANTIATE_TEST_SUITE_P(Surgery, CudaTraining,
                         ::testing::Values(Case{"surgery", false, false},
                                           Case{"surgery_recompute", true, false},
                                           Case{"all_trainable", false, true},
                                           Case{"surgery_sink_loss", false, false, true},
                                           Case{"surgery_sink_loss_recompute", true, false, true}),
                         [](const auto& info) { return std::string(info.param.name); });

// The trainer on the device: 20 masked AdamW steps (two micro-batches each, clipping on) on the
// resident arena against the same steps on the CPU. Frozen elements stay bit-identical to the
// initial weights; trainable ones and the losses stay within the bounds of TOLERANCES.md
// ("Training on the CUDA backend").
TEST(CudaTrainer, TwentyAdamWStepsMatchTheCpuAndFrozenElementsAreBitIdentical) {
  BloomConfig c;
  c.vocab_size = 311, c.n_layer = 2, c.n_head = 4, c.hidden_size = 4 * 64;
  absl::StatusOr<BloomModel> a = allocate_bloom_model(c);
  absl::StatusOr<BloomModel> b = allocate_bloom_model(c);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(init_bloom_weights(*a, 17, 0.08).ok());
  ASSERT_TRUE(init_bloom_weights(*b, 17, 0.08).ok());
  const size_t bytes = a->arena.size_bytes();
  const std::vector<std::byte> initial(a->arena.base(), a->arena.base() + bytes);
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  ASSERT_TRUE(make_resident(*b, *cuda).ok());
  SurgeryPlan plan;
  plan.targets = {{0, 1}, {1, 0}, {1, 2}};
  absl::StatusOr<FrozenMask> mask =
      surgery_mask(a->arena, HeadGeometry{c.n_layer, c.n_head, c.head_dim()}, plan);
  ASSERT_TRUE(mask.ok()) << mask.status();
  OptimizerOptions opt;  // AdamW, clip 1.0
  Trainer on_cpu(*a, *cpu, *mask, opt), on_cuda(*b, *cuda, *mask, opt);
  // Micro-batches of 2 x 16 random tokens, the second of each step right-padded.
  std::mt19937 rng(5);
  constexpr double kLr = 1e-3;
  constexpr int kSteps = 20;
  double worst_loss = 0.0, worst_norm = 0.0;
  for (int step = 0; step < kSteps; ++step) {
    const std::vector<MicroBatch> mbs = bf16_training::step_batches(rng, c.vocab_size);
    absl::StatusOr<StepResult> want = on_cpu.step(mbs, kLr);
    ASSERT_TRUE(want.ok()) << want.status();
    absl::StatusOr<StepResult> got = on_cuda.step(mbs, kLr);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->finite);
    worst_loss = std::max(worst_loss, std::abs(got->loss - want->loss) / std::abs(want->loss));
    worst_norm =
        std::max(worst_norm, std::abs(got->grad_norm - want->grad_norm) / want->grad_norm);
    EXPECT_LE(std::abs(got->loss - want->loss), kStepLossBound * std::abs(want->loss))
        << "step " << step;
    EXPECT_LE(std::abs(got->grad_norm - want->grad_norm), kStepNormBound * want->grad_norm)
        << "step " << step;
  }
  EXPECT_EQ(on_cuda.step_count(), kSteps);
  // The host arena is the record until download_weights refreshes it.
  EXPECT_EQ(std::memcmp(b->arena.base(), initial.data(), bytes), 0);
  ASSERT_TRUE(on_cuda.download_weights().ok());
  ASSERT_TRUE(on_cuda.download_optimizer_state().ok());
  const float* w0 = reinterpret_cast<const float*>(initial.data());
  const float* wa = reinterpret_cast<const float*>(a->arena.base());
  const float* wb = reinterpret_cast<const float*>(b->arena.base());
  int64_t frozen_changed = 0, moved = 0;
  double worst_w = 0.0, max_step = 0.0;
  for (int64_t e = 0; e < mask->elements(); ++e) {
    if (!mask->trainable(e)) {
      frozen_changed += std::memcmp(wb + e, w0 + e, sizeof(float)) != 0 ? 1 : 0;
      continue;
    }
    moved += wb[e] != w0[e] ? 1 : 0;
    worst_w = std::max(worst_w, std::abs(static_cast<double>(wb[e]) - wa[e]));
    max_step = std::max(max_step, std::abs(static_cast<double>(wa[e]) - w0[e]));
  }
  EXPECT_EQ(frozen_changed, 0);
  EXPECT_GT(moved, mask->trainable_count() / 2);
  // AdamW's normalised update is about lr per step whatever the gradient's size, so rounding
  // of a near-zero gradient can move the two sides apart by up to 2 lr per step; the bound is
  // a tenth of that over the run (TOLERANCES.md).
  EXPECT_LE(worst_w, kWeightFractionOfWorstCase * 2 * kSteps * kLr);
  // The moments came back: the same length and close to the CPU's.
  ASSERT_EQ(on_cuda.first_moment().size(), on_cpu.first_moment().size());
  std::printf("[ measured ] 20 AdamW steps: worst weight |cuda - cpu| %.3g (largest CPU move "
              "%.3g), worst relative loss difference %.3g, gradient norm %.3g\n",
              worst_w, max_step, worst_loss, worst_norm);
}

// A non-finite gradient on the device: the step is skipped (skip_nonfinite), the cause names the
// tensor from a downloaded copy of the device gradient, and the resident weights stay as they were.
TEST(CudaTrainer, NonFiniteDeviceGradientIsNamedAndSkipped) {
  BloomConfig c;
  c.vocab_size = 311, c.n_layer = 2, c.n_head = 4, c.hidden_size = 4 * 64;
  absl::StatusOr<BloomModel> m = allocate_bloom_model(c);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(init_bloom_weights(*m, 17, 0.08).ok());
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  ASSERT_TRUE(make_resident(*m, *cuda).ok());
  SurgeryPlan plan;
  plan.targets = {{1, 2}};
  absl::StatusOr<FrozenMask> mask =
      surgery_mask(m->arena, HeadGeometry{c.n_layer, c.n_head, c.head_dim()}, plan);
  ASSERT_TRUE(mask.ok()) << mask.status();
  OptimizerOptions opt;
  opt.skip_nonfinite = true;
  Trainer trainer(*m, *cuda, *mask, opt);
  Backend* device = cuda.get();
  StepFaultHook hook;
  hook.after_backward = [device](int64_t, CompactGradients& g) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    ASSERT_TRUE(device->copy_to_device(g.data() + 7, &nan, sizeof nan).ok());
  };
  trainer.set_fault_hook(std::move(hook));
  MicroBatch mb;
  mb.batch = 1, mb.seq = 8;
  mb.ids = {3, 14, 15, 92, 65, 35, 89, 79};
  mb.targets = {14, 15, 92, 65, 35, 89, 79, -1};
  std::vector<std::byte> before;
  ASSERT_TRUE(m->device->arena.download(before).ok());
  absl::StatusOr<StepResult> r = trainer.step(std::vector<MicroBatch>{mb}, 1e-3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->finite);
  EXPECT_NE(r->nonfinite.find("non-finite gradient in h.1.self_attention.query_key_value.weight"),
            std::string::npos)
      << r->nonfinite;
  std::vector<std::byte> after;
  ASSERT_TRUE(m->device->arena.download(after).ok());
  EXPECT_TRUE(before == after);
}

// The compact gradient must live where the backward runs: host values with a CUDA backward are
// refused, not handed to the device as host pointers.
TEST(CudaTrainingErrors, HostCompactGradientWithACudaBackwardIsRefused) {
  BloomConfig c;
  c.vocab_size = 64, c.n_layer = 1, c.n_head = 2, c.hidden_size = 16;
  absl::StatusOr<BloomModel> m = allocate_bloom_model(c);
  ASSERT_TRUE(m.ok());
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  ASSERT_TRUE(make_resident(*m, *cuda).ok());
  const std::vector<int32_t> ids = {1, 2, 3}, targets = {2, 3, -1};
  ForwardInputs in;
  in.batch = 1, in.seq = 3, in.ids = ids.data(), in.targets = targets.data();
  CompactGradients grads(std::vector<uint64_t>((m->arena.size_elements() + 63) / 64, ~0ull),
                         m->arena.size_elements());
  absl::StatusOr<ForwardResult> t = bloom_forward_backward(*m, *cuda, in, grads);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(t.status().message().find("lives on cpu"), std::string::npos) << t.status();
}

// The storage-typed bookkeeping ops of a 16-bit tape: the CPU twin's bits (one fp32 add and one
// rounding per element; column sums of widened elements in double in row order).
TEST(CudaTapeOps, StoredAddAndColumnSumsMatchTheCpuTwinBitForBit) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  for (DType storage : {DType::kBF16, DType::kF16}) {
    std::mt19937 rng(4);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int64_t rows = 29, cols = 45, ld = 50, n = rows * ld;
    std::vector<float> xf(static_cast<size_t>(n)), yf(xf.size());
    for (float& v : xf) v = normal(rng);
    for (float& v : yf) v = normal(rng);
    std::vector<uint16_t> x(xf.size()), y(xf.size());
    convert_from_f32(storage, xf.data(), x.data(), xf.size());
    convert_from_f32(storage, yf.data(), y.data(), yf.size());
    DeviceArray<uint16_t> dx, dy;
    DeviceArray<float> dsum;
    ASSERT_TRUE(dx.upload(*cuda, std::span<const uint16_t>(x)).ok());
    ASSERT_TRUE(dy.upload(*cuda, std::span<const uint16_t>(y)).ok());
    ASSERT_TRUE(dsum.resize(*cuda, cols).ok());
    std::vector<float> sum(static_cast<size_t>(cols));
    ASSERT_TRUE(cpu->column_sums_stored(storage, x.data() + 3, rows, cols, ld, sum.data()).ok());
    ASSERT_TRUE(cuda->column_sums_stored(storage, dx.data() + 3, rows, cols, ld, dsum.data()).ok());
    EXPECT_EQ(download(dsum), sum) << dtype_name(storage);
    const std::vector<uint16_t> y0 = y;
    ASSERT_TRUE(cpu->add_stored(storage, y.data(), x.data(), n).ok());
    ASSERT_TRUE(cuda->add_stored(storage, dy.data(), dx.data(), n).ok());
    EXPECT_EQ(download(dy), y) << dtype_name(storage);
    EXPECT_NE(y, y0);
  }
}

// One backward over bf16 weights and activations on the device against the CPU twin, into the
// compact gradient (two accumulated micro-batches, scales 1 and 0.5): per parameter tensor, the
// relative norm of the difference (an rms over its elements) within twice the rms of 2R
// independent roundings, 2 sqrt(2R / 3) u (TOLERANCES.md, "Training with 16-bit weights"); the
// losses within 2R u; and recomputation on the device gives the device's bits.
// Also in f16 (u = 2^-11).
TEST(CudaBf16Training, CompactGradientMatchesTheTwinAndRecomputationIsBitIdentical) {
  using namespace bf16_training;
  constexpr double kRoundings = 18;
  struct Variant {
    DType storage;
    bool all;
  };
  for (const Variant variant : {Variant{DType::kBF16, false}, Variant{DType::kBF16, true},
                                Variant{DType::kF16, false}}) {
    const bool all = variant.all;
    const double kU = variant.storage == DType::kBF16 ? 1.0 / 256.0 : 1.0 / 2048.0;
    std::unique_ptr<BloomModel> a = small_model(), b = small_model();
    ASSERT_TRUE(a && b);
    std::unique_ptr<Backend> cpu = make_cpu_backend();
    std::unique_ptr<Backend> cuda = cuda_backend();
    ASSERT_NE(cuda, nullptr);
    ASSERT_TRUE(make_resident(*a, *cpu, variant.storage).ok());
    ASSERT_TRUE(make_resident(*b, *cuda, variant.storage).ok());
    const FrozenMask m = all ? FrozenMask::all_trainable(a->arena) : three_head_mask(*a);
    CompactGradients twin(m.words(), m.elements());
    CompactGradients device(m.words(), m.elements(), *cuda);
    CompactGradients recomputed(m.words(), m.elements(), *cuda);
    std::mt19937 rng(13);
    const std::vector<MicroBatch> mbs = step_batches(rng, a->config.vocab_size);
    for (size_t k = 0; k < mbs.size(); ++k) {
      ForwardInputs in;
      in.batch = mbs[k].batch, in.seq = mbs[k].seq;
      in.ids = mbs[k].ids.data(), in.mask = mbs[k].mask.data(), in.targets = mbs[k].targets.data();
      const double scale = k == 0 ? 1.0 : 0.5;
      absl::StatusOr<ForwardResult> c = bloom_forward_backward(*a, *cpu, in, twin, scale);
      absl::StatusOr<ForwardResult> g = bloom_forward_backward(*b, *cuda, in, device, scale);
      absl::StatusOr<ForwardResult> r =
          bloom_forward_backward(*b, *cuda, in, recomputed, scale, /*recompute=*/true);
      ASSERT_TRUE(c.ok() && g.ok() && r.ok()) << c.status() << g.status() << r.status();
      EXPECT_LE(std::abs(g->loss - c->loss), 2 * kRoundings * kU * std::abs(c->loss));
      EXPECT_EQ(r->loss, g->loss);
    }
    std::vector<float> want, got, again;
    ASSERT_TRUE(twin.download(want).ok() && device.download(got).ok() &&
                recomputed.download(again).ok());
    EXPECT_EQ(got, again) << "recomputation changed the device gradient";
    double worst = 0.0;
    int64_t tensors = 0;
    for (const ParameterInfo& p : a->arena.parameters()) {
      double diff = 0.0, ref = 0.0;
      int64_t n = 0;
      for (int64_t i = 0; i < twin.size(); ++i) {
        const int64_t e = twin.arena_index(i);
        if (e < p.offset || e >= p.offset + p.numel) continue;
        diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
        ref += static_cast<double>(want[i]) * want[i];
        ++n;
      }
      if (n == 0 || ref == 0.0) continue;
      ++tensors;
      const double rel = std::sqrt(diff / ref);
      worst = std::max(worst, rel);
      EXPECT_LE(rel, 2 * std::sqrt(2 * kRoundings / 3) * kU)
          << p.name << (all ? " (all trainable) " : " ") << dtype_name(variant.storage);
    }
    EXPECT_GT(tensors, 0);
    std::printf("[ measured ] %s compact gradient, device vs twin (%s): worst relative norm of "
                "the difference per tensor %.3g over %lld tensors\n",
                dtype_name(variant.storage), all ? "every element trainable" : "three-head mask",
                worst,
                static_cast<long long>(tensors));
  }
}

// 16-bit weights on the device against the CPU's bf16 twin (TOLERANCES.md, "Training with 16-bit
// weights"): 20 masked AdamW steps with a three-head surgery mask; the bounds are twice the
// twin's bounds against fp32 (each side within them of the fp32 run); frozen elements
// bit-identical; the resident bf16 copy is the masters (and the frozen fp32 values) rounded to
// nearest even, on both.
TEST(CudaBf16Trainer, TwentyMaskedAdamWStepsMatchTheCpuTwin) {
  using namespace bf16_training;
  std::unique_ptr<BloomModel> a = small_model(), b = small_model();
  ASSERT_TRUE(a && b);
  const std::vector<float> initial = snapshot(*a);
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  ASSERT_TRUE(make_resident(*a, *cpu, DType::kBF16).ok());
  ASSERT_TRUE(make_resident(*b, *cuda, DType::kBF16).ok());
  const FrozenMask mask = three_head_mask(*a);
  OptimizerOptions opt;  // AdamW, clip 1.0
  Trainer twin(*a, *cpu, mask, opt), device(*b, *cuda, mask, opt);
  constexpr double kU = 1.0 / 256.0;  // bf16 unit roundoff, 2^-8
  constexpr double kRoundings = 18;   // bf16 stores from the embedding to the loss (2 layers)
  constexpr double kLr = 1e-3;
  constexpr int kSteps = 20;
  std::mt19937 rng(5);
  double worst_loss = 0.0, worst_norm = 0.0;
  for (int step = 0; step < kSteps; ++step) {
    const std::vector<MicroBatch> mbs = step_batches(rng, a->config.vocab_size);
    absl::StatusOr<StepResult> want = twin.step(mbs, kLr);
    ASSERT_TRUE(want.ok()) << want.status();
    absl::StatusOr<StepResult> got = device.step(mbs, kLr);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->finite);
    const double dl = std::abs(got->loss - want->loss) / std::abs(want->loss);
    const double dn = std::abs(got->grad_norm - want->grad_norm) / want->grad_norm;
    worst_loss = std::max(worst_loss, dl), worst_norm = std::max(worst_norm, dn);
    EXPECT_LE(dl, 2 * kRoundings * kU) << "step " << step;
    EXPECT_LE(dn, 2 * 2 * kRoundings * kU) << "step " << step;
  }
  EXPECT_EQ(snapshot(*b), initial);  // the host record until download_weights
  ASSERT_TRUE(twin.download_weights().ok());
  ASSERT_TRUE(device.download_weights().ok());
  EXPECT_EQ(frozen_changed(*b, mask, initial), 0);
  EXPECT_EQ(copy_mismatches(*a, *cpu), 0);
  EXPECT_EQ(copy_mismatches(*b, *cuda), 0);
  const float* wa = reinterpret_cast<const float*>(a->arena.base());
  const float* wb = reinterpret_cast<const float*>(b->arena.base());
  double worst_w = 0.0, sum_w = 0.0;
  int64_t moved = 0;
  for (int64_t e = 0; e < mask.elements(); ++e) {
    if (!mask.trainable(e)) continue;
    const double d = std::abs(static_cast<double>(wb[e]) - wa[e]);
    worst_w = std::max(worst_w, d), sum_w += d;
    moved += wb[e] != initial[e] ? 1 : 0;
  }
  const double mean_w = sum_w / static_cast<double>(mask.trainable_count());
  EXPECT_GT(moved, mask.trainable_count() / 2);
  EXPECT_LE(worst_w, 2 * kSteps * kLr);
  EXPECT_LE(mean_w, 2 * kSteps * kLr * 2 * std::sqrt(2 * kRoundings / 3) * kU);
  std::printf("[ measured ] bf16 device vs CPU twin, 20 AdamW steps: worst loss %.3g, norm %.3g "
              "(relative); weights worst %.3g, mean %.3g\n",
              worst_loss, worst_norm, worst_w, mean_w);
}

// `run_training` on the device with bf16 weights: the saved fp32 checkpoint holds every frozen
// element with the base checkpoint's bits, and a run stopped after step 3 and resumed from
// step_2 ends with the same bytes (weights and optimizer.bin) as the uninterrupted run.
TEST(CudaBf16TrainRun, FrozenBitsSurviveAndResumeIsBitExact) {
  using namespace bf16_training;
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() /
                        ("engine_cuda_bf16_train_run." + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  std::unique_ptr<BloomModel> m = small_model();
  ASSERT_TRUE(m);
  ASSERT_TRUE(save_model_directory(*m, root / "base").ok());
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  const ChunkedDataset ds = testing_fixtures::random_id_dataset(16);
  TrainData data;
  data.train = &ds;
  auto options = [&](const std::string& out) {
    SurgeryTrainOptions o;
    o.model_dir = root / "base";
    o.out_dir = root / out;
    o.plan = three_heads();
    o.seq_len = 16, o.batch = 2, o.grad_accum = 2;
    o.steps = 4;
    o.lr = 1e-3;
    o.checkpoint_every = 2;
    o.storage = DType::kBF16;
    return o;
  };
  absl::StatusOr<TrainRunResult> whole = run_surgery_training(options("whole"), data, *cuda);
  ASSERT_TRUE(whole.ok()) << whole.status();
  SurgeryTrainOptions first = options("split");
  first.stop_after_step = 3;
  ASSERT_TRUE(run_surgery_training(first, data, *cuda).ok());
  SurgeryTrainOptions second = options("split");
  second.resume = true;
  absl::StatusOr<TrainRunResult> resumed = run_surgery_training(second, data, *cuda);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  auto read = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  for (const char* file : {"final/model.safetensors", "final/optimizer.bin"}) {
    const std::string x = read(root / "whole" / file), y = read(root / "split" / file);
    EXPECT_FALSE(x.empty()) << file;
    EXPECT_TRUE(x == y) << file << " differs between the uninterrupted and the resumed run";
  }
  // The same with bf16 checkpoints (--checkpoint_dtype bf16: rounded weights plus masters.bin).
  for (const char* out : {"whole16", "split16"}) {
    SurgeryTrainOptions o = options(out);
    o.checkpoint_storage = DType::kBF16;
    if (std::string(out) == "split16") {
      o.stop_after_step = 3;
      ASSERT_TRUE(run_surgery_training(o, data, *cuda).ok());
      o.stop_after_step = 0;
      o.resume = true;
    }
    absl::StatusOr<TrainRunResult> r = run_surgery_training(o, data, *cuda);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  for (const char* file : {"final/model.safetensors", "final/optimizer.bin", "final/masters.bin"}) {
    const std::string x = read(root / "whole16" / file), y = read(root / "split16" / file);
    EXPECT_FALSE(x.empty()) << file;
    EXPECT_TRUE(x == y) << file << " differs between the uninterrupted and the resumed bf16 run";
  }
  EXPECT_NE(read(root / "whole16" / "final" / "model.safetensors").find("\"BF16\""),
            std::string::npos);
  absl::StatusOr<BloomModel> base = load_model_directory(root / "base");
  absl::StatusOr<BloomModel> trained = load_model_directory(root / "whole" / "final");
  ASSERT_TRUE(base.ok() && trained.ok());
  const FrozenMask mask = three_head_mask(*base);
  // Per tensor element: every frozen element of the saved safetensors has the base's bits.
  const std::vector<float> b = snapshot(*base), t = snapshot(*trained);
  for (const ParameterInfo& p : base->arena.parameters()) {
    int64_t changed = 0;
    for (int64_t i = 0; i < p.numel; ++i) {
      const int64_t e = p.offset + i;
      if (!mask.trainable(e)) changed += std::memcmp(&b[e], &t[e], sizeof(float)) != 0 ? 1 : 0;
    }
    EXPECT_EQ(changed, 0) << p.name;
  }
  int64_t moved = 0;
  for (int64_t e = 0; e < mask.elements(); ++e) moved += mask.trainable(e) && b[e] != t[e];
  EXPECT_GT(moved, mask.trainable_count() / 2);
  fs::remove_all(root);
}


// `run_pretraining` with bf16 weights (what `engine pretrain --dtype bf16`, or auto on a CUDA
// device for head_dim 64, runs) on the device against the CPU twin: both record bf16 in the
// start event, every step's loss and gradient norm within the device-vs-twin bounds of
// TwentyMaskedAdamWStepsMatchTheCpuTwin (every element trains here), and the final fp32
// masters within AdamW's worst case 2 x steps x lr of each other.
TEST(CudaBf16Pretrain, SmokeMatchesTheTwin) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() /
                        ("engine_cuda_bf16_pretrain." + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  {
    std::ofstream corpus(root / "corpus.txt");
    const char* words[] = {"the", "fox", "jumps", "over", "a", "lazy", "dog", "and"};
    uint32_t state = 7;
    for (int d = 0; d < 60; ++d) {
      for (int w = 0; w < 8 + d % 5; ++w) {
        state = state * 1103515245u + 12345u;
        corpus << words[(state >> 16) % 8] << ' ';
      }
      corpus << "number " << d << ".\n\n";
    }
  }
  constexpr double kU = 1.0 / 256.0;  // bf16 unit roundoff, 2^-8
  constexpr double kRoundings = 18;   // bf16 stores from the embedding to the loss (2 layers)
  constexpr double kLr = 1e-3;
  constexpr int64_t kSteps = 8;
  auto options = [&](const std::string& out) {
    PretrainOptions o;
    o.data = root / "corpus.txt";
    o.out_dir = root / out;
    o.n_layer = 2, o.n_head = 4, o.hidden_size = 4 * 64;
    o.holdout = 0.05;
    o.train = default_pretrain_recipe();
    o.train.seq_len = 16, o.train.batch = 2, o.train.grad_accum = 1;
    o.train.steps = kSteps, o.train.lr = kLr, o.train.warmup = 0;
    o.train.schedule = ScheduleKind::kConstant;
    o.train.eval_every = 0;
    o.train.storage = DType::kBF16;
    return o;
  };
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  absl::StatusOr<PretrainResult> twin = run_pretraining(options("twin"), *cpu);
  ASSERT_TRUE(twin.ok()) << twin.status();
  absl::StatusOr<PretrainResult> device = run_pretraining(options("cuda"), *cuda);
  ASSERT_TRUE(device.ok()) << device.status();
  auto events = [&](const std::string& out, const std::string& event) {
    std::ifstream in(root / out / "train" / "metrics.jsonl");
    std::vector<nlohmann::json> lines;
    std::string line;
    while (std::getline(in, line)) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.value("event", "") == event) lines.push_back(j);
    }
    return lines;
  };
  for (const char* out : {"twin", "cuda"}) {
    const std::vector<nlohmann::json> starts = events(out, "start");
    ASSERT_EQ(starts.size(), 1u) << out;
    EXPECT_EQ(starts[0].value("dtype", ""), "bf16") << out;
  }
  const std::vector<nlohmann::json> a = events("twin", "step"), b = events("cuda", "step");
  ASSERT_EQ(a.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(b.size(), a.size());
  double worst_loss = 0.0, worst_norm = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double la = a[i]["loss"].get<double>(), lb = b[i]["loss"].get<double>();
    const double na = a[i]["grad_norm"].get<double>(), nb = b[i]["grad_norm"].get<double>();
    const double dl = std::abs(lb - la) / std::abs(la), dn = std::abs(nb - na) / na;
    worst_loss = std::max(worst_loss, dl), worst_norm = std::max(worst_norm, dn);
    EXPECT_LE(dl, 2 * kRoundings * kU) << "step " << i + 1;
    EXPECT_LE(dn, 2 * 2 * kRoundings * kU) << "step " << i + 1;
  }
  // Premise: the run learns, so stale 16-bit weights would show in the losses.
  EXPECT_LT(a.back()["loss"].get<double>(), a.front()["loss"].get<double>());
  absl::StatusOr<BloomModel> ma = load_model_directory(root / "twin");
  absl::StatusOr<BloomModel> mb = load_model_directory(root / "cuda");
  absl::StatusOr<BloomModel> init = load_model_directory(root / "cuda" / "init");
  ASSERT_TRUE(ma.ok() && mb.ok() && init.ok()) << ma.status() << mb.status() << init.status();
  const std::vector<float> wa = bf16_training::snapshot(*ma), wb = bf16_training::snapshot(*mb),
                           w0 = bf16_training::snapshot(*init);
  ASSERT_EQ(wa.size(), wb.size());
  double worst_w = 0.0;
  int64_t moved = 0;
  for (size_t e = 0; e < wa.size(); ++e) {
    worst_w = std::max(worst_w, std::abs(static_cast<double>(wa[e]) - wb[e]));
    moved += wb[e] != w0[e] ? 1 : 0;
  }
  EXPECT_LE(worst_w, 2 * kSteps * kLr);
  EXPECT_GT(moved, static_cast<int64_t>(wb.size() / 2));
  std::printf("[ measured ] bf16 pretrain, device vs CPU twin, %lld steps: worst loss %.3g, norm "
              "%.3g (relative); masters worst %.3g (bound %.3g); loss %.4f -> %.4f\n",
              static_cast<long long>(kSteps), worst_loss, worst_norm, worst_w, 2 * kSteps * kLr,
              a.front()["loss"].get<double>(), a.back()["loss"].get<double>());
  fs::remove_all(root);
}


// Dynamic loss scaling with f16 weights on the device against the CPU's f16 twin, from a scale
// of 2^30 that overflows (TOLERANCES.md, "Dynamic loss scaling for f16 weights"): the same steps
// overflow, every step runs at the same scale, and the clean steps' losses are within twice the
// f16 twin's loss bound R u (u = 2^-11). The overflow flags are compared as a premise, not by a
// bound: a step overflows when its largest scaled gradient passes 65504, and the scale moves by
// 2x between steps, so the two sides disagree only if that element sits within their relative
// difference (about 1e-3) of the limit.
TEST(CudaF16LossScaling, OverflowsAndScalesAsTheTwin) {
  using namespace bf16_training;
  std::unique_ptr<BloomModel> a = small_model(), b = small_model();
  ASSERT_TRUE(a && b);
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> cuda = cuda_backend();
  ASSERT_NE(cuda, nullptr);
  ASSERT_TRUE(make_resident(*a, *cpu, DType::kF16).ok());
  ASSERT_TRUE(make_resident(*b, *cuda, DType::kF16).ok());
  const FrozenMask mask = three_head_mask(*a);
  OptimizerOptions opt;
  opt.loss_scaling = {std::ldexp(1.0, 30), /*dynamic=*/true, /*growth_interval=*/3};
  Trainer twin(*a, *cpu, mask, opt), device(*b, *cuda, mask, opt);
  constexpr double kU = 1.0 / 2048.0;  // f16 unit roundoff, 2^-11
  constexpr double kRoundings = 18;
  std::mt19937 rng(5);
  int overflows = 0, clean = 0;
  double worst_loss = 0.0;
  for (int step = 0; step < 14; ++step) {
    const std::vector<MicroBatch> mbs = step_batches(rng, a->config.vocab_size);
    absl::StatusOr<StepResult> want = twin.step(mbs, 1e-3);
    ASSERT_TRUE(want.ok()) << want.status();
    absl::StatusOr<StepResult> got = device.step(mbs, 1e-3);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->loss_scale, want->loss_scale) << "step " << step;
    EXPECT_EQ(got->overflow, want->overflow) << "step " << step;
    EXPECT_EQ(device.loss_scale(), twin.loss_scale()) << "step " << step;
    if (got->overflow) {
      ++overflows;
    } else {
      ++clean;
      const double dl = std::abs(got->loss - want->loss) / std::abs(want->loss);
      worst_loss = std::max(worst_loss, dl);
      EXPECT_LE(dl, 2 * kRoundings * kU) << "step " << step;
    }
  }
  EXPECT_GE(overflows, 1);
  EXPECT_GE(clean, 3);
  ASSERT_TRUE(device.download_weights().ok());
  EXPECT_EQ(copy_mismatches(*b, *cuda), 0);
  std::printf("[ measured ] f16 loss scaling, device vs twin from 2^30: %d overflows, %d clean "
              "steps, final scale 2^%d, worst clean-step loss %.3g (relative)\n",
              overflows, clean, static_cast<int>(std::log2(device.loss_scale())), worst_loss);
}

}  // namespace
}  // namespace engine
