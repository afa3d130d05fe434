// `engine diagnose` and surgery/corpus_scan.h against transformers' statistics committed in
// tests/fixtures/reference/<model>.safetensors (computed from output_attentions in float64 sums,
// see tests/fixtures/README.md).
// Tolerance: abs <= 1e-5 per (layer, head) for bos_mass, entropy and local_mass, the same as the
// forward test (docs/TOLERANCES.md); a mean, standard deviation, min or max over sequences of
// values each within 1e-5 is within 1e-5 as well (the std up to float rounding of the variance,
// which the tolerance covers at these magnitudes).
// Every fixture row is one sequence: its real tokens (attention_mask 1), in order.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "model/config.h"
#include "model/model_directory.h"
#include "model/token_file.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "surgery/corpus_scan.h"
#include "tests/fixture_reference.h"

namespace engine {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

constexpr double kStatsTol = 1e-5;
const std::filesystem::path kFixtures = testing_fixtures::kFixtures;
const char* const kModels[] = {"bloom-h4-l2", "bloom-h6-l3", "bloom-h3-d32-l4", "bloom-h4-l2-f16"};
const char* const kStatNames[] = {"bos_mass", "entropy", "local_mass"};

template <typename T>
std::vector<T> reference_array(const std::string& model, const std::string& name,
                               std::vector<int64_t>* shape = nullptr) {
  return testing_fixtures::Reference(model).get<T>(name, shape);
}

// The real tokens of every row of a fixture case.
std::vector<TokenSequence> case_sequences(const std::string& model, const std::string& c) {
  std::vector<int64_t> shape;
  const std::vector<int32_t> ids = reference_array<int32_t>(model, c + ".input_ids", &shape);
  const std::vector<int32_t> mask = reference_array<int32_t>(model, c + ".attention_mask");
  std::vector<TokenSequence> out;
  for (int64_t b = 0; b < shape[0]; ++b) {
    TokenSequence s;
    for (int64_t t = 0; t < shape[1]; ++t) {
      if (mask[b * shape[1] + t] != 0) s.push_back(ids[b * shape[1] + t]);
    }
    out.push_back(s);
  }
  return out;
}

// Mean, population std, min and max over the B rows of a (B, L, H) reference statistic.
struct ExpectedSpread {
  std::vector<double> mean, std, min, max;  // (L, H)
};

ExpectedSpread expected_spread(const std::string& model, const std::string& c,
                               const std::string& stat, int64_t L, int64_t H) {
  std::vector<int64_t> shape;
  const std::vector<float> v = reference_array<float>(model, c + "." + stat, &shape);
  const int64_t B = shape[0];
  EXPECT_EQ(shape[1], L);
  EXPECT_EQ(shape[2], H);
  ExpectedSpread e;
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t h = 0; h < H; ++h) {
      double sum = 0, lo = 1e300, hi = -1e300;
      for (int64_t b = 0; b < B; ++b) {
        const double x = v[(b * L + l) * H + h];
        sum += x;
        lo = std::min(lo, x);
        hi = std::max(hi, x);
      }
      const double mean = sum / B;
      double var = 0;
      for (int64_t b = 0; b < B; ++b) {
        const double d = v[(b * L + l) * H + h] - mean;
        var += d * d;
      }
      e.mean.push_back(mean);
      e.std.push_back(std::sqrt(var / B));
      e.min.push_back(lo);
      e.max.push_back(hi);
    }
  }
  return e;
}

const Spread& spread_of(const HeadSummary& h, const std::string& stat) {
  return stat == "bos_mass" ? h.bos_mass : stat == "entropy" ? h.entropy : h.local_mass;
}

// Every head of `r` against the reference rows of case `c`.
void expect_report_matches(const DiagnosisReport& r, const std::string& model, const std::string& c) {
  for (const char* stat : kStatNames) {
    const ExpectedSpread e = expected_spread(model, c, stat, r.n_layer, r.n_head);
    for (int64_t l = 0; l < r.n_layer; ++l) {
      for (int64_t h = 0; h < r.n_head; ++h) {
        SCOPED_TRACE(absl::StrCat(stat, " layer ", l, " head ", h));
        const size_t i = static_cast<size_t>(l * r.n_head + h);
        const Spread& got = spread_of(r.at(l, h), stat);
        EXPECT_NEAR(got.mean, e.mean[i], kStatsTol);
        EXPECT_NEAR(got.std, e.std[i], kStatsTol);
        EXPECT_NEAR(got.min, e.min[i], kStatsTol);
        EXPECT_NEAR(got.max, e.max[i], kStatsTol);
      }
    }
  }
}

// Classes, counts and band follow from the means and thresholds (METHOD.md section 2).
void expect_classes_consistent(const DiagnosisReport& r) {
  HeadCounts counts;
  for (const HeadSummary& h : r.heads) {
    const Thresholds& t = r.thresholds;
    HeadClass want = HeadClass::kHealthy;
    if (h.bos_mass.mean > t.dead) {
      want = HeadClass::kDead;
    } else if (h.bos_mass.mean > t.sink) {
      want = HeadClass::kSink;
    } else if (h.entropy.mean < t.low_entropy) {
      want = HeadClass::kLowEntropy;
    }
    EXPECT_EQ(h.cls, want) << "layer " << h.layer << " head " << h.head;
    counts.healthy += want == HeadClass::kHealthy;
    counts.low_entropy += want == HeadClass::kLowEntropy;
    counts.sink += want == HeadClass::kSink;
    counts.dead += want == HeadClass::kDead;
  }
  EXPECT_EQ(r.counts.healthy, counts.healthy);
  EXPECT_EQ(r.counts.low_entropy, counts.low_entropy);
  EXPECT_EQ(r.counts.sink, counts.sink);
  EXPECT_EQ(r.counts.dead, counts.dead);
}

class DiagnoseFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(DiagnoseFixture, SingleSequenceMatchesTransformers) {
  const std::string name = GetParam();
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / name);
  ASSERT_TRUE(model.ok()) << model.status();
  std::unique_ptr<Backend> backend = make_cpu_backend();
  const std::vector<TokenSequence> seqs = case_sequences(name, "single");
  DiagnoseOptions options;
  options.model_name = name;
  absl::StatusOr<DiagnosisReport> r = diagnose_sequences(*model, *backend, seqs, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sequences, 1);
  EXPECT_EQ(r->tokens, static_cast<int64_t>(seqs[0].size()));
  EXPECT_EQ(r->seq_len, 512);
  expect_report_matches(*r, name, "single");
  expect_classes_consistent(*r);
  const std::vector<float> slopes = reference_array<float>(name, "alibi_slopes");
  for (const HeadSummary& h : r->heads) EXPECT_NEAR(h.slope, slopes[h.head], 1e-7);
  EXPECT_EQ(r->model["name"], name);
  EXPECT_EQ(r->model["n_layer"], model->config.n_layer);
  EXPECT_EQ(r->model["head_dim"], model->config.head_dim());
}

// Several sequences, batched 1, 2 and 3 at a time: padding inside a batch must not change them.
TEST_P(DiagnoseFixture, MeanOverSequencesMatchesTransformersForEveryBatchSize) {
  const std::string name = GetParam();
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / name);
  ASSERT_TRUE(model.ok()) << model.status();
  std::unique_ptr<Backend> backend = make_cpu_backend();
  for (const char* c : {"batch", "right_pad", "left_pad"}) {
    const std::vector<TokenSequence> seqs = case_sequences(name, c);
    int64_t tokens = 0;
    for (const TokenSequence& s : seqs) tokens += static_cast<int64_t>(s.size());
    for (int64_t batch : {1, 2, 3}) {
      SCOPED_TRACE(absl::StrCat(name, " case ", c, " batch ", batch));
      DiagnoseOptions options;
      options.batch = batch;
      options.seq_len = 17;
      absl::StatusOr<DiagnosisReport> r = diagnose_sequences(*model, *backend, seqs, options);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->sequences, 3);
      EXPECT_EQ(r->tokens, tokens);
      expect_report_matches(*r, name, c);
      expect_classes_consistent(*r);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, DiagnoseFixture, ::testing::ValuesIn(kModels));

TEST(DiagnoseSequences, CutsDocumentsAsDocumented) {
  const std::vector<uint32_t> doc = {10, 11, 12, 13, 14, 15, 16};
  SequenceOptions o;
  o.seq_len = 3;
  std::vector<TokenSequence> out;
  append_document_sequences(doc, SequenceCut::kTruncate, o, out);
  EXPECT_EQ(out, (std::vector<TokenSequence>{{10, 11, 12}}));
  out.clear();
  // Two whole pieces; the tail {16} is a fragment and is dropped.
  append_document_sequences(doc, SequenceCut::kSplit, o, out);
  EXPECT_EQ(out, (std::vector<TokenSequence>{{10, 11, 12}, {13, 14, 15}}));
  out.clear();
  // A document shorter than seq_len is one sequence either way.
  append_document_sequences(std::vector<uint32_t>{7, 8}, SequenceCut::kSplit, o, out);
  EXPECT_EQ(out, (std::vector<TokenSequence>{{7, 8}}));
  append_document_sequences(std::vector<uint32_t>{}, SequenceCut::kSplit, o, out);
  EXPECT_EQ(out.size(), 1u);
  o.max_seqs = 2;
  append_document_sequences(doc, SequenceCut::kSplit, o, out);
  EXPECT_EQ(out, (std::vector<TokenSequence>{{7, 8}, {10, 11, 12}}));
}

class DiagnoseFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("diagnose_test_", ::getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const std::filesystem::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
  std::string read(const std::string& name) {
    std::ifstream in(dir_ / name, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  // Runs the CLI with `args`; returns the exit status and fills stdout / stderr.
  int run_cli(const std::string& args, std::string* out = nullptr, std::string* err = nullptr) {
    const std::string cmd = absl::StrCat(ENGINE_CLI_PATH, " diagnose ", args, " > ",
                                         (dir_ / "stdout.txt").string(), " 2> ",
                                         (dir_ / "stderr.txt").string());
    const int status = std::system(cmd.c_str());
    if (out != nullptr) *out = read("stdout.txt");
    if (err != nullptr) *err = read("stderr.txt");
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::filesystem::path dir_;
};

std::string jsonl_of(const std::vector<TokenSequence>& seqs) {
  std::string out;
  for (const TokenSequence& s : seqs) out += json{{"input_ids", s}}.dump() + "\n";
  return out;
}

TEST_F(DiagnoseFiles, CliReportMatchesTransformers) {
  const std::string name = "bloom-h6-l3";
  const std::string model_dir = (kFixtures / "models" / name).string();
  for (const char* c : {"single", "batch", "right_pad"}) {
    SCOPED_TRACE(c);
    const std::vector<TokenSequence> seqs = case_sequences(name, c);
    const std::string data = write(absl::StrCat(c, ".jsonl"), jsonl_of(seqs));
    const std::string report_path = (dir_ / "report.json").string();
    std::string out, err;
    ASSERT_EQ(run_cli(absl::StrCat("--model ", model_dir, " --data ", data, " --out ", report_path,
                                   " --batch 2 --seq_len 64 --csv ", (dir_ / "r.csv").string(),
                                   " --svg ", (dir_ / "r.svg").string(), " --html ",
                                   (dir_ / "r.html").string()),
                      &out, &err),
              0)
        << err;
    absl::StatusOr<DiagnosisReport> r = load_report(report_path);
    ASSERT_TRUE(r.ok()) << r.status();
    expect_report_matches(*r, name, c);
    expect_classes_consistent(*r);
    const json j = json::parse(read("report.json"));
    EXPECT_EQ(j["version"], 1);
    EXPECT_EQ(j["data"]["sequences"], seqs.size());
    EXPECT_EQ(j["data"]["seq_len"], 64);
    EXPECT_EQ(j["model"],
              (json{{"name", name}, {"n_layer", 3}, {"n_head", 6}, {"hidden_size", 48},
                    {"head_dim", 8}, {"vocab_size", 260}, {"device", "cpu"},
                    {"storage", "F32"}}));
    EXPECT_EQ(j["thresholds"], (json{{"dead", 0.95}, {"sink", 0.5}, {"low_entropy", 0.5}}));
    ASSERT_EQ(j["heads"].size(), 18u);
    EXPECT_TRUE(j["heads"][0].contains("slope"));
    // stdout: the summary line, then one grid row per layer with one mark per head.
    EXPECT_THAT(out, HasSubstr(absl::StrCat(seqs.size(), " sequences")));
    for (int64_t l = 0; l < 3; ++l) {
      std::string row = absl::StrCat("    ", l, "  ");
      for (int64_t h = 0; h < 6; ++h) row += head_class_mark(r->at(l, h).cls);
      EXPECT_THAT(out, HasSubstr(row + "\n"));
    }
    EXPECT_THAT(out, HasSubstr(absl::StrCat("collapsed ", r->counts.collapsed(), " of 18")));
    const std::string csv = read("r.csv");
    EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 19);
    EXPECT_THAT(read("r.svg"), HasSubstr("<svg"));
    EXPECT_THAT(read("r.html"), HasSubstr("<!DOCTYPE html>"));
  }
}

TEST_F(DiagnoseFiles, ThresholdFlagsReachTheReport) {
  const std::string name = "bloom-h4-l2";
  const std::string data = write("b.jsonl", jsonl_of(case_sequences(name, "batch")));
  const std::string model_dir = (kFixtures / "models" / name).string();
  std::string out, err;
  ASSERT_EQ(run_cli(absl::StrCat("--model ", model_dir, " --data ", data,
                                 " --json --dead 0.9 --sink 0.3 --low_entropy 1.5"),
                    &out, &err),
            0)
      << err;
  absl::StatusOr<DiagnosisReport> r = report_from_json(json::parse(out), "stdout");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->thresholds.dead, 0.9);
  EXPECT_EQ(r->thresholds.sink, 0.3);
  EXPECT_EQ(r->thresholds.low_entropy, 1.5);
  expect_classes_consistent(*r);

  EXPECT_EQ(run_cli(absl::StrCat("--model ", model_dir, " --data ", data, " --sink 0.97"), &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("sink = 0.97 is above dead = 0.95"));
}

TEST_F(DiagnoseFiles, MaxSeqsAndSeqLenCutTheInput) {
  const std::string name = "bloom-h4-l2";
  std::vector<TokenSequence> seqs = case_sequences(name, "batch");  // 3 x 17 tokens
  const std::string data = write("b.jsonl", jsonl_of(seqs));
  const std::string model_dir = (kFixtures / "models" / name).string();
  std::string out, err;
  ASSERT_EQ(run_cli(absl::StrCat("--model ", model_dir, " --data ", data,
                                 " --json --max_seqs 2 --seq_len 5"),
                    &out, &err),
            0)
      << err;
  const json j = json::parse(out);
  EXPECT_EQ(j["data"], (json{{"sequences", 2}, {"tokens", 10}, {"seq_len", 5}}));
  // The same as diagnosing the two truncated sequences directly.
  absl::StatusOr<BloomModel> model = load_model_directory(model_dir);
  ASSERT_TRUE(model.ok()) << model.status();
  std::unique_ptr<Backend> backend = make_cpu_backend();
  std::vector<TokenSequence> cut = {TokenSequence(seqs[0].begin(), seqs[0].begin() + 5),
                                    TokenSequence(seqs[1].begin(), seqs[1].begin() + 5)};
  absl::StatusOr<DiagnosisReport> direct = diagnose_sequences(*model, *backend, cut, {});
  ASSERT_TRUE(direct.ok()) << direct.status();
  for (size_t i = 0; i < direct->heads.size(); ++i) {
    EXPECT_NEAR(j["heads"][i]["bos_mass"].get<double>(), direct->heads[i].bos_mass.mean, 1e-12);
  }
}

TEST_F(DiagnoseFiles, TextWithoutTokenizerIsAClearError) {
  const std::string model_dir = (kFixtures / "models" / "bloom-h4-l2").string();
  const std::string text = write("t.txt", "some text\n");
  std::string out, err;
  EXPECT_EQ(run_cli(absl::StrCat("--model ", model_dir, " --data ", text), &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("has no tokenizer.json"));
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1);
  EXPECT_EQ(run_cli(absl::StrCat("--model ", model_dir, " --prompt hello"), &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("--prompt: "));
  EXPECT_THAT(err, HasSubstr("has no tokenizer.json"));
  EXPECT_EQ(run_cli(absl::StrCat("--model ", model_dir, " --prompt hello --data ", text), &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("exactly one of --data FILE and --prompt TEXT"));
}

// --prompt (the published single-prompt protocol): the prompt's tokens are one sequence. The
// prompt uses only characters whose ids fit the fixture models' 260-entry vocabulary.
TEST_F(DiagnoseFiles, PromptIsOneSequence) {
  const std::string tokenizer = (kFixtures / "tokenizer/tokenizer.json").string();
  const std::string model_dir = (kFixtures / "models" / "bloom-h4-l2").string();
  const std::string prompt = "zq~Q{}zz";
  std::string out, err;
  ASSERT_EQ(run_cli(absl::StrCat("--model ", model_dir, " --tokenizer ", tokenizer, " --prompt '",
                                 prompt, "' --json"),
                    &out, &err),
            0)
      << err;
  absl::StatusOr<Tokenizer> tok = Tokenizer::load(tokenizer);
  ASSERT_TRUE(tok.ok()) << tok.status();
  absl::StatusOr<std::vector<uint32_t>> ids = tok->encode(prompt);
  ASSERT_TRUE(ids.ok()) << ids.status();
  absl::StatusOr<BloomModel> model = load_model_directory(model_dir);
  ASSERT_TRUE(model.ok()) << model.status();
  std::unique_ptr<Backend> backend = make_cpu_backend();
  absl::StatusOr<DiagnosisReport> direct =
      diagnose_sequences(*model, *backend, {TokenSequence(ids->begin(), ids->end())}, {});
  ASSERT_TRUE(direct.ok()) << direct.status();
  const json j = json::parse(out);
  EXPECT_EQ(j["data"]["sequences"], 1);
  EXPECT_EQ(j["data"]["tokens"], ids->size());
  for (size_t i = 0; i < direct->heads.size(); ++i) {
    EXPECT_NEAR(j["heads"][i]["bos_mass"].get<double>(), direct->heads[i].bos_mass.mean, 1e-12);
    EXPECT_NEAR(j["heads"][i]["entropy"].get<double>(), direct->heads[i].entropy.mean, 1e-12);
  }
}

// Text is tokenized per document and cut into seq_len pieces (the fixture tokenizer's ids exceed
// the fixture models' vocabulary, so this checks the reading side with the tokenizer's own size).
TEST_F(DiagnoseFiles, TextDocumentsAreSplitIntoSequences) {
  absl::StatusOr<Tokenizer> tok = Tokenizer::load((kFixtures / "tokenizer/tokenizer.json").string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string a = "The quick brown fox jumps over the lazy dog, again and again.";
  const std::string b = "Short one.";
  const std::string text = a + "\n\n" + b + "\n";
  const std::string path = write("docs.txt", text);
  const std::vector<std::string_view> docs = split_text_documents(text);
  ASSERT_EQ(docs.size(), 2u);
  absl::StatusOr<std::vector<uint32_t>> ia = tok->encode(docs[0]);
  absl::StatusOr<std::vector<uint32_t>> ib = tok->encode(docs[1]);
  ASSERT_TRUE(ia.ok() && ib.ok());
  // seq_len = the short document's length: it stays whole, the long one is cut with a tail.
  SequenceOptions o;
  o.seq_len = static_cast<int64_t>(ib->size());
  const size_t n = ib->size();
  ASSERT_GT(ia->size(), 2 * n);
  ASSERT_NE(ia->size() % n, 0u);
  DataReadOptions read;
  read.tokenizer = &*tok;
  absl::StatusOr<std::vector<TokenSequence>> seqs = read_diagnosis_sequences(path, read, o);
  ASSERT_TRUE(seqs.ok()) << seqs.status();
  std::vector<TokenSequence> want;
  for (size_t s = 0; s + n <= ia->size(); s += n) want.emplace_back(ia->begin() + s, ia->begin() + s + n);
  want.emplace_back(ib->begin(), ib->end());
  EXPECT_EQ(*seqs, want);
}

// Token files are documents of ids: cut like text, so a tokenized .txt diagnoses like the text.
TEST_F(DiagnoseFiles, TokenFileDocumentsAreSplitLikeText) {
  TokenFile f;
  f.header.vocab_size = 260;
  f.ids = {5, 6, 7, 8, 9, 10, 11, 12};
  f.document_ends = {5, 8};
  const std::string path = (dir_ / "d.tok").string();
  ASSERT_TRUE(write_token_file(path, f).ok());
  DataReadOptions read;
  SequenceOptions o;
  o.seq_len = 2;
  absl::StatusOr<std::vector<TokenSequence>> seqs = read_diagnosis_sequences(path, read, o);
  ASSERT_TRUE(seqs.ok()) << seqs.status();
  EXPECT_EQ(*seqs, (std::vector<TokenSequence>{{5, 6}, {7, 8}, {10, 11}}));
  o.max_seqs = 1;
  seqs = read_diagnosis_sequences(path, read, o);
  ASSERT_TRUE(seqs.ok()) << seqs.status();
  EXPECT_EQ(seqs->size(), 1u);
}

TEST(DiagnoseSequences, IdsOutsideTheVocabularyNameTheSequence) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "bloom-h4-l2");
  ASSERT_TRUE(model.ok()) << model.status();
  std::unique_ptr<Backend> backend = make_cpu_backend();
  absl::StatusOr<DiagnosisReport> r =
      diagnose_sequences(*model, *backend, {{1, 2, 3}, {1, 260}}, {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("sequence 1 position 1: id 260"));
  EXPECT_FALSE(diagnose_sequences(*model, *backend, {}, {}).ok());
}

// Peak resident memory of one CLI run (its own process, so earlier tests do not count).
int64_t cli_peak_rss_bytes(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  std::string cli = ENGINE_CLI_PATH;
  argv.push_back(cli.data());
  std::vector<std::string> copy = args;
  for (std::string& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_WRONLY);
    if (null_fd >= 0) ::dup2(null_fd, STDOUT_FILENO);
    ::execv(cli.c_str(), argv.data());
    ::_exit(127);
  }
  int status = 0;
  struct rusage usage {};
  if (::wait4(pid, &status, 0, &usage) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return -1;
  }
  constexpr int64_t kKiB = 1024;  // Linux reports ru_maxrss in KiB
  return static_cast<int64_t>(usage.ru_maxrss) * kKiB;
}

// Memory grows with B x H x T, not T^2: on the 4-head fixture model, one sequence of 8192 tokens
// needs the activations (about 18 floats per token per hidden unit: 38 MB at hidden 64) but a
// single materialised (T, T) float matrix would already be 256 MB. The budget below sits between.
// docs/PERFORMANCE.md records the bloom-560m-shaped measurement (scripts/measure_diagnose_memory.sh).
TEST_F(DiagnoseFiles, MemoryDoesNotGrowWithTheSquareOfTheSequenceLength) {
  constexpr int64_t kLong = 8192, kShort = 16;
  constexpr int64_t kBudgetBytes = 128ll << 20;
  const std::string model_dir = (kFixtures / "models" / "bloom-h4-l2").string();
  std::mt19937 rng(7);
  auto data_file = [&](const std::string& name, int64_t n) {
    TokenSequence s(n);
    for (int32_t& id : s) id = static_cast<int32_t>(4 + rng() % 256);
    return write(name, jsonl_of({s}));
  };
  const std::string small = data_file("short.jsonl", kShort);
  const std::string large = data_file("long.jsonl", kLong);
  const int64_t base = cli_peak_rss_bytes({"diagnose", "--model", model_dir, "--data", small,
                                           "--seq_len", std::to_string(kLong), "--threads", "2"});
  const int64_t peak = cli_peak_rss_bytes({"diagnose", "--model", model_dir, "--data", large,
                                           "--seq_len", std::to_string(kLong), "--threads", "2"});
  ASSERT_GT(base, 0);
  ASSERT_GT(peak, 0);
  EXPECT_LT(peak - base, kBudgetBytes) << "base " << base << " peak " << peak;
}

}  // namespace
}  // namespace engine
