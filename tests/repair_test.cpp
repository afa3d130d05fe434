// Tests for the repair pipeline (surgery/repair.h) and pretraining (model/pretrain.h) on the
// transformers-made fixture model bloom-h4-l2 (2 layers x 4 heads, vocab 260) with random-id
// data and a few optimizer steps: the OUT layout, a self-contained report, frozen parameters of
// OUT/final bit-identical to the input (checked element by element against the mask the plan
// implies), early stop, the healthy-column fallback, --resume, and a pretrained model directory
// that loads with its tokenizer.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/dataset.h"
#include "model/model_directory.h"
#include "model/pretrain.h"
#include "model/tokenizer.h"
#include "surgery/head_surgery.h"
#include "surgery/repair.h"
#include "tests/fixture_reference.h"

namespace engine {
namespace {

namespace fs = std::filesystem;
using testing_fixtures::kFixtures;

constexpr int64_t kSeq = 16;

// Random ids inside the fixture vocabulary: 40 documents of 13-30 tokens.
ChunkedDataset make_dataset() {
  Corpus corpus;
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> id(4, 259);
  std::uniform_int_distribution<int> len(13, 30);
  for (int doc = 0; doc < 40; ++doc) {
    for (int t = len(rng); t > 0; --t) corpus.ids.push_back(id(rng));
    corpus.document_ends.push_back(corpus.ids.size());
  }
  const std::vector<uint32_t> separator = {14, 14};
  ChunkOptions co;
  co.seq_len = kSeq, co.holdout_fraction = 0.15, co.seed = 3;
  absl::StatusOr<ChunkedDataset> ds = ChunkedDataset::build(corpus, separator, co);
  EXPECT_TRUE(ds.ok()) << ds.status();
  return std::move(*ds);
}

RepairData data_of(const ChunkedDataset& ds) {
  RepairData data;
  data.train = &ds;
  for (size_t i = 0; i < ds.holdout_size(); ++i) {
    std::span<const uint32_t> c = ds.holdout_chunk(i);
    data.eval_chunks.emplace_back(c.begin(), c.end());
    data.scan_sequences.emplace_back(c.begin(), c.end());
  }
  return data;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class RepairTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // One directory per test and process: ctest runs tests in parallel.
    root_ = fs::temp_directory_path() /
            absl::StrCat("engine_repair_test_", getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  RepairOptions options(const std::string& out) const {
    RepairOptions o;
    o.model_dir = kFixtures / "models" / "bloom-h4-l2";
    o.out_dir = root_ / out;
    o.passes = 2;
    o.scan_batch = 2;
    o.train.seq_len = kSeq, o.train.batch = 2, o.train.grad_accum = 1;
    o.train.steps = 4;
    o.train.lr = 5e-3;
    o.train.eval_every = 2;
    o.version = "test";
    o.commands = {"engine repair (test)"};
    return o;
  }

  fs::path root_;
};

// Every element the plans leave frozen equals the input model's bit for bit; at least one
// trainable element moved (so the comparison is not vacuous).
void expect_frozen_identical(const fs::path& input_dir, const fs::path& final_dir,
                             const std::vector<HeadTarget>& targets) {
  absl::StatusOr<BloomModel> input = load_model_directory(input_dir);
  ASSERT_TRUE(input.ok()) << input.status();
  absl::StatusOr<BloomModel> final_model = load_model_directory(final_dir);
  ASSERT_TRUE(final_model.ok()) << final_model.status();
  ASSERT_EQ(input->arena.size_elements(), final_model->arena.size_elements());
  const BloomConfig& c = input->config;
  SurgeryPlan plan;
  plan.targets = targets;
  absl::StatusOr<FrozenMask> mask =
      surgery_mask(input->arena, {c.n_layer, c.n_head, c.head_dim()}, plan);
  ASSERT_TRUE(mask.ok()) << mask.status();
  const float* a = reinterpret_cast<const float*>(input->arena.base());
  const float* b = reinterpret_cast<const float*>(final_model->arena.base());
  int64_t frozen_changed = 0, trainable_changed = 0;
  for (int64_t i = 0; i < input->arena.size_elements(); ++i) {
    const bool same = std::memcmp(a + i, b + i, sizeof(float)) == 0;
    if (mask->trainable(i)) {
      trainable_changed += same ? 0 : 1;
    } else {
      frozen_changed += same ? 0 : 1;
    }
  }
  EXPECT_EQ(frozen_changed, 0);
  EXPECT_GT(trainable_changed, 0);
}

TEST_F(RepairTest, ExplicitHeadsProduceTheLayoutAReportAndBitIdenticalFrozenWeights) {
  const ChunkedDataset ds = make_dataset();
  RepairOptions o = options("out");
  o.passes = 1;
  o.selection.heads = {{0, 1}, {1, 3}};
  absl::StatusOr<RepairResult> r = run_repair(o, data_of(ds), *make_cpu_backend());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->passes.size(), 1u);
  EXPECT_EQ(r->passes[0].targets, 2);
  EXPECT_EQ(r->passes[0].steps, 4);
  const fs::path pass = o.out_dir / "pass_1";
  for (const char* f : {"report_before.json", "plan.json", "report_after.json", "pass.json",
                        "comparison.json", "train/metrics.jsonl"}) {
    EXPECT_TRUE(fs::is_regular_file(pass / f)) << f;
  }
  EXPECT_TRUE(fs::is_directory(pass / "train" / r->passes[0].chosen_checkpoint));
  EXPECT_TRUE(fs::is_regular_file(o.out_dir / "final" / "config.json"));
  EXPECT_TRUE(fs::is_regular_file(o.out_dir / "final" / "model.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(o.out_dir / "repair.json"));
  absl::StatusOr<SurgeryPlan> plan = load_plan((pass / "plan.json").string());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->targets, (std::vector<HeadTarget>{{0, 1}, {1, 3}}));

  const std::string html = read_file(r->report_html);
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("engine repair (test)"), std::string::npos);
  EXPECT_NE(html.find("polyline"), std::string::npos);  // the loss curve
  for (const char* external : {"src=", "href=", "<link", "<script", "url(", "@import"}) {
    EXPECT_EQ(html.find(external), std::string::npos) << external;
  }
  expect_frozen_identical(o.model_dir, o.out_dir / "final", {{0, 1}, {1, 3}});
}

TEST_F(RepairTest, StopsBeforeTrainingWhenNothingIsCollapsed) {
  const ChunkedDataset ds = make_dataset();
  RepairOptions o = options("out");
  o.thresholds.sink = 1.0, o.thresholds.dead = 1.0;  // bos_mass > 1 never happens
  absl::StatusOr<RepairResult> r = run_repair(o, data_of(ds), *make_cpu_backend());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->passes.empty());
  EXPECT_NE(r->stop_reason.find("nothing to repair"), std::string::npos) << r->stop_reason;
  EXPECT_FALSE(fs::exists(o.out_dir / "pass_1" / "train"));
  EXPECT_TRUE(fs::is_regular_file(o.out_dir / "report.html"));
  // The final model is the input model.
  absl::StatusOr<BloomModel> input = load_model_directory(o.model_dir);
  absl::StatusOr<BloomModel> final_model = load_model_directory(o.out_dir / "final");
  ASSERT_TRUE(input.ok() && final_model.ok());
  EXPECT_EQ(std::memcmp(input->arena.base(), final_model->arena.base(), input->arena.size_bytes()),
            0);
}

TEST_F(RepairTest, FallbackRepairsTheHealthyColumnThenStopsWhenNothingIsCollapsed) {
  const ChunkedDataset ds = make_dataset();
  RepairOptions o = options("out");
  o.thresholds.sink = 1.0, o.thresholds.dead = 1.0;
  o.fallback_healthy = true;
  absl::StatusOr<RepairResult> r = run_repair(o, data_of(ds), *make_cpu_backend());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->passes.size(), 1u);  // after pass 1 nothing is collapsed: no pass 2
  EXPECT_TRUE(r->passes[0].fallback_healthy);
  EXPECT_FALSE(fs::exists(o.out_dir / "pass_2"));
  // The column: the head index with the highest mean bos_mass over layers, recomputed here from
  // the report, in the upper half of the layers (layer 1 of 2).
  absl::StatusOr<DiagnosisReport> before =
      load_report((o.out_dir / "pass_1" / "report_before.json").string());
  ASSERT_TRUE(before.ok()) << before.status();
  int64_t best = 0;
  for (int64_t h = 1; h < before->n_head; ++h) {
    auto mean = [&](int64_t head) {
      return (before->at(0, head).bos_mass.mean + before->at(1, head).bos_mass.mean) / 2;
    };
    if (mean(h) > mean(best)) best = h;
  }
  absl::StatusOr<SurgeryPlan> plan = load_plan((o.out_dir / "pass_1" / "plan.json").string());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->targets, (std::vector<HeadTarget>{{1, best}}));
  expect_frozen_identical(o.model_dir, o.out_dir / "final", plan->targets);
}

TEST_F(RepairTest, ResumeSkipsFinishedPassesAndARerunWithoutItIsRefused) {
  const ChunkedDataset ds = make_dataset();
  RepairOptions o = options("out");
  o.passes = 1;
  o.selection.heads = {{1, 0}};
  ASSERT_TRUE(run_repair(o, data_of(ds), *make_cpu_backend()).ok());
  const fs::path metrics = o.out_dir / "pass_1" / "train" / "metrics.jsonl";
  const std::string metrics_before = read_file(metrics);
  const auto after_time = fs::last_write_time(o.out_dir / "pass_1" / "report_after.json");

  absl::StatusOr<RepairResult> again = run_repair(o, data_of(ds), *make_cpu_backend());
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();

  o.resume = true;
  absl::StatusOr<RepairResult> resumed = run_repair(o, data_of(ds), *make_cpu_backend());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_EQ(resumed->passes.size(), 1u);
  EXPECT_EQ(read_file(metrics), metrics_before);  // no training step ran again
  EXPECT_EQ(fs::last_write_time(o.out_dir / "pass_1" / "report_after.json"), after_time);
  expect_frozen_identical(o.model_dir, o.out_dir / "final", {{1, 0}});
}

TEST_F(RepairTest, ResumeContinuesAnInterruptedPass) {
  const ChunkedDataset ds = make_dataset();
  RepairOptions o = options("out");
  o.passes = 1;
  o.selection.heads = {{0, 2}};
  o.train.stop_after_step = 2;  // stands in for a kill after the step-2 checkpoint
  absl::StatusOr<RepairResult> stopped = run_repair(o, data_of(ds), *make_cpu_backend());
  ASSERT_FALSE(stopped.ok());
  EXPECT_FALSE(fs::exists(o.out_dir / "pass_1" / "report_after.json"));
  o.train.stop_after_step = 0;
  o.resume = true;
  absl::StatusOr<RepairResult> resumed = run_repair(o, data_of(ds), *make_cpu_backend());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->passes[0].steps, 4);
  EXPECT_NE(read_file(o.out_dir / "pass_1" / "train" / "metrics.jsonl").find("\"resume\""),
            std::string::npos);
}

TEST_F(RepairTest, PretrainWritesALoadableModelDirectoryWithItsTokenizer) {
  const fs::path corpus = root_ / "corpus.txt";
  {
    std::ofstream out(corpus);
    for (int i = 0; i < 30; ++i) {
      out << "The quick brown fox jumps over the lazy dog, number " << i << ".\n\n";
    }
  }
  PretrainOptions o;
  o.data = corpus;
  o.out_dir = root_ / "pretrained";
  o.n_layer = 1, o.n_head = 2, o.hidden_size = 16;
  o.train = default_pretrain_recipe();
  o.train.seq_len = kSeq, o.train.batch = 2, o.train.steps = 3, o.train.warmup = 1;
  o.train.eval_every = 0;
  o.holdout = 0.1;
  absl::StatusOr<PretrainResult> r = run_pretraining(o, *make_cpu_backend());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps, 3);
  EXPECT_TRUE(fs::is_regular_file(o.out_dir / kPretrainSummaryFile));
  absl::StatusOr<BloomModel> model = load_model_directory(o.out_dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->config.vocab_size, kByteLevelVocab);
  EXPECT_EQ(model->config.n_layer, 1);
  absl::StatusOr<Tokenizer> tok = Tokenizer::load((o.out_dir / "tokenizer.json").string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  // Training moved the weights away from the initialisation.
  absl::StatusOr<BloomModel> init = load_model_directory(o.out_dir / "init");
  ASSERT_TRUE(init.ok()) << init.status();
  EXPECT_NE(std::memcmp(init->arena.base(), model->arena.base(), init->arena.size_bytes()), 0);
  // A second run into the same directory is refused without --resume.
  absl::StatusOr<PretrainResult> again = run_pretraining(o, *make_cpu_backend());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
}

// The CLI end to end on a tiny corpus: `engine pretrain` (training flags given explicitly override
// the pretraining recipe), then `engine repair` on its output; then a usage error is one line.
TEST_F(RepairTest, CliPretrainsThenRepairsAndPrintsWhereTheReportIs) {
  const fs::path corpus = root_ / "corpus.txt";
  {
    std::ofstream out(corpus);
    for (int i = 0; i < 60; ++i) out << "A small corpus line, number " << i << ".\n\n";
  }
  const fs::path log = root_ / "log.txt";
  const std::string cli = ENGINE_CLI_PATH;
  const std::string pretrain = absl::StrCat(
      cli, " pretrain --data ", corpus.string(), " --out ", (root_ / "model").string(),
      " --n_layer 2 --n_head 2 --hidden_size 16 --steps 3 --seq_len 16 --batch 2 --holdout 0.1",
      " --threads 1 > ", log.string(), " 2>&1");
  ASSERT_EQ(std::system(pretrain.c_str()), 0) << read_file(log);
  absl::StatusOr<BloomModel> model = load_model_directory(root_ / "model");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->config.n_layer, 2);
  EXPECT_NE(read_file(root_ / "model" / kPretrainSummaryFile).find("\"steps\": 3"),
            std::string::npos);

  const std::string repair = absl::StrCat(
      cli, " repair --model ", (root_ / "model").string(), " --data ", corpus.string(), " --out ",
      (root_ / "repair").string(),
      " --heads 1:0 --passes 1 --steps 2 --seq_len 16 --batch 2 --holdout 0.1 --threads 1 > ",
      log.string(), " 2>&1");
  ASSERT_EQ(std::system(repair.c_str()), 0) << read_file(log);
  const std::string out = read_file(log);
  EXPECT_NE(out.find("report in " + (root_ / "repair" / "report.html").string()),
            std::string::npos)
      << out;
  EXPECT_TRUE(fs::is_regular_file(root_ / "repair" / "final" / "tokenizer.json"));
  // The report records the pretraining command next to the repair command.
  const std::string html = read_file(root_ / "repair" / "report.html");
  EXPECT_NE(html.find(" pretrain --data "), std::string::npos);
  EXPECT_NE(html.find(" repair --model "), std::string::npos);

  const std::string usage = absl::StrCat(cli, " repair --model ", (root_ / "model").string(),
                                         " > ", log.string(), " 2>&1");
  EXPECT_NE(std::system(usage.c_str()), 0);
  EXPECT_EQ(read_file(log), "engine: repair: --data FILE is required\n");
}

}  // namespace
}  // namespace engine
