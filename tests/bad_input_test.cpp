// The bad-input catalogue (docs/BAD_INPUT.md) through the `engine` CLI: every hostile or broken
// input class makes the command exit with status 1 and print exactly one stderr line, the one
// quoted in the catalogue, which names the file (or flag) and the problem. Inputs are made here
// from the bloom-h4-l2 fixture model by editing its safetensors header, data or config, so each
// case differs from a loadable model in exactly one way. Also holds the regression tests for the
// inputs the fuzz targets (tests/fuzz/) found to crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <string>

#include "absl/strings/str_replace.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "surgery/diagnosis.h"

namespace engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::MatchesRegex;

const fs::path kFixtureModel = fs::path(ENGINE_SOURCE_DIR) / "tests/fixtures/models/bloom-h4-l2";
// A tensor of the fixture model whose elements the non-finite case overwrites.
constexpr char kBiasName[] = "transformer.h.1.mlp.dense_4h_to_h.bias";

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

// A safetensors file split into its JSON header and data section, and put back together.
struct Safetensors {
  json header;
  std::string data;

  static Safetensors read(const fs::path& p) {
    const std::string bytes = read_file(p);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), sizeof n);
    return {json::parse(bytes.substr(sizeof n, n)), bytes.substr(sizeof n + n)};
  }
  std::string bytes() const {
    const std::string h = header.dump();
    const uint64_t n = h.size();
    std::string out(sizeof n, '\0');
    std::memcpy(out.data(), &n, sizeof n);
    return out + h + data;
  }
};

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "bad_input_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    // The fixture models' 260-id vocabulary is exactly the byte-level tokenizer's.
    ASSERT_TRUE(write_byte_level_tokenizer_json((dir_ / "tokenizer.json").string()).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A copy of the fixture model named `name`, with its safetensors file edited by `edit`.
  fs::path model_with(const std::string& name, const std::function<void(Safetensors&)>& edit) {
    const fs::path d = dir_ / name;
    fs::create_directories(d);
    fs::copy_file(kFixtureModel / "config.json", d / "config.json");
    Safetensors st = Safetensors::read(kFixtureModel / "model.safetensors");
    edit(st);
    write_file(d / "model.safetensors", st.bytes());
    return d;
  }

  // Runs the CLI, expects exit status 1 and returns its stderr.
  std::string run_failing(const std::string& args) {
    const fs::path out = dir_ / "cli.out", err = dir_ / "cli.err";
    const std::string cmd = std::string("'") + ENGINE_CLI_PATH + "' " + args + " >'" +
                            out.string() + "' 2>'" + err.string() + "'";
    const int status = std::system(cmd.c_str());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << args;
    return read_file(err);
  }

  // The failure contract: exit status 1 and stderr exactly "engine: " + `expected` + "\n", where
  // "{dir}" in `expected` stands for the scratch directory.
  void expect_error(const std::string& args, const std::string& expected) {
    EXPECT_EQ(run_failing(args),
              "engine: " + absl::StrReplaceAll(expected, {{"{dir}", dir_.string()}}) + "\n")
        << args;
  }

  std::string arg(const fs::path& p) const { return "'" + p.string() + "'"; }
  std::string eval_args(const fs::path& model, const fs::path& data) const {
    return "eval --model " + arg(model) + " --tokenizer " + arg(dir_ / "tokenizer.json") +
           " --data " + arg(data) + " --seq_len 8";
  }

  fs::path dir_;
};

// --- hostile safetensors -------------------------------------------------------------------------

TEST_F(BadInput, HugeHeaderLength) {
  const fs::path d = model_with("huge_header", [](Safetensors&) {});
  std::string bytes = read_file(d / "model.safetensors");
  const uint64_t huge = std::numeric_limits<uint64_t>::max();
  std::memcpy(bytes.data(), &huge, sizeof huge);
  write_file(d / "model.safetensors", bytes);
  expect_error("info --model " + arg(d),
               "{dir}/huge_header/model.safetensors: header length 18446744073709551615 exceeds "
               "the limit of 100000000 bytes");
}

TEST_F(BadInput, OverlappingOffsets) {
  const fs::path d = model_with("overlap", [](Safetensors& st) {
    // Moves the second tensor's range back by one element, into the first tensor's bytes.
    json& t = st.header["transformer.h.0.input_layernorm.weight"];
    t["data_offsets"] = {252, 508};
  });
  expect_error("info --model " + arg(d),
               "{dir}/overlap/model.safetensors: tensor transformer.h.0.input_layernorm.weight: "
               "data offsets [252, 508) overlap the previous tensor, which ends at 256");
}

TEST_F(BadInput, OffsetsOutsideTheFile) {
  const fs::path d =
      model_with("beyond", [](Safetensors& st) { st.data.resize(st.data.size() - sizeof(float)); });
  expect_error(
      "info --model " + arg(d),
      "{dir}/beyond/model.safetensors: tensor transformer.word_embeddings_layernorm.weight: data "
      "offsets [467200, 467456) run past the end of the 467452-byte data section");
}

TEST_F(BadInput, ShapeDisagreesWithByteSize) {
  const fs::path d = model_with("shape_size", [](Safetensors& st) {
    st.header["transformer.h.0.input_layernorm.bias"]["shape"] = {65};
  });
  expect_error("info --model " + arg(d),
               "{dir}/shape_size/model.safetensors: tensor transformer.h.0.input_layernorm.bias: "
               "shape [65] F32 needs 260 bytes but data offsets [0, 256) hold 256");
}

TEST_F(BadInput, UnknownDtype) {
  const fs::path d = model_with("unknown_dtype", [](Safetensors& st) {
    st.header["transformer.h.0.input_layernorm.bias"]["dtype"] = "F4";
  });
  expect_error("info --model " + arg(d),
               "{dir}/unknown_dtype/model.safetensors: tensor "
               "transformer.h.0.input_layernorm.bias: unknown dtype \"F4\"");
}

TEST_F(BadInput, IntegerWeights) {
  const fs::path d = model_with("int_dtype", [](Safetensors& st) {
    st.header["transformer.h.0.input_layernorm.bias"]["dtype"] = "I32";
  });
  expect_error("info --model " + arg(d),
               "{dir}/int_dtype/model.safetensors: tensor transformer.h.0.input_layernorm.bias: "
               "dtype I32 is not a float weight type (F32, F16, BF16)");
}

// --- config / tensors ----------------------------------------------------------------------------

TEST_F(BadInput, ConfigDisagreesWithTensors) {
  const fs::path d = model_with("config_mismatch", [](Safetensors&) {});
  json config = json::parse(read_file(d / "config.json"));
  config["hidden_size"] = 32;
  write_file(d / "config.json", config.dump());
  expect_error(
      "info --model " + arg(d),
      "{dir}/config_mismatch/model.safetensors: tensor transformer.h.0.input_layernorm.bias: shape "
      "(64) does not match (32) implied by config.json");
}

TEST_F(BadInput, ConfigFieldOutOfRange) {
  const fs::path d = model_with("config_range", [](Safetensors&) {});
  json config = json::parse(read_file(d / "config.json"));
  config["n_head"] = -4;
  write_file(d / "config.json", config.dump());
  expect_error("info --model " + arg(d),
               "{dir}/config_range/config.json: field n_head must be positive, got -4");
}

TEST_F(BadInput, NonFiniteWeightIsNamed) {
  for (float bad : {std::nanf(""), INFINITY}) {
    const fs::path d = model_with("nonfinite", [&](Safetensors& st) {
      const size_t at = st.header[kBiasName]["data_offsets"][0].get<size_t>() + 3 * sizeof(float);
      std::memcpy(st.data.data() + at, &bad, sizeof bad);
    });
    write_file(dir_ / "ok.jsonl", "{\"input_ids\": [1, 5, 6, 7]}\n");
    expect_error(eval_args(d, dir_ / "ok.jsonl"),
                 std::string("{dir}/nonfinite: tensor h.1.mlp.dense_4h_to_h.bias: element 3 is ") +
                     (std::isnan(bad) ? "NaN" : "Inf"));
    fs::remove_all(d);
  }
}

// --- data ----------------------------------------------------------------------------------------

TEST_F(BadInput, InvalidUtf8Text) {
  write_file(dir_ / "bad.txt", "fine line\n\nbroken \xc3\x28 here\n");
  expect_error(eval_args(kFixtureModel, dir_ / "bad.txt"),
               "{dir}/bad.txt: not valid UTF-8 at byte offset 18");
}

TEST_F(BadInput, IdOutsideTheVocabulary) {
  write_file(dir_ / "ids.jsonl", "{\"input_ids\": [1, 5, 6]}\n{\"input_ids\": [1, 260]}\n");
  expect_error(eval_args(kFixtureModel, dir_ / "ids.jsonl"),
               "{dir}/ids.jsonl:2: input_ids[1] = 260 is not an id in the vocabulary (size 260)");
}

TEST_F(BadInput, EmptyData) {
  write_file(dir_ / "empty.jsonl", "");
  expect_error(eval_args(kFixtureModel, dir_ / "empty.jsonl"), "{dir}/empty.jsonl: no documents");
  write_file(dir_ / "empty_doc.jsonl", "{\"input_ids\": [1, 5]}\n{\"input_ids\": []}\n");
  expect_error(eval_args(kFixtureModel, dir_ / "empty_doc.jsonl"),
               "{dir}/empty_doc.jsonl: document 1 is empty (no tokens to score)");
}

TEST_F(BadInput, TruncatedTokenFile) {
  write_file(dir_ / "data.tok", "BLMTOKEN\x01");
  expect_error(eval_args(kFixtureModel, dir_ / "data.tok"),
               "{dir}/data.tok: truncated: the 64-byte header ends at byte 9");
}

TEST_F(BadInput, SequenceLongerThanTheEngineTakes) {
  // The limit is this machine's memory, so only the part of the line that does not depend on it is
  // compared: (2 + 2^31 - 1) tokens x 2 layers x 3 x 64 floats = 3072 GiB.
  const std::string err =
      run_failing("generate --model " + arg(kFixtureModel) + " --tokenizer " +
                  arg(dir_ / "tokenizer.json") + " --prompt_ids 1,5 --max_new_tokens 2147483647");
  EXPECT_THAT(err, MatchesRegex("engine: generate: a context of 2147483649 tokens \\(prompt 2 "
                                "\\+ --max_new_tokens 2147483647\\) needs a 3072\\.0 GiB KV "
                                "cache, more than this machine's [0-9.]+ GiB of memory\n"));
  write_file(dir_ / "ok.jsonl", "{\"input_ids\": [1, 5, 6, 7]}\n");
  expect_error(eval_args(kFixtureModel, dir_ / "ok.jsonl") + " --seq_len 1",
               "perplexity: seq_len must be at least 2, got 1");
}

// --- tokenizer, plan, report ---------------------------------------------------------------------

TEST_F(BadInput, TokenizerConfigurationNotImplemented) {
  json tok = json::parse(byte_level_tokenizer_json());
  tok["normalizer"] = {{"type", "NFC"}};
  write_file(dir_ / "nfc.json", tok.dump());
  write_file(dir_ / "ok.txt", "hello\n");
  expect_error("tokenize --tokenizer " + arg(dir_ / "nfc.json") + " --in " + arg(dir_ / "ok.txt") +
                   " --out " + arg(dir_ / "ok.tok"),
               "{dir}/nfc.json: normalizer: must be null (BLOOM has no normalizer)");
}

// A 2-layer x 2-head report; `edit` changes it before it is written.
fs::path write_report(const fs::path& dir, const std::function<void(json&)>& edit) {
  json heads = json::array();
  for (int l = 0; l < 2; ++l) {
    for (int h = 0; h < 2; ++h) {
      heads.push_back(
          {{"layer", l}, {"head", h}, {"bos_mass", 0.97}, {"entropy", 0.1}, {"local_mass", 0.3}});
    }
  }
  json r = {{"version", 1},
            {"thresholds", {{"dead", 0.95}, {"sink", 0.5}, {"low_entropy", 0.5}}},
            {"heads", heads}};
  edit(r);
  const fs::path p = dir / "report.json";
  write_file(p, r.dump());
  return p;
}

TEST_F(BadInput, PlanTargetOutsideTheModel) {
  const fs::path report = write_report(dir_, [](json&) {});
  expect_error("plan --report " + arg(report) + " --heads 2:0 --out " + arg(dir_ / "plan.json"),
               "{dir}/report.json: --heads: 2:0 is outside the report's 2 layers x 2 heads");
}

// Found by tests/fuzz/report_fuzz.cpp: optional report fields of the wrong type threw
// nlohmann::json::type_error out of report_from_json (std::terminate in `engine plan`).
TEST_F(BadInput, ReportOptionalFieldOfTheWrongType) {
  fs::path report = write_report(dir_, [](json& r) { r["data"] = {{"sequences", "three"}}; });
  expect_error("plan --report " + arg(report) + " --out " + arg(dir_ / "plan.json"),
               "{dir}/report.json: field \"data.sequences\": expected an integer");
  report = write_report(dir_, [](json& r) { r["heads"][1]["entropy_std"] = json::array(); });
  expect_error("plan --report " + arg(report) + " --out " + arg(dir_ / "plan.json"),
               "{dir}/report.json: field \"heads[1].entropy_std\": expected a number");
  report = write_report(dir_, [](json& r) { r["heads"][3]["slope"] = "steep"; });
  expect_error("plan --report " + arg(report) + " --out " + arg(dir_ / "plan.json"),
               "{dir}/report.json: field \"heads[3].slope\": expected a number");
}

// Found by tests/fuzz/report_fuzz.cpp: head indices near 2^32 overflowed n_layer * n_head
// (signed overflow, undefined behaviour) before the grid check.
TEST(ReportFromJson, HugeIndicesAreAnErrorNotAnOverflow) {
  json r = {{"version", 1},
            {"thresholds", {{"dead", 0.95}, {"sink", 0.5}, {"low_entropy", 0.5}}},
            {"heads",
             {{{"layer", int64_t{1} << 32},
               {"head", int64_t{1} << 32},
               {"bos_mass", 0.9},
               {"entropy", 0.1},
               {"local_mass", 0.0}}}}};
  absl::StatusOr<DiagnosisReport> parsed = report_from_json(r, "report.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().message(),
            "report.json: field \"heads\": 1 entries cannot cover layer 4294967296 and head "
            "4294967296");
  r["heads"][0]["layer"] = std::numeric_limits<int64_t>::max();
  r["heads"][0]["head"] = 0;
  EXPECT_FALSE(report_from_json(r, "report.json").ok());
}

// --- outputs -------------------------------------------------------------------------------------

// The tests run as root in CI, where permission bits do not stop writes; a parent that is a
// regular file makes every output path unwritable for any user.
TEST_F(BadInput, OutputDirectoryNotWritable) {
  write_file(dir_ / "file", "not a directory");
  const fs::path blocked = dir_ / "file" / "out";
  expect_error("export --model " + arg(kFixtureModel) + " --out " + arg(blocked),
               "{dir}/file/out: cannot create output directory: Not a directory");
  write_file(dir_ / "ok.txt", "hello\n");
  expect_error("tokenize --tokenizer " + arg(dir_ / "tokenizer.json") + " --in " +
                   arg(dir_ / "ok.txt") + " --out " + arg(blocked / "ok.tok"),
               "{dir}/file/out/ok.tok: cannot open for writing: Not a directory");
  const fs::path report = write_report(dir_, [](json&) {});
  expect_error("plan --report " + arg(report) + " --out " + arg(blocked / "plan.json"),
               "{dir}/file/out/plan.json: cannot create temporary file: Not a directory");
}

}  // namespace
}  // namespace engine
