// Reliability of training runs (docs/BAD_INPUT.md, "Training"): checkpoints verified against
// their manifests on resume, saves that fail on a full disk (injected, and a real small tmpfs
// where mounting is permitted) without losing the previous checkpoint or leaving temporaries,
// resume from another model's checkpoint refused naming both, and injected NaN weights and
// gradients reported at their step with the tensor named.
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/io.h"
#include "engine/sha256.h"
#include "gtest/gtest.h"
#include "model/checkpoint_manifest.h"
#include "model/trainer.h"
#include "surgery/surgery_training.h"
#include "tests/fixture_reference.h"
#include "tests/training_data.h"

namespace engine {
namespace {

namespace fs = std::filesystem;
using testing_fixtures::kFixtures;

constexpr int64_t kSeq = 16;
const fs::path kModel = kFixtures / "models" / "bloom-h4-l2";

ChunkedDataset make_dataset() { return testing_fixtures::random_id_dataset(kSeq); }

using testing_fixtures::read_bytes;
using testing_fixtures::write_bytes;
std::string hex_of(const std::string& bytes) { return to_hex(sha256(bytes.data(), bytes.size())); }

class CheckpointFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            absl::StrCat("engine_checkpoint_faults_", ::getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    data_.train = &ds_;
    for (size_t i = 0; i < ds_.holdout_size(); ++i) {
      std::span<const uint32_t> c = ds_.holdout_chunk(i);
      data_.eval_chunks.emplace_back(c.begin(), c.end());
    }
  }
  void TearDown() override {
    fail_nth_write_for_testing(0);
    fs::remove_all(root_);
  }

  SurgeryTrainOptions options(const fs::path& out) const {
    SurgeryTrainOptions o;
    o.model_dir = kModel;
    o.out_dir = out;
    SurgeryPlan plan;
    plan.targets = {{0, 3}, {1, 2}};
    plan.seed = 11;
    o.plan = plan;
    o.seq_len = kSeq, o.batch = 2, o.grad_accum = 1;
    o.steps = 3;
    o.lr = 5e-3;
    o.eval_every = 2;
    o.checkpoint_every = 1;
    return o;
  }
  absl::StatusOr<TrainRunResult> run(const SurgeryTrainOptions& o) {
    return run_surgery_training(o, data_, *backend_);
  }

  // Every entry of OUT is either metrics.jsonl or a complete checkpoint that verifies against its
  // manifest and loads; nothing temporary (dot-prefixed) is left anywhere.
  static void expect_clean_and_verified(const fs::path& out) {
    for (const fs::directory_entry& e : fs::recursive_directory_iterator(out)) {
      EXPECT_NE(e.path().filename().string()[0], '.') << "left behind: " << e.path();
    }
    for (const fs::directory_entry& e : fs::directory_iterator(out)) {
      if (!e.is_directory()) continue;
      EXPECT_TRUE(verify_directory(e.path(), true).ok()) << e.path();
      EXPECT_TRUE(load_model_directory(e.path()).ok()) << e.path();
    }
  }

  fs::path root_;
  ChunkedDataset ds_ = make_dataset();
  TrainData data_;
  std::unique_ptr<Backend> backend_ = make_cpu_backend();
};

TEST_F(CheckpointFaults, CheckpointsCarryAManifestOverEveryFile) {
  SurgeryTrainOptions o = options(root_ / "run");
  o.steps = 1;
  ASSERT_TRUE(run(o).ok());
  absl::StatusOr<std::optional<Manifest>> m = read_manifest(o.out_dir / "step_1");
  ASSERT_TRUE(m.ok() && m->has_value());
  std::set<std::string> listed, present;
  for (const ManifestEntry& e : (*m)->files) listed.insert(e.name);
  for (const fs::directory_entry& e : fs::directory_iterator(o.out_dir / "step_1")) {
    if (e.path().filename() != kManifestFile) present.insert(e.path().filename().string());
  }
  EXPECT_EQ(listed, present);
  EXPECT_TRUE(listed.count("optimizer.bin") && listed.count("trainer_state.json") &&
              listed.count("plan.json") && listed.count("model.safetensors"));
}

TEST_F(CheckpointFaults, ResumeRefusesAFlippedByteNamingTheFile) {
  SurgeryTrainOptions o = options(root_ / "run");
  o.stop_after_step = 2;
  ASSERT_TRUE(run(o).ok());
  o.stop_after_step = 0;
  o.resume = true;
  for (const char* name : {"optimizer.bin", "model.safetensors", "trainer_state.json"}) {
    const fs::path file = o.out_dir / "step_2" / name;
    const std::string good = read_bytes(file);
    std::string bad = good;
    bad[bad.size() / 2] ^= 0x10;
    write_bytes(file, bad);
    absl::StatusOr<TrainRunResult> r = run(o);
    ASSERT_FALSE(r.ok()) << name;
    const std::string line = absl::StrCat(file.string(), ": content hash mismatch (manifest says ",
                                          hex_of(good), ", file has ", hex_of(bad), ")");
    EXPECT_NE(std::string(r.status().message()).find(line), std::string::npos) << r.status();
    write_bytes(file, good);
  }
  EXPECT_TRUE(run(o).ok());
}

// A save that fails at any of its writes (the n-th, for every n up to the end of the first save
// and a sample after it) stops the run with one line naming the checkpoint, the file, the
// system's reason and the last good checkpoint; all earlier checkpoints stay complete and
// verified, and nothing temporary remains. Resumed with space again (for a sample of n, since
// each resume re-runs saves that fsync), the run ends byte-identical to an uninterrupted one.
TEST_F(CheckpointFaults, FailedWritesKeepThePreviousCheckpoint) {
  SurgeryTrainOptions whole = options(root_ / "whole");
  whole.steps = 2;  // resumed from step_1: saves best/, step_2/ and final/
  ASSERT_TRUE(run(whole).ok());
  SurgeryTrainOptions first = whole;
  first.out_dir = root_ / "first";
  first.stop_after_step = 1;
  ASSERT_TRUE(run(first).ok());

  constexpr int64_t kEveryWriteUpTo = 48, kStrideAfter = 7, kResumeEvery = 8, kGiveUp = 1000;
  bool completed = false;
  int64_t failures = 0;
  for (int64_t n = 1; n <= kGiveUp && !completed; n += n < kEveryWriteUpTo ? 1 : kStrideAfter) {
    const fs::path out = root_ / absl::StrCat("fail_", n);
    fs::copy(first.out_dir, out, fs::copy_options::recursive);
    SurgeryTrainOptions o = whole;
    o.out_dir = out;
    o.resume = true;
    fail_nth_write_for_testing(n);
    absl::StatusOr<TrainRunResult> r = run(o);
    fail_nth_write_for_testing(0);
    completed = r.ok();  // n is past the last write of the run
    if (!completed) {
      ++failures;
      const std::string msg(r.status().message());
      EXPECT_EQ(msg.rfind("cannot save checkpoint " + out.string() + "/", 0), 0u) << msg;
      EXPECT_NE(msg.find(": write failed: No space left on device; last good checkpoint: " +
                         out.string() + "/step_"),
                std::string::npos)
          << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos);
      expect_clean_and_verified(out);
      ASSERT_TRUE(fs::exists(out / "step_1" / kManifestFile));
      if (n % kResumeEvery != 1) {
        fs::remove_all(out);
        continue;
      }
      absl::StatusOr<TrainRunResult> resumed = run(o);
      ASSERT_TRUE(resumed.ok()) << "after failing write " << n << ": " << resumed.status();
    }
    for (const char* file : {"final/model.safetensors", "final/optimizer.bin"}) {
      EXPECT_EQ(read_bytes(whole.out_dir / file), read_bytes(out / file)) << n << " " << file;
    }
    expect_clean_and_verified(out);
    fs::remove_all(out);
  }
  EXPECT_TRUE(completed);
  EXPECT_GT(failures, kEveryWriteUpTo);
  RecordProperty("failing_writes_tried", static_cast<int>(failures));
}

// The same with a real full disk: a tmpfs with room for two checkpoints of this run and not a
// third. Mounting needs privileges the test may not have; then it skips.
TEST_F(CheckpointFaults, RealFullDiskKeepsThePreviousCheckpoint) {
  SurgeryTrainOptions probe = options(root_ / "probe");
  probe.steps = 1;
  probe.eval_every = 0;
  ASSERT_TRUE(run(probe).ok());
  uint64_t checkpoint_bytes = 0;
  for (const fs::directory_entry& e : fs::directory_iterator(probe.out_dir / "step_1")) {
    // tmpfs allocates whole pages.
    constexpr uint64_t kPage = 4096;
    checkpoint_bytes += (e.file_size() + kPage - 1) / kPage * kPage;
  }
  const fs::path mount_point = root_ / "small_disk";
  fs::create_directories(mount_point);
  const std::string size = absl::StrCat("size=", checkpoint_bytes * 5 / 2);
  if (::mount("tmpfs", mount_point.c_str(), "tmpfs", 0, size.c_str()) != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
  }
  // Unmounted however the test ends, so TearDown can remove the directory.
  struct Unmount {
    fs::path at;
    ~Unmount() { ::umount(at.c_str()); }
  } unmount{mount_point};
  SurgeryTrainOptions o = options(mount_point / "run");
  o.eval_every = 0;  // checkpoints step_1, step_2, then step_3 does not fit
  absl::StatusOr<TrainRunResult> r = run(o);
  ASSERT_FALSE(r.ok());
  const std::string msg(r.status().message());
  EXPECT_NE(msg.find("No space left on device"), std::string::npos) << msg;
  EXPECT_NE(msg.find("; last good checkpoint: " + (o.out_dir / "step_2").string()),
            std::string::npos)
      << msg;
  expect_clean_and_verified(o.out_dir);
  EXPECT_TRUE(fs::exists(o.out_dir / "step_2" / kManifestFile));
  EXPECT_FALSE(fs::exists(o.out_dir / "step_3"));
}

TEST_F(CheckpointFaults, ResumeFromAnotherModelIsRefusedNamingBoth) {
  SurgeryTrainOptions o = options(root_ / "run");
  o.plan.reset();  // every element trainable: the frozen-element check cannot tell models apart
  o.stop_after_step = 2;
  ASSERT_TRUE(run(o).ok());
  o.stop_after_step = 0;
  o.resume = true;

  SurgeryTrainOptions other_shape = o;
  other_shape.model_dir = kFixtures / "models" / "bloom-h6-l3";
  absl::StatusOr<TrainRunResult> r = run(other_shape);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(std::string(r.status().message()),
            absl::StrCat("resume: ", (o.out_dir / "step_2").string(),
                         " was made with a different model configuration: hidden_size "
                         "(checkpoint 64, this run 48); checkpoint base ",
                         kModel.string(), ", --model ", other_shape.model_dir.string()));

  // Same shapes, one weight one ulp away.
  absl::StatusOr<BloomModel> base = load_model_directory(kModel);
  ASSERT_TRUE(base.ok());
  const std::string base_hash = arena_sha256(base->arena);
  absl::StatusOr<TensorView> w = base->arena.view("h.0.mlp.dense_h_to_4h.weight");
  ASSERT_TRUE(w.ok());
  w->as<float>()[5] = std::nextafter(w->as<float>()[5], 2.0f);
  ASSERT_TRUE(save_model_directory(*base, root_ / "other_weights").ok());
  SurgeryTrainOptions other_weights = o;
  other_weights.model_dir = root_ / "other_weights";
  r = run(other_weights);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(std::string(r.status().message()),
            absl::StrCat("resume: ", (o.out_dir / "step_2").string(),
                         " was made with a different base model: checkpoint base ",
                         kModel.string(), " has weights sha256 ", base_hash, ", --model ",
                         other_weights.model_dir.string(), " has ", arena_sha256(base->arena)));
  EXPECT_TRUE(run(o).ok());
}

// --- numerical faults -------------------------------------------------------------------------

constexpr int64_t kFaultStep = 3;
constexpr char kWeightTensor[] = "h.1.mlp.dense_4h_to_h.bias";
constexpr char kGradientTensor[] = "h.1.self_attention.query_key_value.weight";
constexpr int64_t kFaultElement = 17;

StepFaultHook nan_weight_at(int64_t at) {
  StepFaultHook hook;
  hook.before_forward = [at](int64_t step, BloomModel& model) {
    if (step != at) return;
    absl::StatusOr<TensorView> v = model.arena.view(kWeightTensor);
    v->as<float>()[3] = std::numeric_limits<float>::quiet_NaN();
  };
  return hook;
}

// Sets the gradient of kGradientTensor's element kFaultElement to NaN at step `at`.
StepFaultHook nan_gradient_at(int64_t at, const ParameterArena& arena) {
  int64_t offset = -1;
  for (const ParameterInfo& p : arena.parameters()) {
    if (p.name == kGradientTensor) offset = p.offset + kFaultElement;
  }
  StepFaultHook hook;
  hook.after_backward = [at, offset](int64_t step, CompactGradients& g) {
    if (step != at) return;
    int64_t pos = -1;
    for (int64_t i = 0; i < g.size() && pos < 0; ++i) pos = g.arena_index(i) == offset ? i : -1;
    ASSERT_GE(pos, 0) << "element " << offset << " is not trainable";
    g.data()[pos] = std::numeric_limits<float>::quiet_NaN();
  };
  return hook;
}

std::vector<MicroBatch> batch_of(const ChunkedDataset& ds) {
  return {chunk_micro_batch(ds, 0, 2)};
}

TEST_F(CheckpointFaults, NanWeightIsReportedAtItsStepWithTheTensorNamed) {
  absl::StatusOr<BloomModel> model = load_model_directory(kModel);
  ASSERT_TRUE(model.ok());
  const FrozenMask mask = FrozenMask::all_trainable(model->arena);
  for (bool skip : {false, true}) {
    OptimizerOptions oo;
    oo.skip_nonfinite = skip;  // skipping the update cannot clear a poisoned weight
    Trainer trainer(*model, *backend_, mask, oo);
    trainer.set_fault_hook(nan_weight_at(kFaultStep));
    for (int64_t s = 1; s < kFaultStep; ++s) ASSERT_TRUE(trainer.step(batch_of(ds_), 1e-3).ok());
    absl::StatusOr<StepResult> r = trainer.step(batch_of(ds_), 1e-3);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(std::string(r.status().message()),
              absl::StrCat("step ", kFaultStep, ": non-finite weight in ", kWeightTensor,
                           " (element 3 is NaN)"));
    absl::StatusOr<TensorView> v = model->arena.view(kWeightTensor);
    v->as<float>()[3] = 0.0f;
  }
}

TEST_F(CheckpointFaults, NanGradientIsReportedAtItsStepWithTheTensorNamed) {
  absl::StatusOr<BloomModel> model = load_model_directory(kModel);
  ASSERT_TRUE(model.ok());
  const FrozenMask mask = FrozenMask::all_trainable(model->arena);
  Trainer trainer(*model, *backend_, mask, OptimizerOptions{});
  trainer.set_fault_hook(nan_gradient_at(kFaultStep, model->arena));
  for (int64_t s = 1; s < kFaultStep; ++s) ASSERT_TRUE(trainer.step(batch_of(ds_), 1e-3).ok());
  const std::vector<float> before(
      reinterpret_cast<const float*>(model->arena.base()),
      reinterpret_cast<const float*>(model->arena.base()) + model->arena.size_elements());
  absl::StatusOr<StepResult> r = trainer.step(batch_of(ds_), 1e-3);
  ASSERT_FALSE(r.ok());
  const std::string cause = absl::StrCat("non-finite gradient in ", kGradientTensor, " (element ",
                                         kFaultElement, " is NaN; gradient norm nan)");
  EXPECT_EQ(std::string(r.status().message()), absl::StrCat("step ", kFaultStep, ": ", cause));
  EXPECT_EQ(std::memcmp(before.data(), model->arena.base(), before.size() * sizeof(float)), 0);

  // With skip_nonfinite the step is skipped, the cause still named, and training goes on.
  OptimizerOptions skip;
  skip.skip_nonfinite = true;
  Trainer skipping(*model, *backend_, mask, skip);
  skipping.set_fault_hook(nan_gradient_at(1, model->arena));
  r = skipping.step(batch_of(ds_), 1e-3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->finite);
  EXPECT_EQ(r->nonfinite, cause);
  EXPECT_EQ(std::memcmp(before.data(), model->arena.base(), before.size() * sizeof(float)), 0);
  r = skipping.step(batch_of(ds_), 1e-3);
  ASSERT_TRUE(r.ok() && r->finite);
}

// Through a whole run: the error also names the last good checkpoint.
TEST_F(CheckpointFaults, NanGradientInARunNamesTheLastGoodCheckpoint) {
  SurgeryTrainOptions o = options(root_ / "run");
  o.plan.reset();  // the plan would freeze the element the fault goes into
  absl::StatusOr<BloomModel> model = load_model_directory(kModel);
  ASSERT_TRUE(model.ok());
  o.fault_hook = nan_gradient_at(kFaultStep, model->arena);
  absl::StatusOr<TrainRunResult> r = run(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(std::string(r.status().message()),
            absl::StrCat("step 3: non-finite gradient in ", kGradientTensor, " (element ",
                         kFaultElement, " is NaN; gradient norm nan); last good checkpoint: ",
                         (o.out_dir / "step_2").string()));
}

}  // namespace
}  // namespace engine
