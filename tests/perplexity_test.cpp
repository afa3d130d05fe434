// Sliding-window perplexity (model/perplexity.cpp) and the `engine eval` / `engine generate`
// commands, on the fixture models.
// References: transformers' loss for the fixture "single" case (a 13-token sequence scored whole,
// tolerance 1e-5 as in bloom_forward_test), transformers' greedy generation ids, and, for
// overlapping windows, the Hugging Face loop (prev_end / trg_len) re-implemented here on top of
// bloom_forward (tolerance 1e-5: same forward, different batching).
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/bloom_forward.h"
#include "model/perplexity.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace engine {
namespace {

const std::filesystem::path kFixtures = std::filesystem::path(ENGINE_SOURCE_DIR) / "tests/fixtures";

template <typename T>
std::vector<T> reference_array(const std::string& model, const std::string& name) {
  absl::StatusOr<SafetensorsFile> f =
      SafetensorsFile::open(kFixtures / "reference" / (model + ".safetensors"));
  EXPECT_TRUE(f.ok()) << f.status();
  const SafetensorsTensorInfo* info = f->header().find(name);
  EXPECT_NE(info, nullptr) << name;
  std::vector<T> out(info->numel);
  std::memcpy(out.data(), f->tensor_data(*info), info->numel * sizeof(T));
  return out;
}

struct Loaded {
  BloomModel model;
  std::unique_ptr<Backend> backend = make_cpu_backend();
};

Loaded load(const std::string& name) {
  absl::StatusOr<BloomModel> m = load_model_directory(kFixtures / "models" / name);
  EXPECT_TRUE(m.ok()) << m.status();
  return Loaded{std::move(*m)};
}

TEST(Perplexity, WholeSequenceEqualsTransformersLoss) {
  Loaded l = load("bloom-h4-l2");
  const std::vector<int32_t> ids = reference_array<int32_t>("bloom-h4-l2", "single.input_ids");
  const double loss = reference_array<float>("bloom-h4-l2", "single.loss")[0];
  for (int64_t seq_len : {13, 64}) {
    absl::StatusOr<PerplexityResult> r =
        sliding_window_perplexity(l.model, *l.backend, {ids}, {seq_len, seq_len, 1});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tokens_scored, 12);
    EXPECT_EQ(r->windows, 1);
    EXPECT_NEAR(r->mean_nll(), loss, 1e-5);
  }
}

// The Hugging Face loop: windows [begin, min(begin + L, n)), targets = the last
// trg_len = end - prev_end tokens, the window's first token never scored.
double hf_loop_nll(Loaded& l, const std::vector<int32_t>& doc, int64_t max_len, int64_t stride,
                   int64_t* scored) {
  const int64_t n = static_cast<int64_t>(doc.size());
  int64_t prev_end = 0;
  double nll = 0.0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + max_len, n);
    const int64_t trg_len = end - prev_end;
    const int64_t w = end - begin;
    std::vector<int32_t> targets(w, -1);
    for (int64_t t = 0; t + 1 < w; ++t) {
      if (t + 1 >= w - trg_len) targets[t] = doc[begin + t + 1];
    }
    ForwardInputs in;
    in.batch = 1, in.seq = w, in.ids = doc.data() + begin, in.targets = targets.data();
    absl::StatusOr<ForwardResult> r = bloom_forward(l.model, *l.backend, in);
    EXPECT_TRUE(r.ok()) << r.status();
    nll += r->loss * r->scored;
    *scored += r->scored;
    prev_end = end;
    if (end == n) break;
  }
  return nll;
}

TEST(Perplexity, WindowsFollowTheHuggingFaceLoopWithExactCounts) {
  Loaded l = load("bloom-h6-l3");
  const std::vector<int32_t> batch = reference_array<int32_t>("bloom-h6-l3", "batch.input_ids");
  // Documents of 17, 9, 1 and 2 tokens.
  std::vector<std::vector<int32_t>> docs = {
      std::vector<int32_t>(batch.begin(), batch.begin() + 17),
      std::vector<int32_t>(batch.begin() + 17, batch.begin() + 26), {batch[30]},
      {batch[40], batch[41]}};
  for (auto [seq_len, stride] : {std::pair<int64_t, int64_t>{8, 4}, {5, 5}, {6, 1}, {2, 1}}) {
    SCOPED_TRACE(std::to_string(seq_len) + "/" + std::to_string(stride));
    int64_t want_scored = 0;
    double want_nll = 0.0;
    for (const auto& d : docs) want_nll += hf_loop_nll(l, d, seq_len, stride, &want_scored);
    // With overlapping windows every token but a document's first is scored exactly once.
    if (stride < seq_len) EXPECT_EQ(want_scored, 16 + 8 + 0 + 1);
    for (int64_t batch_size : {1, 3}) {
      absl::StatusOr<PerplexityResult> r =
          sliding_window_perplexity(l.model, *l.backend, docs, {seq_len, stride, batch_size});
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->tokens_scored, want_scored);
      EXPECT_NEAR(r->nll_sum, want_nll, 1e-5 * want_scored);
    }
  }
}

TEST(Perplexity, RejectsBadOptionsAndEmptyDocuments) {
  Loaded l = load("bloom-h4-l2");
  const std::vector<std::vector<int32_t>> docs = {{1, 5, 6}};
  EXPECT_FALSE(sliding_window_perplexity(l.model, *l.backend, docs, {1, 1, 1}).ok());
  EXPECT_FALSE(sliding_window_perplexity(l.model, *l.backend, docs, {4, 5, 1}).ok());
  EXPECT_FALSE(sliding_window_perplexity(l.model, *l.backend, docs, {4, 0, 1}).ok());
  EXPECT_FALSE(sliding_window_perplexity(l.model, *l.backend, {{1, 2}, {}}, {4, 4, 1}).ok());
}

// Runs the CLI, returning stdout; *rc gets the exit status.
std::string run_cli(const std::string& args, int* rc) {
  const std::string cmd = std::string(ENGINE_CLI_PATH) + " " + args + " 2>/dev/null";
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

class EngineCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("engine_eval_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    // The fixture models' 260-id vocabulary is exactly the byte-level tokenizer's.
    ASSERT_TRUE(write_byte_level_tokenizer_json((dir_ / "tokenizer.json").string()).ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(EngineCliTest, EvalJsonMatchesTransformersLoss) {
  const std::vector<int32_t> ids = reference_array<int32_t>("bloom-h4-l2", "single.input_ids");
  const double loss = reference_array<float>("bloom-h4-l2", "single.loss")[0];
  {
    std::ofstream f(dir_ / "data.jsonl");
    f << nlohmann::json({{"input_ids", ids}}).dump() << "\n";
  }
  int rc = 0;
  const std::string out = run_cli(
      "eval --model " + (kFixtures / "models/bloom-h4-l2").string() + " --tokenizer " +
          (dir_ / "tokenizer.json").string() + " --data " + (dir_ / "data.jsonl").string() +
          " --seq_len 32 --json",
      &rc);
  ASSERT_EQ(rc, 0) << out;
  const nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["tokens_scored"].get<int64_t>(), 12);
  EXPECT_NEAR(j["nll"].get<double>(), loss, 1e-5);
  EXPECT_NEAR(j["ppl"].get<double>(), std::exp(loss), 1e-4 * std::exp(loss));
}

TEST_F(EngineCliTest, GenerateGreedyMatchesTransformers) {
  const std::vector<int32_t> prompt = reference_array<int32_t>("bloom-h6-l3", "generate.prompt_ids");
  const std::vector<int32_t> expected = reference_array<int32_t>("bloom-h6-l3", "generate.output_ids");
  std::string ids;
  for (int32_t id : prompt) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  int rc = 0;
  const std::string out = run_cli(
      "generate --model " + (kFixtures / "models/bloom-h6-l3").string() + " --tokenizer " +
          (dir_ / "tokenizer.json").string() + " --prompt_ids " + ids + " --max_new_tokens " +
          std::to_string(expected.size() - prompt.size()) + " --json",
      &rc);
  ASSERT_EQ(rc, 0) << out;
  const nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["output_ids"].get<std::vector<int32_t>>(), expected);
}

TEST_F(EngineCliTest, EvalRejectsIdsOutsideTheVocabulary) {
  {
    std::ofstream f(dir_ / "bad.jsonl");
    f << "{\"input_ids\": [1, 5, 999]}\n";
  }
  int rc = 0;
  run_cli("eval --model " + (kFixtures / "models/bloom-h4-l2").string() + " --data " +
              (dir_ / "bad.jsonl").string() + " --json",
          &rc);
  EXPECT_EQ(rc, 1);
}

}  // namespace
}  // namespace engine
