// Training with 16-bit weights on the CPU's bf16 storage twin (model/trainer.h, "16-bit
// weights"): the backward over bf16 activations and weights, fp32 masters of the trainable
// elements, AdamW on the masters and the bf16 copy refreshed from them. Against fp32 training on
// the same model and batches, within the bounds of docs/TOLERANCES.md ("Training with 16-bit
// weights"); frozen elements bit-identical; the resident copy always the masters rounded to
// nearest even; a run resumed from a checkpoint ends bit-identical to an uninterrupted one.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/model_directory.h"
#include "surgery/surgery_training.h"
#include "tests/bf16_training.h"
#include "tests/training_data.h"
#include "nlohmann/json.hpp"
#include "model/device_model.h"

namespace engine {
namespace {

namespace fs = std::filesystem;
using namespace bf16_training;

// Roundings to bf16 on the path from the embedding to the loss of this 2-layer model: the
// embedding row is stored as is, its LayerNorm output, per block ln1, qkv, attention, x_mid, ln2,
// fc1, GELU, block output (8), ln_f: 1 + 8 L + 1 = 18; the backward rounds as many activation
// gradients again.
constexpr double kForwardRoundings = 18;

// `storage` with unit roundoff `kU`: bf16 2^-8, f16 2^-11 (8 and 11 significant bits) (no loss scaling: this model's
// gradients stay inside f16's range, which the bounds check).
void twin_tracks_f32_training(DType storage, double kU) {
  std::unique_ptr<BloomModel> a = small_model(), b = small_model();
  ASSERT_TRUE(a && b);
  const std::vector<float> initial = snapshot(*a);
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  ASSERT_TRUE(make_resident(*b, *cpu, storage).ok());
  const FrozenMask mask = three_head_mask(*a);
  OptimizerOptions opt;  // AdamW, clip 1.0
  Trainer f32(*a, *cpu, mask, opt), twin(*b, *cpu, mask, opt);
  std::mt19937 rng(5);
  constexpr double kLr = 1e-3;
  constexpr int kSteps = 20;
  double worst_loss = 0.0, worst_norm = 0.0;
  for (int step = 0; step < kSteps; ++step) {
    const std::vector<MicroBatch> mbs = step_batches(rng, a->config.vocab_size);
    absl::StatusOr<StepResult> want = f32.step(mbs, kLr);
    ASSERT_TRUE(want.ok()) << want.status();
    absl::StatusOr<StepResult> got = twin.step(mbs, kLr);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->finite);
    const double dl = std::abs(got->loss - want->loss) / std::abs(want->loss);
    const double dn = std::abs(got->grad_norm - want->grad_norm) / want->grad_norm;
    worst_loss = std::max(worst_loss, dl), worst_norm = std::max(worst_norm, dn);
    EXPECT_LE(dl, kForwardRoundings * kU) << "step " << step;
    EXPECT_LE(dn, 2 * kForwardRoundings * kU) << "step " << step;
  }
  // The host arena is the record until download_weights scatters the masters into it.
  EXPECT_EQ(frozen_changed(*b, mask, initial), 0);
  EXPECT_EQ(snapshot(*b), initial);
  ASSERT_TRUE(twin.download_weights().ok());
  EXPECT_EQ(frozen_changed(*b, mask, initial), 0);
  EXPECT_EQ(copy_mismatches(*b, *cpu), 0);  // trainable: RNE(master); frozen: RNE(initial)
  const float* wa = reinterpret_cast<const float*>(a->arena.base());
  const float* wb = reinterpret_cast<const float*>(b->arena.base());
  double worst_w = 0.0, sum_w = 0.0, max_move = 0.0;
  int64_t moved = 0;
  for (int64_t e = 0; e < mask.elements(); ++e) {
    if (!mask.trainable(e)) continue;
    const double d = std::abs(static_cast<double>(wb[e]) - wa[e]);
    worst_w = std::max(worst_w, d), sum_w += d;
    max_move = std::max(max_move, std::abs(static_cast<double>(wa[e]) - initial[e]));
    moved += wb[e] != initial[e] ? 1 : 0;
  }
  const double mean_w = sum_w / static_cast<double>(mask.trainable_count());
  EXPECT_GT(moved, mask.trainable_count() / 2);
  // Worst element: AdamW's worst case 2 x steps x lr (a near-zero gradient may change sign
  // between the two, each step); mean: twice the normalised update's relative change per step
  // from a gradient off by the rms of 2 x 18 independent roundings, sqrt(36 / 3) u
  // (TOLERANCES.md, "Training with 16-bit weights").
  EXPECT_LE(worst_w, 2 * kSteps * kLr);
  EXPECT_LE(mean_w, kSteps * kLr * 2 * std::sqrt(2 * kForwardRoundings / 3) * kU);
  std::printf("[ measured ] %s twin vs f32, 20 AdamW steps: worst loss %.3g, norm %.3g "
              "(relative); weights worst %.3g, mean %.3g (largest f32 move %.3g)\n",
              dtype_name(storage), worst_loss, worst_norm, worst_w, mean_w, max_move);
}

TEST(Bf16Training, TwinTracksF32TrainingWithinTheBound) {
  twin_tracks_f32_training(DType::kBF16, 1.0 / 256.0);
}

TEST(Bf16Training, F16TwinTracksF32TrainingWithinTheBound) {
  twin_tracks_f32_training(DType::kF16, 1.0 / 2048.0);
}

// Recomputation on the twin: the same ops on the same 16-bit values, so the same bits.
TEST(Bf16Training, RecomputationGivesTheSameBitsOnTheTwin) {
  std::unique_ptr<BloomModel> a = small_model(), b = small_model();
  ASSERT_TRUE(a && b);
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  ASSERT_TRUE(make_resident(*a, *cpu, DType::kBF16).ok());
  ASSERT_TRUE(make_resident(*b, *cpu, DType::kBF16).ok());
  const FrozenMask mask = three_head_mask(*a);
  Trainer plain(*a, *cpu, mask, OptimizerOptions{}), recomputed(*b, *cpu, mask, OptimizerOptions{});
  recomputed.set_recompute(true);
  std::mt19937 rng(9);
  for (int step = 0; step < 3; ++step) {
    const std::vector<MicroBatch> mbs = step_batches(rng, a->config.vocab_size);
    absl::StatusOr<StepResult> x = plain.step(mbs, 1e-3), y = recomputed.step(mbs, 1e-3);
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_EQ(x->loss, y->loss);
    EXPECT_EQ(x->grad_norm, y->grad_norm);
  }
  ASSERT_TRUE(plain.download_weights().ok() && recomputed.download_weights().ok());
  EXPECT_EQ(snapshot(*a), snapshot(*b));
}

class Bf16TrainRun : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            absl::StrCat("engine_bf16_training_", ::getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    std::unique_ptr<BloomModel> m = small_model();
    ASSERT_TRUE(m);
    ASSERT_TRUE(save_model_directory(*m, root_ / "base").ok());
  }
  void TearDown() override { fs::remove_all(root_); }
  SurgeryTrainOptions options(const std::string& out, DType storage) const {
    SurgeryTrainOptions o;
    o.model_dir = root_ / "base";
    o.out_dir = root_ / out;
    o.plan = three_heads();
    o.seq_len = 16, o.batch = 2, o.grad_accum = 2;
    o.steps = 4;
    o.lr = 1e-3;
    o.checkpoint_every = 2;
    o.storage = storage;
    return o;
  }
  static std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  fs::path root_;
};

// bf16 on the twin: checkpoints are fp32 with the frozen elements' bits of the base checkpoint;
// stopped after step 3 and resumed from step_2, the run ends with the same bytes.
TEST_F(Bf16TrainRun, FrozenBitsSurviveAndResumeIsBitExact) {
  const ChunkedDataset ds = testing_fixtures::random_id_dataset(16);
  TrainData data;
  data.train = &ds;
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  ASSERT_TRUE(run_surgery_training(options("whole", DType::kBF16), data, *cpu).ok());
  SurgeryTrainOptions first = options("split", DType::kBF16);
  first.stop_after_step = 3;
  ASSERT_TRUE(run_surgery_training(first, data, *cpu).ok());
  SurgeryTrainOptions second = options("split", DType::kBF16);
  second.resume = true;
  absl::StatusOr<TrainRunResult> resumed = run_surgery_training(second, data, *cpu);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  for (const char* file : {"final/model.safetensors", "final/optimizer.bin"}) {
    const std::string x = read(root_ / "whole" / file), y = read(root_ / "split" / file);
    EXPECT_FALSE(x.empty()) << file;
    EXPECT_TRUE(x == y) << file << " differs between the uninterrupted and the resumed run";
  }
  absl::StatusOr<BloomModel> base = load_model_directory(root_ / "base");
  absl::StatusOr<BloomModel> trained = load_model_directory(root_ / "whole" / "final");
  ASSERT_TRUE(base.ok() && trained.ok());
  const FrozenMask mask = three_head_mask(*base);
  EXPECT_EQ(frozen_changed(*trained, mask, snapshot(*base)), 0);
  int64_t moved = 0;
  const std::vector<float> b = snapshot(*base), t = snapshot(*trained);
  for (int64_t e = 0; e < mask.elements(); ++e) moved += mask.trainable(e) && b[e] != t[e];
  EXPECT_GT(moved, mask.trainable_count() / 2);
  // Resuming in another storage type is refused (the recipe records it).
  SurgeryTrainOptions other = options("split", DType::kF32);
  other.resume = true;
  other.steps = 6;
  EXPECT_FALSE(run_surgery_training(other, data, *cpu).ok());
}

// --checkpoint_dtype bf16: model.safetensors in bf16 (every element what the bf16 copy holds:
// the frozen ones the base rounded, the trainable ones their masters rounded) plus masters.bin,
// so a resume is still bit-exact; bf16 checkpoints of f32 training are refused.
TEST_F(Bf16TrainRun, Bf16CheckpointsHoldTheRoundedWeightsAndMastersAndResumeExactly) {
  const ChunkedDataset ds = testing_fixtures::random_id_dataset(16);
  TrainData data;
  data.train = &ds;
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  auto bf16_options = [&](const std::string& out) {
    SurgeryTrainOptions o = options(out, DType::kBF16);
    o.checkpoint_storage = DType::kBF16;
    return o;
  };
  ASSERT_TRUE(run_surgery_training(bf16_options("whole"), data, *cpu).ok());
  SurgeryTrainOptions first = bf16_options("split");
  first.stop_after_step = 3;
  ASSERT_TRUE(run_surgery_training(first, data, *cpu).ok());
  SurgeryTrainOptions second = bf16_options("split");
  second.resume = true;
  absl::StatusOr<TrainRunResult> resumed = run_surgery_training(second, data, *cpu);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  for (const char* file : {"final/model.safetensors", "final/optimizer.bin", "final/masters.bin"}) {
    const std::string x = read(root_ / "whole" / file), y = read(root_ / "split" / file);
    EXPECT_FALSE(x.empty()) << file;
    EXPECT_TRUE(x == y) << file << " differs between the uninterrupted and the resumed run";
  }
  const std::string st = read(root_ / "whole" / "final" / "model.safetensors");
  EXPECT_NE(st.find("\"BF16\""), std::string::npos);
  EXPECT_EQ(st.find("\"F32\""), std::string::npos);
  absl::StatusOr<BloomModel> base = load_model_directory(root_ / "base");
  absl::StatusOr<BloomModel> trained = load_model_directory(root_ / "whole" / "final");
  ASSERT_TRUE(base.ok() && trained.ok());
  const FrozenMask mask = three_head_mask(*base);
  const std::string raw = read(root_ / "whole" / "final" / "masters.bin");
  ASSERT_EQ(raw.size(), 8 + mask.trainable_count() * sizeof(float));
  std::vector<float> masters(static_cast<size_t>(mask.trainable_count()));
  std::memcpy(masters.data(), raw.data() + 8, masters.size() * sizeof(float));
  const std::vector<float> b = snapshot(*base), t = snapshot(*trained);
  auto rounded = [](float x) { return bf16_to_f32(f32_to_bf16(x)); };
  int64_t bad = 0, moved = 0;
  size_t next = 0;
  for (int64_t e = 0; e < mask.elements(); ++e) {
    const float want = mask.trainable(e) ? rounded(masters[next++]) : rounded(b[e]);
    bad += std::memcmp(&want, &t[e], sizeof(float)) != 0 ? 1 : 0;
    moved += mask.trainable(e) && masters[next - 1] != b[e];
  }
  EXPECT_EQ(bad, 0);
  EXPECT_GT(moved, mask.trainable_count() / 2);
  SurgeryTrainOptions wrong = options("wrong", DType::kF32);
  wrong.checkpoint_storage = DType::kBF16;
  absl::StatusOr<TrainRunResult> refused = run_surgery_training(wrong, data, *cpu);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("--checkpoint_dtype bf16 needs --dtype bf16"),
            std::string::npos)
      << refused.status();
}


// Loss scaling with f16 weights on the twin. A fixed scale of 2^30 overflows the f16 activation
// gradients (the classifier's dhidden alone is about 1e-3 x 2^30 > 65504, f16's largest value):
// the step fails with a non-finite gradient. Dynamic scaling from the same scale skips the
// overflowing steps without touching the weights, halving the scale each time, then trains; after
// `growth_interval` clean steps the scale doubles (and may overflow and halve again).
TEST(F16LossScaling, OverflowIsSkippedAndTheScaleHalvedUntilTrainingRecovers) {
  std::unique_ptr<BloomModel> a = small_model(), b = small_model();
  ASSERT_TRUE(a && b);
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  ASSERT_TRUE(make_resident(*a, *cpu, DType::kF16).ok());
  ASSERT_TRUE(make_resident(*b, *cpu, DType::kF16).ok());
  const FrozenMask mask = three_head_mask(*a);
  const double start = std::ldexp(1.0, 30);
  OptimizerOptions fixed;
  fixed.loss_scaling = {start, /*dynamic=*/false};
  Trainer without(*a, *cpu, mask, fixed);
  std::mt19937 rng_a(5);
  absl::StatusOr<StepResult> failed = without.step(step_batches(rng_a, a->config.vocab_size), 1e-3);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("gradient"), std::string::npos) << failed.status();

  OptimizerOptions dynamic;
  constexpr int64_t kGrowth = 3;
  dynamic.loss_scaling = {start, /*dynamic=*/true, kGrowth};
  Trainer with(*b, *cpu, mask, dynamic);
  std::mt19937 rng(5);
  int overflows = 0, clean = 0, growths = 0, clean_run = 0;
  double first_loss = 0.0, last_loss = 0.0;
  for (int step = 0; step < 24; ++step) {
    std::vector<float> before, after;
    ASSERT_TRUE(with.download_masters(before).ok());
    absl::StatusOr<StepResult> r = with.step(step_batches(rng, b->config.vocab_size), 1e-3);
    ASSERT_TRUE(r.ok()) << "step " << step << ": " << r.status();
    ASSERT_TRUE(with.download_masters(after).ok());
    ASSERT_TRUE(std::isfinite(r->loss));
    if (r->overflow) {
      ++overflows, clean_run = 0;
      EXPECT_FALSE(r->finite);
      EXPECT_EQ(with.loss_scale(), r->loss_scale / 2) << "step " << step;
      EXPECT_EQ(before, after) << "step " << step << ": a skipped step changed the masters";
    } else {
      ++clean;
      if (clean == 1) first_loss = r->loss;
      last_loss = r->loss;
      EXPECT_TRUE(r->finite && std::isfinite(r->grad_norm)) << "step " << step;
      EXPECT_NE(before, after) << "step " << step;
      if (++clean_run == kGrowth) {
        ++growths, clean_run = 0;
        EXPECT_EQ(with.loss_scale(), r->loss_scale * 2) << "step " << step;
      } else {
        EXPECT_EQ(with.loss_scale(), r->loss_scale) << "step " << step;
      }
    }
  }
  EXPECT_GE(overflows, 1);
  EXPECT_GE(clean, 2 * kGrowth);
  EXPECT_GE(growths, 1);
  EXPECT_LT(with.loss_scale(), start);
  // The resident f16 copy is the record rounded to nearest even: skipped steps wrote nothing.
  ASSERT_TRUE(with.download_weights().ok());
  EXPECT_EQ(copy_mismatches(*b, *cpu), 0);
  std::printf("[ measured ] f16 dynamic loss scaling from 2^30: %d overflows skipped, %d clean "
              "steps, %d growths, final scale 2^%d; loss %.4f -> %.4f\n",
              overflows, clean, growths, static_cast<int>(std::log2(with.loss_scale())),
              first_loss, last_loss);
}

// Dynamic loss scaling in a run: every step line carries its loss scale (overflows marked), the
// checkpoints record the scale and the clean-step count, and a run stopped after step 11 and
// resumed from step_10 ends with the same bytes as the uninterrupted run. (From 2^30 this model
// overflows for 8 steps, so step_10 holds a scale that has halved 8 times and 2 clean steps
// towards the next doubling: both must come back for step 11 to double and step 12 to match.)
TEST_F(Bf16TrainRun, F16LossScalingIsLoggedAndResumesBitExact) {
  const ChunkedDataset ds = testing_fixtures::random_id_dataset(16);
  TrainData data;
  data.train = &ds;
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  auto f16_options = [&](const std::string& out) {
    SurgeryTrainOptions o = options(out, DType::kF16);
    o.optimizer.loss_scaling = {std::ldexp(1.0, 30), /*dynamic=*/true, /*growth_interval=*/3};
    o.steps = 12;
    o.grad_accum = 1;
    return o;
  };
  ASSERT_TRUE(run_surgery_training(f16_options("whole"), data, *cpu).ok());
  SurgeryTrainOptions first = f16_options("split");
  first.stop_after_step = 11;
  ASSERT_TRUE(run_surgery_training(first, data, *cpu).ok());
  SurgeryTrainOptions second = f16_options("split");
  second.resume = true;
  absl::StatusOr<TrainRunResult> resumed = run_surgery_training(second, data, *cpu);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  for (const char* file : {"final/model.safetensors", "final/optimizer.bin"}) {
    const std::string x = read(root_ / "whole" / file), y = read(root_ / "split" / file);
    EXPECT_FALSE(x.empty()) << file;
    EXPECT_TRUE(x == y) << file << " differs between the uninterrupted and the resumed run";
  }
  std::ifstream in(root_ / "whole" / "metrics.jsonl");
  std::string line;
  std::vector<double> scales;
  int overflows = 0;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object() || j.value("event", "") != "step") continue;
    ASSERT_TRUE(j.contains("loss_scale")) << line;
    scales.push_back(j["loss_scale"].get<double>());
    overflows += j.value("overflow", false) ? 1 : 0;
  }
  ASSERT_EQ(scales.size(), 12u);
  EXPECT_EQ(scales.front(), std::ldexp(1.0, 30));
  EXPECT_GE(overflows, 1);
  EXPECT_LT(scales.back(), scales.front());
  bool doubled = false;
  for (size_t i = 1; i < scales.size(); ++i) doubled = doubled || scales[i] == 2 * scales[i - 1];
  EXPECT_TRUE(doubled) << "no doubling after growth_interval clean steps";
  std::ifstream state_in(root_ / "whole" / "final" / "trainer_state.json");
  const nlohmann::json state = nlohmann::json::parse(state_in, nullptr, false);
  ASSERT_TRUE(state.is_object() && state.contains("loss_scale"));
  std::ifstream split_in(root_ / "split" / "final" / "trainer_state.json");
  const nlohmann::json split_state = nlohmann::json::parse(split_in, nullptr, false);
  ASSERT_TRUE(split_state.is_object());
  EXPECT_EQ(state["loss_scale"], split_state["loss_scale"]);
  std::printf("[ measured ] f16 run, 12 steps from 2^30: %d overflows, final scale 2^%d\n",
              overflows, static_cast<int>(std::log2(state["loss_scale"]["scale"].get<double>())));
}

}  // namespace
}  // namespace engine
