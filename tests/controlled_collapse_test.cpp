// Tests for controlled collapse (`engine pretrain --collapse`, model/pretrain.h): the auxiliary
// sink loss makes SINK or DEAD heads exactly where asked and nowhere else on a small model and a
// short run, bad --collapse specs are one-line errors naming the value, and the pipeline on a
// reduced recipe (pretrain with collapse, then `engine repair` without the healthy-column
// fallback) records collapsed heads before pass 1 and fewer after its last pass, and says the
// collapse was induced. The kernel term's gradient is checked in attention_test.cpp
// (AlibiAttentionBackward.SinkLossMatchesFiniteDifferences).
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <utility>
#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/dataset.h"
#include "model/model_directory.h"
#include "model/pretrain.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "surgery/corpus_scan.h"
#include "surgery/diagnosis.h"

namespace engine {
namespace {

namespace fs = std::filesystem;

// The small recipe of these tests: 2 layers x 4 heads, hidden 32, 32-token chunks.
constexpr int64_t kLayers = 2, kHeads = 4, kHidden = 32, kSeq = 32, kSteps = 300;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// English-like text with some structure to learn: numbered sentences from a small vocabulary.
void write_corpus(const fs::path& path, int documents) {
  const char* words[] = {"the", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs",
                         "far", "away", "from", "home", "while", "birds", "sing"};
  std::ofstream out(path);
  uint32_t state = 7;
  for (int d = 0; d < documents; ++d) {
    const int n = 8 + d % 7;
    for (int w = 0; w < n; ++w) {
      state = state * 1103515245u + 12345u;
      out << (w == 0 ? "" : " ") << words[(state >> 16) % 16];
    }
    out << ", number " << d << ".\n\n";
  }
}

class ControlledCollapse : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            absl::StrCat("engine_collapse_test_", getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    write_corpus(root_ / "corpus.txt", 400);
  }
  void TearDown() override { fs::remove_all(root_); }

  PretrainOptions options(const std::string& out, std::vector<HeadTarget> collapse) const {
    PretrainOptions o;
    o.data = root_ / "corpus.txt";
    o.out_dir = root_ / out;
    o.n_layer = kLayers, o.n_head = kHeads, o.hidden_size = kHidden;
    o.train = default_pretrain_recipe();
    o.train.seq_len = kSeq, o.train.batch = 8, o.train.steps = kSteps, o.train.warmup = 5;
    o.train.lr = 3e-3;
    o.train.eval_every = 0;
    o.holdout = 0.1;
    o.collapse = std::move(collapse);
    o.collapse_weight = 1.0;
    return o;
  }

  // The trained model's head report over its held-out chunks (the repair pipeline's protocol).
  DiagnosisReport diagnose(const PretrainOptions& o) const {
    absl::StatusOr<BloomModel> model = load_model_directory(o.out_dir);
    EXPECT_TRUE(model.ok()) << model.status();
    absl::StatusOr<Tokenizer> tok = Tokenizer::load((o.out_dir / "tokenizer.json").string());
    EXPECT_TRUE(tok.ok()) << tok.status();
    DataReadOptions read;
    read.tokenizer = &*tok;
    read.vocab_size = static_cast<uint32_t>(kByteLevelVocab);
    absl::StatusOr<Corpus> corpus = load_corpus({o.data.string()}, read);
    EXPECT_TRUE(corpus.ok()) << corpus.status();
    ChunkOptions co;
    co.seq_len = kSeq, co.holdout_fraction = o.holdout, co.seed = o.train.seed;
    absl::StatusOr<ChunkedDataset> chunks = ChunkedDataset::build(*corpus, *tok->encode("\n\n"), co);
    EXPECT_TRUE(chunks.ok()) << chunks.status();
    std::vector<TokenSequence> seqs;
    for (size_t i = 0; i < chunks->holdout_size(); ++i) {
      std::span<const uint32_t> c = chunks->holdout_chunk(i);
      seqs.emplace_back(c.begin(), c.end());
    }
    DiagnoseOptions d;
    d.seq_len = kSeq;
    absl::StatusOr<DiagnosisReport> report =
        diagnose_sequences(*model, *make_cpu_backend(), seqs, d);
    EXPECT_TRUE(report.ok()) << report.status();
    return *report;
  }

  fs::path root_;
};

TEST_F(ControlledCollapse, SinkOrDeadHeadsExactlyWhereAskedAndNowhereElse) {
  // Layer 1: a layer-0 head sees only token identities and ALiBi distances, so nothing marks an
  // arbitrary first token for it and it cannot be pulled onto it (docs/REPAIR.md).
  const std::vector<HeadTarget> asked = {{1, 1}, {1, 3}};
  const PretrainOptions with = options("collapsed", asked);
  absl::StatusOr<PretrainResult> r = run_pretraining(with, *make_cpu_backend());
  ASSERT_TRUE(r.ok()) << r.status();
  const PretrainOptions without = options("twin", {});
  absl::StatusOr<PretrainResult> twin = run_pretraining(without, *make_cpu_backend());
  ASSERT_TRUE(twin.ok()) << twin.status();

  const std::set<HeadTarget> wanted(asked.begin(), asked.end());
  const DiagnosisReport collapsed = diagnose(with);
  const DiagnosisReport control = diagnose(without);
  for (const HeadSummary& h : collapsed.heads) {
    SCOPED_TRACE(absl::StrCat("head ", h.layer, ":", h.head, " bos_mass ", h.bos_mass.mean));
    EXPECT_EQ(is_collapsed(h.cls), wanted.count({h.layer, h.head}) == 1);
  }
  // The twin (same recipe and seed, no auxiliary loss) has no collapsed head at all, so the
  // heads above are the auxiliary loss's doing.
  EXPECT_EQ(control.counts.collapsed(), 0);
  // pretrain.json says the collapse was induced, and how.
  const nlohmann::json summary =
      nlohmann::json::parse(read_file(with.out_dir / kPretrainSummaryFile));
  ASSERT_TRUE(summary.contains("collapse"));
  EXPECT_EQ(summary["collapse"]["induced"], true);
  EXPECT_EQ(summary["collapse"]["heads"].size(), asked.size());
  EXPECT_FALSE(nlohmann::json::parse(read_file(without.out_dir / kPretrainSummaryFile))
                   .contains("collapse"));
}

TEST_F(ControlledCollapse, BadSpecsAreOneLineErrorsNamingTheValue) {
  // The library: heads outside the architecture, a head listed twice, a bad weight.
  PretrainOptions o = options("bad", {{2, 0}});
  absl::StatusOr<PretrainResult> r = run_pretraining(o, *make_cpu_backend());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("--collapse 2:0"), absl::string_view::npos) << r.status();
  o.collapse = {{0, 4}};
  r = run_pretraining(o, *make_cpu_backend());
  EXPECT_NE(r.status().message().find("--collapse 0:4"), absl::string_view::npos) << r.status();
  o.collapse = {{0, 1}, {0, 1}};
  r = run_pretraining(o, *make_cpu_backend());
  EXPECT_NE(r.status().message().find("0:1 is listed twice"), absl::string_view::npos)
      << r.status();
  o.collapse = {{0, 1}};
  o.collapse_weight = -1.0;
  r = run_pretraining(o, *make_cpu_backend());
  EXPECT_NE(r.status().message().find("--collapse_weight -1"), absl::string_view::npos)
      << r.status();
  EXPECT_FALSE(fs::exists(o.out_dir / "train"));

  // The CLI: a malformed spec is one line naming it, exit code 1.
  const std::string cli = ENGINE_CLI_PATH;
  const fs::path log = root_ / "log.txt";
  // (spec, the value the message must name)
  const std::pair<std::string, std::string> specs[] = {
      {"1-2", "\"1-2\" is not LAYER:HEAD"}, {"1:x", "\"x\" is not a non-negative integer"},
      {"1:2:3", "\"1:2:3\" is not LAYER:HEAD"}};
  for (const auto& [spec, named] : specs) {
    const std::string cmd = absl::StrCat(cli, " pretrain --data ", (root_ / "corpus.txt").string(),
                                         " --out ", (root_ / "cli").string(), " --collapse ", spec,
                                         " > ", log.string(), " 2>&1");
    const int status = std::system(cmd.c_str());
    EXPECT_NE(status, 0) << spec;
    const std::string out = read_file(log);
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
    EXPECT_EQ(out, absl::StrCat("engine: --collapse: ", named, "\n"));
  }
}

// The default's pipeline on a reduced recipe through the CLI, as scripts/run_default.sh runs it:
// the subject is pretrained with controlled collapse, `engine repair` (no fallback) finds
// collapsed heads before pass 1 and leaves fewer after its last pass, and repair.json and the
// report say the collapse was induced.
TEST_F(ControlledCollapse, PipelineRepairsInducedCollapse) {
  const std::string cli = ENGINE_CLI_PATH;
  const fs::path log = root_ / "log.txt";
  const std::string common = absl::StrCat(
      " --seq_len ", kSeq, " --batch 8 --holdout 0.1 --seed 1234 --threads 1");
  const std::string pretrain = absl::StrCat(
      cli, " pretrain --data ", (root_ / "corpus.txt").string(), " --out ",
      (root_ / "subject").string(), " --n_layer ", kLayers, " --n_head ", kHeads,
      " --hidden_size ", kHidden, " --steps ", kSteps, " --warmup 5 --lr 3e-3 --eval_every 100",
      " --collapse 1:1,1:3 --collapse_weight 1", common, " > ", log.string(), " 2>&1");
  ASSERT_EQ(std::system(pretrain.c_str()), 0) << read_file(log);
  const std::string repair = absl::StrCat(
      cli, " repair --model ", (root_ / "subject").string(), " --data ",
      (root_ / "corpus.txt").string(), " --out ", (root_ / "repair").string(),
      " --passes 2 --steps 40 --lr 3e-3 --warmup 4 --eval_every 20 --grad_accum 1", common, " > ",
      log.string(), " 2>&1");
  ASSERT_EQ(std::system(repair.c_str()), 0) << read_file(log);

  const nlohmann::json summary = nlohmann::json::parse(read_file(root_ / "repair" / "repair.json"));
  ASSERT_TRUE(summary["passes"].is_array());
  ASSERT_FALSE(summary["passes"].empty()) << summary.dump();
  auto collapsed = [](const nlohmann::json& counts) {
    return counts["SINK"].get<int64_t>() + counts["DEAD"].get<int64_t>();
  };
  const nlohmann::json& first = summary["passes"].front();
  const nlohmann::json& last = summary["passes"].back();
  EXPECT_FALSE(first["fallback_healthy"].get<bool>());
  const int64_t found = collapsed(first["counts_before"]);
  const int64_t left = collapsed(last["counts_after"]);
  EXPECT_GT(found, 0) << summary.dump();
  EXPECT_LT(left, found) << summary.dump();
  ASSERT_TRUE(summary.contains("subject")) << summary.dump();
  EXPECT_EQ(summary["subject"]["collapse"]["induced"], true);
  const std::string html = read_file(root_ / "repair" / "report.html");
  EXPECT_NE(html.find("INDUCED, not natural"), std::string::npos);
  EXPECT_NE(html.find(absl::StrCat("Pass 1: ", found, " collapsed head")), std::string::npos);
}

}  // namespace
}  // namespace engine
