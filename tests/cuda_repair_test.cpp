// `engine repair` (surgery/repair.h) on the CUDA backend against the CPU: the whole two-pass
// pipeline (diagnosis with the forward's statistics on the device, surgery on the host arena and
// re-upload, masked training on the device, re-diagnosis) on a model the tensor-core kernels
// take (2 layers, 4 heads, head_dim 64), f32 weights. Runs on a GPU or under the CUDA emulator
// (label gpu). Bounds: docs/TOLERANCES.md, "Repair on the CUDA backend".
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/device.h"
#include "engine/frozen_mask.h"
#include "model/bloom_init.h"
#include "model/device_model.h"
#include "model/dataset.h"
#include "model/head_geometry.h"
#include "model/model_directory.h"
#include "surgery/corpus_scan.h"
#include "surgery/diagnosis.h"
#include "surgery/head_surgery.h"
#include "surgery/plan.h"
#include "surgery/repair.h"
#include "nlohmann/json.hpp"
#include "tests/bf16_training.h"

namespace engine {
namespace {

namespace fs = std::filesystem;

// Statistics per head of one model on the device vs the CPU: the fp32 diagnose bound of
// TOLERANCES.md ("The model on the CUDA backend").
constexpr double kStatBound = 1e-5;
// Weights after the repair's training on both devices: a tenth of AdamW's worst case
// 2 x steps x lr, steps summed over the passes (TOLERANCES.md, "Training on the CUDA backend").
constexpr double kWeightFractionOfWorstCase = 0.1;
constexpr int64_t kSteps = 3;
constexpr double kLr = 1e-3;
// Placed where no head's bos_mass comes near it in any of the four diagnoses (asserted below),
// so that both classes occur before and after each pass and the re-initialised heads of pass 1
// are still above it (a second pass runs).
constexpr double kSinkThreshold = 0.2;
// The class premise: every head's bos_mass at least this far from the sink threshold on the CPU.
constexpr double kClassMargin = 1e-3;
// bf16 weights: statistics per head of one model's bf16 weights, device vs twin, 8 u with
// u = 2^-8 (TOLERANCES.md, "bf16 storage"). That bound cannot carry the class comparison of the
// two runs: this fixture's heads all have bos_mass in [0.155, 0.254], so no threshold is 8 u from
// every head with both classes present. As for f32, the class premise is asserted, not derived
// (TOLERANCES.md, "Repair on the CUDA backend"): every twin head at least this far from the
// threshold, 2.5x the largest device-vs-twin statistics difference measured on the same weights.
constexpr double kBf16StatBound = 8.0 / 256.0;
constexpr double kBf16ClassMargin = kClassMargin;

class CudaRepair : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / absl::StrCat("engine_cuda_repair_test_", getpid());
    fs::remove_all(root_);
    fs::create_directories(root_);
    absl::StatusOr<BloomModel> m = allocate_bloom_model(bf16_training::small_config(64));
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_TRUE(init_bloom_weights(*m, 23, 0.08).ok());
    ASSERT_TRUE(save_model_directory(*m, root_ / "model").ok());
    // Documents of a repeating pattern with noise: something to learn in a few steps.
    uint32_t state = 9;
    for (int d = 0; d < 48; ++d) {
      for (int t = 0; t < 24; ++t) {
        state = state * 1103515245u + 12345u;
        corpus_.ids.push_back((t % 2 == 0) ? static_cast<uint32_t>((d + t) % 16)
                                           : 16 + ((state >> 16) % 48));
      }
      corpus_.document_ends.push_back(corpus_.ids.size());
    }
    ChunkOptions co;
    co.seq_len = 16, co.holdout_fraction = 0.15, co.seed = 5;
    absl::StatusOr<ChunkedDataset> chunks = ChunkedDataset::build(corpus_, {}, co);
    ASSERT_TRUE(chunks.ok()) << chunks.status();
    chunks_.emplace(std::move(*chunks));
    data_.train = &*chunks_;
    for (size_t i = 0; i < chunks_->holdout_size() && i < 6; ++i) {
      std::span<const uint32_t> ch = chunks_->holdout_chunk(i);
      data_.eval_chunks.emplace_back(ch.begin(), ch.end());
      data_.scan_sequences.emplace_back(ch.begin(), ch.end());
    }
    ASSERT_GE(data_.scan_sequences.size(), 4u);
  }
  void TearDown() override { fs::remove_all(root_); }

  RepairOptions options(const std::string& out, DType storage = DType::kF32) const {
    RepairOptions o;
    o.train.storage = storage;
    o.model_dir = root_ / "model";
    o.out_dir = root_ / out;
    o.passes = 2;
    o.selection.select = "collapsed";
    o.thresholds.sink = kSinkThreshold;
    o.thresholds.low_entropy = 0.0;  // two classes only: the premise is about bos_mass
    o.scan_batch = 2;
    o.train.seq_len = 16, o.train.batch = 2, o.train.grad_accum = 1;
    o.train.steps = kSteps, o.train.lr = kLr, o.train.warmup = 0;
    o.train.eval_every = 0;
    o.train.seed = 77;
    return o;
  }

  DiagnoseOptions diagnose_options() const {
    DiagnoseOptions d;
    d.seq_len = 16, d.batch = 2;
    d.thresholds.sink = kSinkThreshold;
    d.thresholds.low_entropy = 0.0;
    d.model_name = "model";
    return d;
  }

  fs::path root_;
  Corpus corpus_;
  std::optional<ChunkedDataset> chunks_;
  RepairData data_;
};

DiagnosisReport report(const fs::path& file) {
  absl::StatusOr<DiagnosisReport> r = load_report(file.string());
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : DiagnosisReport{};
}

BloomModel model_at(const fs::path& dir) {
  absl::StatusOr<BloomModel> m = load_model_directory(dir);
  EXPECT_TRUE(m.ok()) << dir << ": " << m.status();
  return *std::move(m);
}

// Both runs of a pass planned the same heads; appends the plan's trainable elements to
// `trained` (what the final comparison treats as trainable).
void expect_same_plans(const fs::path& cpu_dir, const fs::path& cuda_dir, const BloomModel& input,
                       const HeadGeometry& geometry, std::vector<int64_t>& trained) {
  absl::StatusOr<SurgeryPlan> cpu_plan = load_plan((cpu_dir / "plan.json").string());
  absl::StatusOr<SurgeryPlan> cuda_plan = load_plan((cuda_dir / "plan.json").string());
  ASSERT_TRUE(cpu_plan.ok() && cuda_plan.ok());
  ASSERT_EQ(cpu_plan->targets, cuda_plan->targets);
  ASSERT_FALSE(cuda_plan->targets.empty());
  absl::StatusOr<FrozenMask> mask = surgery_mask(input.arena, geometry, *cuda_plan);
  ASSERT_TRUE(mask.ok()) << mask.status();
  for (int64_t e : mask->trainable_indices()) trained.push_back(e);
}

// The two final models against the input: every element trainable in neither pass is
// bit-identical to the input on both sides, some trainable one moved (on both sides), and the
// trainable ones lie within `bound` of each other. Returns the largest difference.
double compare_final_models(const BloomModel& input, const BloomModel& final_a,
                            const BloomModel& final_b, const std::set<int64_t>& trainable,
                            double bound) {
  const auto* in = reinterpret_cast<const float*>(input.arena.base());
  const auto* a = reinterpret_cast<const float*>(final_a.arena.base());
  const auto* b = reinterpret_cast<const float*>(final_b.arena.base());
  int64_t frozen_changed = 0, moved_a = 0, moved_b = 0;
  double worst = 0.0;
  for (int64_t e = 0; e < input.arena.size_elements(); ++e) {
    if (trainable.count(e) == 0) {
      frozen_changed += std::memcmp(&in[e], &b[e], sizeof(float)) != 0 ||
                                std::memcmp(&in[e], &a[e], sizeof(float)) != 0
                            ? 1
                            : 0;
    } else {
      worst = std::max(worst, std::abs(static_cast<double>(a[e]) - b[e]));
      moved_a += a[e] != in[e] ? 1 : 0;
      moved_b += b[e] != in[e] ? 1 : 0;
    }
  }
  EXPECT_EQ(frozen_changed, 0);
  EXPECT_GT(moved_a, 0);
  EXPECT_GT(moved_b, 0);
  EXPECT_LE(worst, bound);
  return worst;
}

TEST_F(CudaRepair, TwoPassRepairMatchesTheCpu) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  absl::StatusOr<std::unique_ptr<Backend>> cuda = make_backend("cuda");
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  absl::StatusOr<RepairResult> on_cpu = run_repair(options("cpu"), data_, *cpu);
  ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
  absl::StatusOr<RepairResult> on_cuda = run_repair(options("cuda"), data_, **cuda);
  ASSERT_TRUE(on_cuda.ok()) << on_cuda.status();
  // Premise: the threshold gives collapsed heads before and after pass 1, so both passes train.
  ASSERT_EQ(on_cpu->passes.size(), 2u) << on_cpu->stop_reason;
  ASSERT_EQ(on_cuda->passes.size(), 2u) << on_cuda->stop_reason;

  const BloomModel input = model_at(root_ / "model");
  const BloomConfig& c = input.config;
  const HeadGeometry geometry{c.n_layer, c.n_head, c.head_dim()};
  std::vector<int64_t> trained;  // arena elements trainable in some pass
  double worst_stat = 0.0, closest = 1.0;  // printed for docs/TOLERANCES.md
  for (int pass = 1; pass <= 2; ++pass) {
    SCOPED_TRACE(absl::StrCat("pass ", pass));
    const fs::path cpu_dir = root_ / "cpu" / absl::StrCat("pass_", pass);
    const fs::path cuda_dir = root_ / "cuda" / absl::StrCat("pass_", pass);
    // The diagnosed models of the device's run: its input, and its chosen checkpoint.
    const fs::path cuda_input =
        pass == 1 ? root_ / "model"
                  : root_ / "cuda" / "pass_1" / "train" /
                        on_cuda->passes[0].chosen_checkpoint;
    const fs::path cuda_output =
        cuda_dir / "train" / on_cuda->passes[pass - 1].chosen_checkpoint;
    for (const auto& [name, diagnosed] :
         {std::pair<std::string, fs::path>{"report_before.json", cuda_input},
          std::pair<std::string, fs::path>{"report_after.json", cuda_output}}) {
      SCOPED_TRACE(name);
      const DiagnosisReport on_device = report(cuda_dir / name);
      const DiagnosisReport cpu_run = report(cpu_dir / name);
      // The same weights diagnosed on the CPU: the statistics within the fp32 forward's bound.
      const BloomModel m = model_at(diagnosed);
      absl::StatusOr<DiagnosisReport> same =
          diagnose_sequences(m, *cpu, data_.scan_sequences, diagnose_options());
      ASSERT_TRUE(same.ok()) << same.status();
      ASSERT_EQ(on_device.heads.size(), cpu_run.heads.size());
      ASSERT_EQ(on_device.heads.size(), same->heads.size());
      for (size_t i = 0; i < on_device.heads.size(); ++i) {
        const HeadSummary& d = on_device.heads[i];
        SCOPED_TRACE(absl::StrCat("head ", d.layer, ":", d.head));
        EXPECT_NEAR(d.bos_mass.mean, same->heads[i].bos_mass.mean, kStatBound);
        EXPECT_NEAR(d.entropy.mean, same->heads[i].entropy.mean, kStatBound);
        EXPECT_NEAR(d.local_mass.mean, same->heads[i].local_mass.mean, kStatBound);
        for (double diff : {d.bos_mass.mean - same->heads[i].bos_mass.mean,
                            d.entropy.mean - same->heads[i].entropy.mean,
                            d.local_mass.mean - same->heads[i].local_mass.mean}) {
          worst_stat = std::max(worst_stat, std::abs(diff));
        }
        closest = std::min(closest, std::abs(cpu_run.heads[i].bos_mass.mean - kSinkThreshold));
        // The classes of the two runs agree; premise: no CPU head near the threshold.
        EXPECT_GT(std::abs(cpu_run.heads[i].bos_mass.mean - kSinkThreshold), kClassMargin);
        EXPECT_EQ(d.cls, cpu_run.heads[i].cls) << "bos_mass " << d.bos_mass.mean << " vs "
                                                << cpu_run.heads[i].bos_mass.mean;
      }
      EXPECT_EQ(on_device.counts.collapsed(), cpu_run.counts.collapsed());
      std::printf("cuda repair: pass %d %s: %lld of %zu heads collapsed\n", pass, name.c_str(),
                  static_cast<long long>(on_device.counts.collapsed()), on_device.heads.size());
    }
    // Both runs planned the same heads (same classes, same seed).
    ASSERT_NO_FATAL_FAILURE(expect_same_plans(cpu_dir, cuda_dir, input, geometry, trained));
  }

  // The final models: frozen elements (trainable in neither pass) bit-identical to the input on
  // both devices; the trained ones within the AdamW bound of each other.
  const BloomModel final_cpu = model_at(on_cpu->final_dir);
  const BloomModel final_cuda = model_at(on_cuda->final_dir);
  const std::set<int64_t> trainable(trained.begin(), trained.end());
  const double bound = kWeightFractionOfWorstCase * 2.0 * 2.0 * kSteps * kLr;
  const double worst = compare_final_models(input, final_cpu, final_cuda, trainable, bound);
  std::printf("cuda repair: %zu trainable elements, largest cpu/cuda weight difference %.3g "
              "(bound %.3g); statistics %.3g from the CPU's on the same weights (bound %.3g); "
              "closest bos_mass to the threshold %.3g\n",
              trainable.size(), worst, bound, worst_stat, kStatBound, closest);
}


// The model at `dir` resident on `backend` in `storage` (the twin on the CPU), as the repair
// pipeline diagnoses it.
BloomModel resident_model_at(const fs::path& dir, Backend& backend, DType storage) {
  BloomModel m = model_at(dir);
  EXPECT_TRUE(make_resident(m, backend, storage).ok());
  return m;
}

// The "dtype" of every start event in a training directory's metrics.jsonl.
std::vector<std::string> start_dtypes(const fs::path& train_dir) {
  std::ifstream in(train_dir / "metrics.jsonl");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("event", "") == "start") out.push_back(j.value("dtype", ""));
  }
  return out;
}

// bf16 weights with fp32 masters (what --dtype auto picks on a CUDA device for head_dim 64): the
// two-pass repair on the device against the same on the CPU's bf16 twin. Each side's reports
// are its own 16-bit weights' diagnosis, bit for bit (the re-diagnosis reads the refreshed
// 16-bit copy: the chosen checkpoint's masters rounded to nearest even); the device's reports
// are within the bf16 statistics bound of the twin's diagnosis of the same weights; the two
// runs classify and plan alike; frozen elements end bit-identical to the input.
TEST_F(CudaRepair, TwoPassRepairInBf16MatchesTheTwin) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  absl::StatusOr<std::unique_ptr<Backend>> cuda = make_backend("cuda");
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  absl::StatusOr<RepairResult> on_cpu = run_repair(options("twin", DType::kBF16), data_, *cpu);
  ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
  absl::StatusOr<RepairResult> on_cuda =
      run_repair(options("cuda16", DType::kBF16), data_, **cuda);
  ASSERT_TRUE(on_cuda.ok()) << on_cuda.status();
  ASSERT_EQ(on_cpu->passes.size(), 2u) << on_cpu->stop_reason;
  ASSERT_EQ(on_cuda->passes.size(), 2u) << on_cuda->stop_reason;

  const BloomModel input = model_at(root_ / "model");
  const BloomConfig& c = input.config;
  const HeadGeometry geometry{c.n_layer, c.n_head, c.head_dim()};
  std::vector<int64_t> trained;
  double worst_stat = 0.0, closest = 1.0;
  for (int pass = 1; pass <= 2; ++pass) {
    SCOPED_TRACE(absl::StrCat("pass ", pass));
    for (const char* side : {"twin", "cuda16"}) {
      EXPECT_EQ(start_dtypes(root_ / side / absl::StrCat("pass_", pass) / "train"),
                std::vector<std::string>{"bf16"})
          << side;
    }
    const fs::path cpu_dir = root_ / "twin" / absl::StrCat("pass_", pass);
    const fs::path cuda_dir = root_ / "cuda16" / absl::StrCat("pass_", pass);
    auto diagnosed = [&](const std::string& side, const RepairResult& r, bool after) {
      if (!after && pass == 1) return root_ / "model";
      const int at = after ? pass : pass - 1;
      return root_ / side / absl::StrCat("pass_", at) / "train" /
             r.passes[at - 1].chosen_checkpoint;
    };
    for (const bool after : {false, true}) {
      const std::string name = after ? "report_after.json" : "report_before.json";
      SCOPED_TRACE(name);
      const DiagnosisReport on_device = report(cuda_dir / name);
      const DiagnosisReport twin_run = report(cpu_dir / name);
      // Each side's report is the diagnosis of its own checkpoint's bf16 weights on its own
      // backend, bit for bit: the same computation on the same 16-bit values.
      const BloomModel dm =
          resident_model_at(diagnosed("cuda16", *on_cuda, after), **cuda, DType::kBF16);
      absl::StatusOr<DiagnosisReport> device_again =
          diagnose_sequences(dm, **cuda, data_.scan_sequences, diagnose_options());
      ASSERT_TRUE(device_again.ok()) << device_again.status();
      const BloomModel tm =
          resident_model_at(diagnosed("twin", *on_cpu, after), *cpu, DType::kBF16);
      absl::StatusOr<DiagnosisReport> twin_again =
          diagnose_sequences(tm, *cpu, data_.scan_sequences, diagnose_options());
      ASSERT_TRUE(twin_again.ok()) << twin_again.status();
      // The device's weights on the twin: the bf16 statistics bound (8 u).
      const BloomModel dm_on_twin =
          resident_model_at(diagnosed("cuda16", *on_cuda, after), *cpu, DType::kBF16);
      absl::StatusOr<DiagnosisReport> same =
          diagnose_sequences(dm_on_twin, *cpu, data_.scan_sequences, diagnose_options());
      ASSERT_TRUE(same.ok()) << same.status();
      ASSERT_EQ(on_device.heads.size(), twin_run.heads.size());
      ASSERT_EQ(on_device.heads.size(), same->heads.size());
      for (size_t i = 0; i < on_device.heads.size(); ++i) {
        const HeadSummary& d = on_device.heads[i];
        SCOPED_TRACE(absl::StrCat("head ", d.layer, ":", d.head));
        EXPECT_EQ(d.bos_mass.mean, device_again->heads[i].bos_mass.mean);
        EXPECT_EQ(d.entropy.mean, device_again->heads[i].entropy.mean);
        EXPECT_EQ(twin_run.heads[i].bos_mass.mean, twin_again->heads[i].bos_mass.mean);
        EXPECT_EQ(twin_run.heads[i].entropy.mean, twin_again->heads[i].entropy.mean);
        EXPECT_NEAR(d.bos_mass.mean, same->heads[i].bos_mass.mean, kBf16StatBound);
        EXPECT_NEAR(d.entropy.mean, same->heads[i].entropy.mean, kBf16StatBound);
        EXPECT_NEAR(d.local_mass.mean, same->heads[i].local_mass.mean, kBf16StatBound);
        for (double diff : {d.bos_mass.mean - same->heads[i].bos_mass.mean,
                            d.entropy.mean - same->heads[i].entropy.mean,
                            d.local_mass.mean - same->heads[i].local_mass.mean}) {
          worst_stat = std::max(worst_stat, std::abs(diff));
        }
        closest = std::min(closest, std::abs(twin_run.heads[i].bos_mass.mean - kSinkThreshold));
        EXPECT_GT(std::abs(twin_run.heads[i].bos_mass.mean - kSinkThreshold), kBf16ClassMargin);
        EXPECT_EQ(d.cls, twin_run.heads[i].cls) << "bos_mass " << d.bos_mass.mean << " vs "
                                                 << twin_run.heads[i].bos_mass.mean;
      }
      EXPECT_EQ(on_device.counts.collapsed(), twin_run.counts.collapsed());
    }
    ASSERT_NO_FATAL_FAILURE(expect_same_plans(cpu_dir, cuda_dir, input, geometry, trained));
  }

  // Frozen elements (trainable in neither pass) bit-identical to the input on both sides; the
  // trained ones moved, and within AdamW's worst case of each other.
  const BloomModel final_cpu = model_at(on_cpu->final_dir);
  const BloomModel final_cuda = model_at(on_cuda->final_dir);
  const std::set<int64_t> trainable(trained.begin(), trained.end());
  const double bound = 2.0 * 2.0 * kSteps * kLr;
  const double worst = compare_final_models(input, final_cpu, final_cuda, trainable, bound);
  std::printf("cuda repair bf16: %zu trainable elements, largest device/twin master difference "
              "%.3g (bound %.3g); statistics %.3g from the twin's on the same weights (bound "
              "%.3g); closest twin bos_mass to the threshold %.3g (margin %.3g)\n",
              trainable.size(), worst, bound, worst_stat, kBf16StatBound, closest,
              kBf16ClassMargin);
}

}  // namespace
}  // namespace engine
