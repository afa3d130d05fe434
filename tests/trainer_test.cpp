// Surgery-aware training (model/trainer.h): the SGD step against transformers' gradients, frozen
// elements bit-identical through AdamW training, bit-identical resume, and input errors caught
// before any work.
#include "model/trainer.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "surgery/head_surgery.h"
#include "surgery/head_scan.h"
#include "surgery/surgery_training.h"
#include "tests/fixture_reference.h"
#include "tests/training_data.h"

namespace engine {
namespace {

namespace fs = std::filesystem;
using testing_fixtures::CaseData;
using testing_fixtures::kFixtures;
using testing_fixtures::load_case;
using testing_fixtures::Reference;

SurgeryPlan plan_for(std::vector<HeadTarget> targets, bool keep) {
  SurgeryPlan plan;
  plan.targets = std::move(targets);
  plan.seed = 11;
  if (keep) {
    plan.qkv_weight = QkvWeightInit::kKeep;
    plan.qkv_bias = QkvBiasInit::kKeep;
    plan.dense_columns = DenseColumnsInit::kKeep;
  }
  return plan;
}

HeadGeometry geometry_of(const BloomConfig& c) {
  return HeadGeometry{c.n_layer, c.n_head, c.head_dim()};
}

MicroBatch micro_of(const CaseData& d) {
  MicroBatch mb;
  mb.batch = d.batch, mb.seq = d.seq;
  mb.ids = d.ids, mb.mask = d.mask, mb.targets = d.targets;
  return mb;
}

std::vector<float> snapshot(const BloomModel& m) {
  const float* p = reinterpret_cast<const float*>(m.arena.base());
  return std::vector<float>(p, p + m.arena.size_elements());
}

// Acceptance: one SGD step at lr 1 with a "keep" plan moves exactly the trainable slices, by
// minus the reference gradient, and nothing else by one bit. The bound is the gradient rule of
// docs/TOLERANCES.md plus the rounding of w - g itself (4 ulp of |w|).
TEST(TrainerStep, SgdAtLrOneMovesTrainableSlicesByMinusTheReferenceGradient) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "bloom-h6-l3");
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref("bloom-h6-l3");
  const CaseData d = load_case(ref, "batch");
  absl::StatusOr<FrozenMask> mask = apply_surgery(model->arena, geometry_of(model->config),
                                                  plan_for({{0, 2}, {2, 0}, {2, 5}}, true));
  ASSERT_TRUE(mask.ok()) << mask.status();
  const std::vector<float> before = snapshot(*model);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  OptimizerOptions opt;
  opt.kind = OptimizerKind::kSgd;
  opt.clip = 0.0;
  Trainer trainer(*model, *backend, *mask, opt);
  const std::vector<MicroBatch> micro = {micro_of(d)};
  absl::StatusOr<StepResult> r = trainer.step(micro, 1.0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->loss, ref.get<float>("batch.loss")[0], 1e-5);
  const std::vector<float> after = snapshot(*model);
  const uint32_t* b_bits = reinterpret_cast<const uint32_t*>(before.data());
  const uint32_t* a_bits = reinterpret_cast<const uint32_t*>(after.data());
  int64_t moved = 0;
  for (const ParameterInfo& p : model->arena.parameters()) {
    const std::vector<float> g = ref.get<float>("batch.grad." + p.name);
    double max_ref = 0.0;
    for (float x : g) max_ref = std::max(max_ref, std::abs(double{x}));
    for (int64_t i = 0; i < p.numel; ++i) {
      const int64_t k = p.offset + i;
      if (!mask->trainable(k)) {
        ASSERT_EQ(a_bits[k], b_bits[k]) << p.name << " frozen element " << i << " changed";
        continue;
      }
      const double step = double{before[k]} - after[k];
      const double bound = 1e-3 * std::abs(double{g[i]}) + 1e-5 * max_ref +
                           4 * std::numeric_limits<float>::epsilon() * std::abs(before[k]);
      ASSERT_LE(std::abs(step - g[i]), bound) << p.name << " element " << i;
      moved += a_bits[k] != b_bits[k] ? 1 : 0;
    }
  }
  EXPECT_GT(moved, mask->trainable_count() * 9 / 10);
}

// A surgery run (Xavier re-init, zeroed bias and dense columns) with AdamW on a repeated batch:
// frozen elements bit-identical, trainable ones moved, loss decreasing.
TEST(TrainerStep, SurgeryRunKeepsFrozenBitsAndLowersTheLoss) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "bloom-h4-l2");
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref("bloom-h4-l2");
  const CaseData d = load_case(ref, "right_pad");
  absl::StatusOr<FrozenMask> mask =
      apply_surgery(model->arena, geometry_of(model->config), plan_for({{1, 1}, {1, 3}}, false));
  ASSERT_TRUE(mask.ok()) << mask.status();
  const std::vector<float> start = snapshot(*model);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  OptimizerOptions opt;  // AdamW, clip 1.0
  Trainer trainer(*model, *backend, *mask, opt);
  const std::vector<MicroBatch> micro = {micro_of(d), micro_of(d)};
  constexpr int kSteps = 8;
  constexpr double kLr = 1e-2;
  std::vector<double> losses;
  for (int s = 0; s < kSteps; ++s) {
    absl::StatusOr<StepResult> r = trainer.step(micro, kLr);
    ASSERT_TRUE(r.ok()) << r.status();
    losses.push_back(r->loss);
  }
  EXPECT_LT(losses.back(), losses.front() - 1e-3);
  const std::vector<float> end = snapshot(*model);
  int64_t moved = 0;
  for (int64_t k = 0; k < static_cast<int64_t>(start.size()); ++k) {
    if (mask->trainable(k)) {
      moved += std::memcmp(&start[k], &end[k], sizeof(float)) != 0 ? 1 : 0;
    } else {
      ASSERT_EQ(std::memcmp(&start[k], &end[k], sizeof(float)), 0) << "frozen element " << k;
    }
  }
  EXPECT_GT(moved, mask->trainable_count() * 9 / 10);
}

// Gradient accumulation: two micro-batches of one row each give the same SGD step as one
// micro-batch holding both rows (every row of "batch" has the same number of scored tokens, so
// the mean of the two means is the mean over both). Float sums run in another order: the bound
// is the gradient rule's 1e-5 x max term, taken over the whole update.
TEST(TrainerStep, AccumulatedMicroBatchesEqualOneLargerBatch) {
  const CaseData d = load_case(Reference("bloom-h4-l2"), "batch");
  auto rows = [&](int64_t b0, int64_t n) {
    MicroBatch mb;
    mb.batch = n, mb.seq = d.seq;
    mb.ids.assign(d.ids.begin() + b0 * d.seq, d.ids.begin() + (b0 + n) * d.seq);
    mb.targets.assign(d.targets.begin() + b0 * d.seq, d.targets.begin() + (b0 + n) * d.seq);
    return mb;
  };
  std::vector<std::vector<float>> updated;
  for (const std::vector<MicroBatch>& micro :
       {std::vector<MicroBatch>{rows(0, 2)}, std::vector<MicroBatch>{rows(0, 1), rows(1, 1)}}) {
    absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "bloom-h4-l2");
    ASSERT_TRUE(model.ok()) << model.status();
    std::unique_ptr<Backend> backend = make_cpu_backend();
    OptimizerOptions opt;
    opt.kind = OptimizerKind::kSgd;
    opt.clip = 0.0;
    Trainer trainer(*model, *backend, FrozenMask::all_trainable(model->arena), opt);
    const std::vector<float> before = snapshot(*model);
    ASSERT_TRUE(trainer.step(micro, 1.0).ok());
    std::vector<float> delta = snapshot(*model);
    for (size_t i = 0; i < delta.size(); ++i) delta[i] -= before[i];
    updated.push_back(std::move(delta));
  }
  double max_abs = 0.0, worst = 0.0;
  for (size_t i = 0; i < updated[0].size(); ++i) {
    max_abs = std::max(max_abs, std::abs(double{updated[0][i]}));
    worst = std::max(worst, std::abs(double{updated[0][i]} - updated[1][i]));
  }
  EXPECT_GT(max_abs, 0.0);
  EXPECT_LE(worst, 1e-5 * max_abs);
}

TEST(TrainerStep, NonFiniteLossStopsWithTheStepNamed) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "bloom-h4-l2");
  ASSERT_TRUE(model.ok()) << model.status();
  const CaseData d = load_case(Reference("bloom-h4-l2"), "batch");
  const FrozenMask mask = FrozenMask::all_trainable(model->arena);
  absl::StatusOr<TensorView> ln = model->arena.view("ln_f.weight");
  ASSERT_TRUE(ln.ok());
  // Finite but huge: the logits overflow, so the loss is non-finite while every weight is finite
  // (a non-finite weight is its own error, which skipping cannot clear).
  ln->as<float>()[0] = std::numeric_limits<float>::max();
  const std::vector<float> before = snapshot(*model);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Trainer trainer(*model, *backend, mask, OptimizerOptions{});
  const std::vector<MicroBatch> micro = {micro_of(d)};
  absl::StatusOr<StepResult> r = trainer.step(micro, 1e-3);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("step 1: non-finite loss"), absl::string_view::npos)
      << r.status();
  EXPECT_EQ(std::memcmp(before.data(), snapshot(*model).data(), before.size() * sizeof(float)), 0);

  OptimizerOptions skip;
  skip.skip_nonfinite = true;
  Trainer skipping(*model, *backend, mask, skip);
  r = skipping.step(micro, 1e-3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->finite);
  EXPECT_EQ(std::memcmp(before.data(), snapshot(*model).data(), before.size() * sizeof(float)), 0);
}

// --- whole runs -------------------------------------------------------------------------------

constexpr int64_t kSeq = 16;

ChunkedDataset make_dataset() { return testing_fixtures::random_id_dataset(kSeq); }

TrainData data_of(const ChunkedDataset& ds) {
  TrainData data;
  data.train = &ds;
  for (size_t i = 0; i < ds.holdout_size(); ++i) {
    std::span<const uint32_t> c = ds.holdout_chunk(i);
    data.eval_chunks.emplace_back(c.begin(), c.end());
  }
  return data;
}

class TrainRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            absl::StrCat("engine_trainer_test_", ::getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  SurgeryTrainOptions options(const std::string& out) const {
    SurgeryTrainOptions o;
    o.model_dir = kFixtures / "models" / "bloom-h4-l2";
    o.out_dir = root_ / out;
    o.plan = plan_for({{0, 3}, {1, 2}}, false);
    o.seq_len = kSeq, o.batch = 2, o.grad_accum = 2;
    o.steps = 6;
    o.lr = 5e-3;
    o.eval_every = 2;
    return o;
  }
  static std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  fs::path root_;
};

TEST_F(TrainRunTest, ResumeEndsBitIdenticalToAnUninterruptedRun) {
  const ChunkedDataset ds = make_dataset();
  const TrainData data = data_of(ds);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  absl::StatusOr<TrainRunResult> whole = run_surgery_training(options("whole"), data, *backend);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->steps, 6);
  ASSERT_TRUE(whole->best_ppl.has_value());

  SurgeryTrainOptions first = options("split");
  first.stop_after_step = 3;  // killed after step 3; the last checkpoint is step_2
  ASSERT_TRUE(run_surgery_training(first, data, *backend).ok());
  EXPECT_TRUE(fs::exists(root_ / "split" / "step_2" / "trainer_state.json"));
  EXPECT_FALSE(fs::exists(root_ / "split" / "final"));
  // As if killed between moving the old best/ aside and renaming the new one into place.
  fs::rename(root_ / "split" / "best", root_ / "split" / ".old-best");
  SurgeryTrainOptions second = options("split");
  second.resume = true;
  second.recompute = true;  // recomputation changes memory, not results
  absl::StatusOr<TrainRunResult> resumed = run_surgery_training(second, data, *backend);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->steps, 6);
  for (const char* file : {"final/model.safetensors", "final/optimizer.bin",
                           "step_4/model.safetensors", "best/model.safetensors"}) {
    const std::string a = read(root_ / "whole" / file), b = read(root_ / "split" / file);
    EXPECT_FALSE(a.empty()) << file;
    EXPECT_TRUE(a == b) << file << " differs between the uninterrupted and the resumed run";
  }
  // The base model's frozen elements survive in the final checkpoint.
  absl::StatusOr<BloomModel> base = load_model_directory(kFixtures / "models" / "bloom-h4-l2");
  absl::StatusOr<BloomModel> final_model = load_model_directory(root_ / "whole" / "final");
  ASSERT_TRUE(base.ok() && final_model.ok());
  absl::StatusOr<FrozenMask> mask =
      apply_surgery(base->arena, geometry_of(base->config), *options("x").plan);
  ASSERT_TRUE(mask.ok());
  const std::vector<float> b = snapshot(*base), f = snapshot(*final_model);
  for (int64_t k = 0; k < static_cast<int64_t>(b.size()); ++k) {
    if (!mask->trainable(k)) {
      ASSERT_EQ(std::memcmp(&b[k], &f[k], sizeof(float)), 0) << k;
    }
  }
  // One step line per step of each run segment, evals every 2 steps.
  const std::string metrics = read(root_ / "whole" / "metrics.jsonl");
  size_t lines = 0;
  for (char c : metrics) lines += c == '\n' ? 1 : 0;
  EXPECT_EQ(lines, 1 + 6 + 3 + 1);  // start, steps, evals, end
  EXPECT_NE(metrics.find("\"grad_norm\""), std::string::npos);
  EXPECT_NE(metrics.find("\"tokens_per_s\""), std::string::npos);
  // The resumed run's log is one history: step 3 ran before the kill and again after the resume
  // from step_2, but appears once; every step 1..6 appears exactly once, in order.
  std::ifstream split_log(root_ / "split" / "metrics.jsonl");
  std::vector<int64_t> steps;
  int resumes = 0;
  for (std::string line; std::getline(split_log, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j["event"] == "step") steps.push_back(j["step"].get<int64_t>());
    if (j["event"] == "resume") {
      ++resumes;
      EXPECT_EQ(j["step"], 2);
    }
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(resumes, 1);
}

// Killed before the first checkpoint: --resume starts from the beginning and completes.
TEST_F(TrainRunTest, ResumeWithoutACheckpointStartsOver) {
  const ChunkedDataset ds = make_dataset();
  const TrainData data = data_of(ds);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  SurgeryTrainOptions o = options("early");
  o.steps = 3;
  o.stop_after_step = 1;
  ASSERT_TRUE(run_surgery_training(o, data, *backend).ok());
  ASSERT_TRUE(fs::exists(o.out_dir / "metrics.jsonl"));
  o.stop_after_step = 0;
  EXPECT_FALSE(run_surgery_training(o, data, *backend).ok());  // without --resume: refused
  o.resume = true;
  absl::StatusOr<TrainRunResult> r = run_surgery_training(o, data, *backend);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps, 3);
  EXPECT_TRUE(fs::exists(o.out_dir / "final" / "model.safetensors"));
}

// The head scan at each evaluation, on the fixture sequences that start with <s> (layer 0 of
// bloom-h4-l2 has constructed sink heads 2 and 3, which the plan re-initialises): class counts,
// targets no longer collapsed, and drift of the frozen heads against the base model. Frozen heads
// of layer 0 see unchanged inputs and weights, so they cannot drift; layer 1 (no target, outside
// the surgical zone) sees layer 0's changed output.
TEST_F(TrainRunTest, ScanReportsRevivedTargetsAndDriftOnlyDownstream) {
  const ChunkedDataset ds = make_dataset();
  const TrainData data = data_of(ds);
  SurgeryTrainOptions o = options("scan");
  const CaseData d = load_case(Reference("bloom-h4-l2"), "batch");
  for (int64_t b = 0; b + 1 < d.batch; ++b) {  // the rows that start with <s>
    o.scan_chunks.emplace_back(d.ids.begin() + b * d.seq, d.ids.begin() + (b + 1) * d.seq);
  }
  std::unique_ptr<Backend> backend = make_cpu_backend();
  o.plan = plan_for({{0, 2}, {0, 3}}, false);
  o.steps = 4;
  ASSERT_TRUE(run_surgery_training(o, data, *backend).ok());
  std::ifstream in(o.out_dir / "metrics.jsonl");
  std::vector<nlohmann::json> scans;
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j["event"] == "scan") scans.push_back(std::move(j));
  }
  ASSERT_EQ(scans.size(), 3u);  // before surgery, steps 2 and 4
  EXPECT_EQ(scans[0]["before_surgery"], true);
  EXPECT_GE(scans[0]["collapsed"].get<int64_t>(), 1) << scans[0];
  EXPECT_EQ(scans[0]["targets"], 0);
  const std::vector<double> before = scans[0]["bos_mass"].get<std::vector<double>>();
  for (size_t i = 1; i < scans.size(); ++i) {
    const nlohmann::json& j = scans[i];
    EXPECT_EQ(j["targets"], 2);
    EXPECT_EQ(j["targets_not_collapsed"], 2) << j;
    EXPECT_EQ(j["healthy"].get<int64_t>() + j["low_entropy"].get<int64_t>() +
                  j["sink"].get<int64_t>() + j["dead"].get<int64_t>(),
              8);
    const std::vector<double> now = j["bos_mass"].get<std::vector<double>>();
    ASSERT_EQ(now.size(), 8u);
    // Layer 0's frozen heads: bit-identical statistics. Layer 1: moved.
    EXPECT_EQ(now[0], before[0]);
    EXPECT_EQ(now[1], before[1]);
    double moved = 0.0;
    int64_t outside = 0;
    for (int h = 4; h < 8; ++h) {
      moved = std::max(moved, std::abs(now[h] - before[h]));
      outside += std::abs(now[h] - before[h]) > HeadScan::kDriftThreshold ? 1 : 0;
    }
    EXPECT_GT(moved, 1e-3) << j;
    EXPECT_EQ(j["drift_inside_zone"], 0) << j;
    EXPECT_EQ(j["drift_outside_zone"], outside) << j;
  }
}

TEST_F(TrainRunTest, BadInputsFailBeforeAnyWork) {
  const ChunkedDataset ds = make_dataset();
  const TrainData data = data_of(ds);
  std::unique_ptr<Backend> backend = make_cpu_backend();

  SurgeryTrainOptions o = options("out_layer");
  o.plan = plan_for({{5, 0}}, false);  // a plan for a deeper model
  absl::StatusOr<TrainRunResult> r = run_surgery_training(o, data, *backend);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("layer 5"), absl::string_view::npos) << r.status();
  EXPECT_FALSE(fs::exists(o.out_dir));

  o = options("out_head");
  o.plan = plan_for({{0, 4}}, false);  // head 4 of a 4-head model
  r = run_surgery_training(o, data, *backend);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("head 4"), absl::string_view::npos) << r.status();

  o = options("a_file");
  std::ofstream(o.out_dir) << "not a directory";
  r = run_surgery_training(o, data, *backend);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a directory"), absl::string_view::npos) << r.status();

  // A finished run resumed with another plan, another model, or another recipe.
  o = options("done");
  o.steps = 2;
  ASSERT_TRUE(run_surgery_training(o, data, *backend).ok());
  const std::string metrics_before = read(o.out_dir / "metrics.jsonl");
  SurgeryTrainOptions again = o;
  r = run_surgery_training(again, data, *backend);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--resume"), absl::string_view::npos) << r.status();
  again.resume = true;
  again.plan = plan_for({{0, 1}}, false);
  r = run_surgery_training(again, data, *backend);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("different surgery plan"), absl::string_view::npos)
      << r.status();
  again = o;
  again.resume = true;
  again.model_dir = kFixtures / "models" / "bloom-h6-l3";
  r = run_surgery_training(again, data, *backend);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("different model configuration"), absl::string_view::npos)
      << r.status();
  // Same shape, one frozen weight different: the base weights hash tells them apart.
  absl::StatusOr<BloomModel> other = load_model_directory(kFixtures / "models" / "bloom-h4-l2");
  ASSERT_TRUE(other.ok());
  absl::StatusOr<TensorView> lnf = other->arena.view("ln_f.bias");
  ASSERT_TRUE(lnf.ok());
  lnf->as<float>()[3] += 0.5f;
  ASSERT_TRUE(save_model_directory(*other, root_ / "other_model").ok());
  again = o;
  again.resume = true;
  again.model_dir = root_ / "other_model";
  r = run_surgery_training(again, data, *backend);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("different base model"), absl::string_view::npos)
      << r.status();
  again = o;
  again.resume = true;
  again.lr = 1e-4;
  r = run_surgery_training(again, data, *backend);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("training recipe: lr"), absl::string_view::npos)
      << r.status();
  EXPECT_EQ(read(o.out_dir / "metrics.jsonl"), metrics_before);
}

}  // namespace
}  // namespace engine
