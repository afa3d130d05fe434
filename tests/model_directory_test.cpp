// Hugging Face model directories: load/save round trips in every weight dtype, the name variants
// transformers writes (transformer. prefix, tied lm_head, shards), and every load error, both
// through the library and through the `engine` CLI (one line on stderr, exit code 1).
// Test models are built here (declare_bloom_parameters + seeded fill), independent of fixtures.
#include "model/model_directory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "model/bloom_layout.h"
#include "model/safetensors.h"

namespace engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

BloomConfig tiny_config() {
  BloomConfig c;
  c.vocab_size = 37;
  c.hidden_size = 16;
  c.n_layer = 2;
  c.n_head = 4;
  c.raw = nlohmann::json{{"vocab_size", 37}, {"hidden_size", 16},     {"n_layer", 2},
                         {"n_head", 4},      {"model_type", "bloom"}, {"custom_key", "kept"}};
  return c;
}

// Values k/64 for |k| <= 128 are exact in f32, f16 and bf16 (8 significant bits at most), so a
// save/load in any of the three dtypes must reproduce them exactly.
BloomModel random_model(uint32_t seed) {
  absl::StatusOr<BloomModel> m = allocate_bloom_model(tiny_config());
  EXPECT_TRUE(m.ok()) << m.status();
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> k(-128, 128);
  for (const ParameterInfo& p : m->arena.parameters()) {
    float* data = m->arena.view(p).as<float>();
    for (int64_t i = 0; i < p.numel; ++i) data[i] = static_cast<float>(k(rng)) / 64.0f;
  }
  return *std::move(m);
}

void expect_same_weights(const BloomModel& a, const BloomModel& b) {
  ASSERT_EQ(a.arena.parameters().size(), b.arena.parameters().size());
  for (const ParameterInfo& p : a.arena.parameters()) {
    absl::StatusOr<TensorView> other = b.arena.view(p.name);
    ASSERT_TRUE(other.ok()) << p.name;
    ASSERT_EQ(other->shape, p.shape);
    EXPECT_EQ(std::memcmp(a.arena.view(p).data, other->data, p.numel * sizeof(float)), 0) << p.name;
  }
}

fs::path make_temp_dir() {
  std::string pattern = (fs::path(::testing::TempDir()) / "model_dir_test_XXXXXX").string();
  EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
  return fs::path(pattern);
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

// Entries for write_safetensors from a model's arena, with names passed through `rename`.
template <typename Rename>
std::vector<SafetensorsWriteEntry> entries_of(const BloomModel& m, Rename rename) {
  std::vector<SafetensorsWriteEntry> e;
  for (const ParameterInfo& p : m.arena.parameters()) {
    e.push_back({rename(p.name), p.shape, DType::kF32, DType::kF32, m.arena.view(p).data});
  }
  return e;
}

class ModelDirectory : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir();
    model_ = random_model(7);
    ASSERT_TRUE(save_model_directory(model_, dir_ / "model").ok());
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Loads `d`, expects failure, returns the message (which must be one line).
  std::string load_error(const fs::path& d) {
    absl::StatusOr<BloomModel> m = load_model_directory(d);
    EXPECT_FALSE(m.ok());
    if (m.ok()) return "";
    const std::string message(m.status().message());
    EXPECT_EQ(message.find('\n'), std::string::npos);
    return message;
  }

  // Writes `entries` as d/model.safetensors next to the tiny config.
  fs::path directory_with(const std::string& name, const std::vector<SafetensorsWriteEntry>& e) {
    const fs::path d = dir_ / name;
    fs::create_directories(d);
    fs::copy_file(dir_ / "model" / "config.json", d / "config.json");
    EXPECT_TRUE(write_safetensors(d / "model.safetensors", e).ok());
    return d;
  }

  fs::path dir_;
  BloomModel model_;
};

TEST_F(ModelDirectory, RoundTripInEveryDtype) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const fs::path out = dir_ / dtype_name(dtype);
    ASSERT_TRUE(save_model_directory(model_, out, dtype).ok());
    absl::StatusOr<BloomModel> loaded = load_model_directory(out);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->source_dtype, dtype);
    EXPECT_EQ(loaded->source, out);
    EXPECT_EQ(loaded->config.hidden_size, 16);
    EXPECT_EQ(loaded->config.raw["custom_key"], "kept");
    expect_same_weights(model_, *loaded);
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(out / "model.safetensors");
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->header().tensors.size(), 3u + 12u * 2u + 2u);
    EXPECT_EQ(f->header().tensors[0].name, "word_embeddings.weight");  // released names
    EXPECT_EQ(f->header().tensors[0].dtype, dtype);
  }
}

// A header whose length is odd leaves every 16-bit element at an odd address; the loader must
// still convert them correctly (through an aligned copy, not a misaligned uint16_t read).
TEST_F(ModelDirectory, LoadsMisalignedHalfPrecisionData) {
  const fs::path d = dir_ / "odd";
  ASSERT_TRUE(save_model_directory(model_, d, DType::kF16).ok());
  const std::string bytes = read_file(d / "model.safetensors");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  std::string shifted(8, '\0');
  for (int i = 0; i < 8; ++i) shifted[i] = static_cast<char>(((n + 1) >> (8 * i)) & 0xff);
  shifted += bytes.substr(8, n) + " " + bytes.substr(8 + n);  // one more space of JSON padding
  write_text(d / "model.safetensors", shifted);
  fs::remove(d / "manifest.json");  // it lists the bytes before the edit
  absl::StatusOr<BloomModel> m = load_model_directory(d);
  ASSERT_TRUE(m.ok()) << m.status();
  expect_same_weights(model_, *m);
}

TEST_F(ModelDirectory, CopiesTokenizerFilesUnchanged) {
  const fs::path src = dir_ / "model";
  write_text(src / "tokenizer.json", "{\"model\": {\"type\": \"BPE\"}}");
  write_text(src / "special_tokens_map.json", "{\"pad_token\": \"<pad>\"}");
  absl::StatusOr<BloomModel> m = load_model_directory(src);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(save_model_directory(*m, dir_ / "copy", DType::kBF16).ok());
  EXPECT_EQ(read_file(dir_ / "copy" / "tokenizer.json"), read_file(src / "tokenizer.json"));
  EXPECT_EQ(read_file(dir_ / "copy" / "special_tokens_map.json"),
            read_file(src / "special_tokens_map.json"));
  EXPECT_FALSE(fs::exists(dir_ / "copy" / "tokenizer_config.json"));
}

// transformers' BloomForCausalLM.save_pretrained prefixes names with "transformer.".
TEST_F(ModelDirectory, AcceptsTransformerPrefix) {
  const fs::path d = directory_with(
      "prefixed", entries_of(model_, [](const std::string& n) { return "transformer." + n; }));
  absl::StatusOr<BloomModel> m = load_model_directory(d);
  ASSERT_TRUE(m.ok()) << m.status();
  expect_same_weights(model_, *m);
}

TEST_F(ModelDirectory, TiedHeadMustEqualEmbedding) {
  std::vector<SafetensorsWriteEntry> e = entries_of(model_, [](const std::string& n) { return n; });
  SafetensorsWriteEntry head = e.front();  // word_embeddings.weight
  head.name = "lm_head.weight";
  e.push_back(head);
  absl::StatusOr<BloomModel> ok = load_model_directory(directory_with("tied", e));
  ASSERT_TRUE(ok.ok()) << ok.status();

  std::vector<float> changed(model_.arena.view("word_embeddings.weight")->numel());
  std::memcpy(changed.data(), head.source, changed.size() * sizeof(float));
  changed[5] += 1.0f;
  e.back().source = changed.data();
  EXPECT_THAT(load_error(directory_with("untied", e)),
              HasSubstr("tensor lm_head.weight: differs from word_embeddings.weight"));
}

TEST_F(ModelDirectory, LoadsShardsThroughIndex) {
  const fs::path d = dir_ / "sharded";
  fs::create_directories(d);
  fs::copy_file(dir_ / "model" / "config.json", d / "config.json");
  std::vector<SafetensorsWriteEntry> e = entries_of(model_, [](const std::string& n) { return n; });
  const size_t half = e.size() / 2;
  const std::vector<SafetensorsWriteEntry> first(e.begin(), e.begin() + half);
  const std::vector<SafetensorsWriteEntry> second(e.begin() + half, e.end());
  ASSERT_TRUE(write_safetensors(d / "model-00001-of-00002.safetensors", first).ok());
  ASSERT_TRUE(write_safetensors(d / "model-00002-of-00002.safetensors", second).ok());
  nlohmann::json index{{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  for (size_t i = 0; i < e.size(); ++i) {
    index["weight_map"][e[i].name] =
        i < half ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_text(d / "model.safetensors.index.json", index.dump());
  absl::StatusOr<BloomModel> m = load_model_directory(d);
  ASSERT_TRUE(m.ok()) << m.status();
  expect_same_weights(model_, *m);
  absl::StatusOr<std::vector<fs::path>> files = model_weight_files(d);
  ASSERT_TRUE(files.ok());
  EXPECT_EQ(files->size(), 2u);

  // The index says ln_f.bias is in shard 1, but it is in shard 2.
  index["weight_map"]["ln_f.bias"] = "model-00001-of-00002.safetensors";
  write_text(d / "model.safetensors.index.json", index.dump());
  EXPECT_THAT(load_error(d), HasSubstr("model-00002-of-00002.safetensors: tensor ln_f.bias: not "
                                       "listed for this file in model.safetensors.index.json"));

  index["weight_map"]["ln_f.bias"] = "../elsewhere.safetensors";
  write_text(d / "model.safetensors.index.json", index.dump());
  EXPECT_THAT(load_error(d), HasSubstr("is not a plain file name in the model directory"));
}

TEST_F(ModelDirectory, MissingDirectoryAndConfig) {
  EXPECT_THAT(load_error(dir_ / "nope"), HasSubstr("nope: model directory does not exist"));
  fs::create_directories(dir_ / "empty");
  EXPECT_THAT(load_error(dir_ / "empty"), HasSubstr("empty/config.json: missing"));
  write_text(dir_ / "empty" / "config.json", tiny_config().raw.dump());
  EXPECT_THAT(load_error(dir_ / "empty"),
              HasSubstr("no model.safetensors or model.safetensors.index.json"));
}

TEST_F(ModelDirectory, PickleOnlyPointsToConverter) {
  fs::create_directories(dir_ / "pickle");
  write_text(dir_ / "pickle" / "config.json", tiny_config().raw.dump());
  write_text(dir_ / "pickle" / "pytorch_model.bin", "not read");
  EXPECT_THAT(load_error(dir_ / "pickle"), HasSubstr("scripts/convert_pytorch_bin.py"));
}

TEST_F(ModelDirectory, MissingTensor) {
  std::vector<SafetensorsWriteEntry> e = entries_of(model_, [](const std::string& n) { return n; });
  e.erase(e.begin() + 5);  // h.0.self_attention.query_key_value.weight
  EXPECT_THAT(
      load_error(directory_with("missing", e)),
      HasSubstr("tensor h.0.self_attention.query_key_value.weight (48, 16) is missing from the "
                "weights (1 of 29 parameters missing)"));
}

TEST_F(ModelDirectory, UnexpectedTensor) {
  std::vector<SafetensorsWriteEntry> e = entries_of(model_, [](const std::string& n) { return n; });
  SafetensorsWriteEntry extra = e[3];
  extra.name = "h.2.input_layernorm.weight";  // a third layer the config does not have
  e.push_back(extra);
  EXPECT_THAT(load_error(directory_with("extra", e)),
              HasSubstr("tensor h.2.input_layernorm.weight: unexpected"));
}

TEST_F(ModelDirectory, DuplicateUnderBothSpellings) {
  std::vector<SafetensorsWriteEntry> e = entries_of(model_, [](const std::string& n) { return n; });
  SafetensorsWriteEntry again = e.back();
  again.name = "transformer." + again.name;
  e.push_back(again);
  EXPECT_THAT(load_error(directory_with("dup", e)), HasSubstr("duplicate of"));
}

TEST_F(ModelDirectory, ShapeMismatch) {
  std::vector<SafetensorsWriteEntry> e = entries_of(model_, [](const std::string& n) { return n; });
  e[0].shape = {16, 37};  // word_embeddings transposed
  EXPECT_THAT(load_error(directory_with("shape", e)),
              HasSubstr("tensor word_embeddings.weight: shape (16, 37) does not match (37, 16)"));
}

TEST_F(ModelDirectory, NonFloatTensor) {
  std::vector<SafetensorsWriteEntry> e = entries_of(model_, [](const std::string& n) { return n; });
  e.back().dtype = DType::kI32;  // ln_f.bias stored as I32 (same byte size)
  e.back().source_dtype = DType::kI32;
  EXPECT_THAT(load_error(directory_with("int", e)),
              HasSubstr("tensor ln_f.bias: dtype I32 is not a float weight type"));
}

// These edit the files behind the manifest's back; without the manifest (as a Hugging Face
// directory comes) the parser's own checks must still name the problem.
TEST_F(ModelDirectory, TruncatedWeights) {
  const fs::path d = dir_ / "model";
  fs::remove(d / "manifest.json");
  const std::string bytes = read_file(d / "model.safetensors");
  write_text(d / "model.safetensors", bytes.substr(0, bytes.size() - 10));
  EXPECT_THAT(load_error(d), HasSubstr("model.safetensors: tensor ln_f.bias: data offsets"));
  write_text(d / "model.safetensors", bytes.substr(0, 20));
  EXPECT_THAT(load_error(d), HasSubstr("model.safetensors: header length"));
}

TEST_F(ModelDirectory, BadConfigThroughDirectory) {
  nlohmann::json j = tiny_config().raw;
  j["n_head"] = 3;
  write_text(dir_ / "model" / "config.json", j.dump());
  fs::remove(dir_ / "model" / "manifest.json");
  EXPECT_THAT(load_error(dir_ / "model"),
              HasSubstr("config.json: field hidden_size (16) is not divisible by n_head (3)"));
}

struct CliResult {
  int exit_code;
  std::string out;
  std::string err;
};

CliResult run_cli(const std::string& args, const fs::path& scratch) {
  const fs::path out = scratch / "cli.out";
  const fs::path err = scratch / "cli.err";
  const std::string cmd = std::string("'") + ENGINE_CLI_PATH + "' " + args + " >'" + out.string() +
                          "' 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_file(out), read_file(err)};
}

// A failing load through the CLI: exit 1 and exactly one "engine: ..." line on stderr.
void expect_cli_failure(const CliResult& r, const std::string& needle) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err.rfind("engine: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr(needle));
}

TEST_F(ModelDirectory, CliInfoReportsModel) {
  const CliResult r = run_cli("info --model '" + (dir_ / "model").string() + "'", dir_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("vocab 37, hidden 16, layers 2, heads 4, head_dim 4"));
  // Independent count for C=16, V=37, L=2: embedding V*C, per layer 12C^2 + 13C, final LN 2C.
  const int64_t c = 16;
  const int64_t total = 37 * c + 2 * c + 2 * (12 * c * c + 13 * c) + 2 * c;
  EXPECT_THAT(r.out, HasSubstr(std::to_string(total)));
  EXPECT_THAT(r.out, HasSubstr("model.safetensors"));

  const CliResult j = run_cli("info --json --model '" + (dir_ / "model").string() + "'", dir_);
  ASSERT_EQ(j.exit_code, 0) << j.err;
  const nlohmann::json parsed = nlohmann::json::parse(j.out);
  EXPECT_EQ(parsed["parameters"]["total"], total);
  EXPECT_EQ(parsed["parameters"]["attention_per_layer"], 3 * c * c + 3 * c + c * c + c);
  EXPECT_EQ(parsed["alibi_slopes"].size(), 4u);
  EXPECT_EQ(parsed["source_dtype"], "F32");
}

TEST_F(ModelDirectory, CliErrorsAreOneLine) {
  expect_cli_failure(run_cli("info --model '" + (dir_ / "nope").string() + "'", dir_),
                     "model directory does not exist");
  fs::create_directories(dir_ / "noconfig");
  expect_cli_failure(run_cli("info --model '" + (dir_ / "noconfig").string() + "'", dir_),
                     "config.json: missing");
  std::vector<SafetensorsWriteEntry> e = entries_of(model_, [](const std::string& n) { return n; });
  e.pop_back();
  const fs::path missing = directory_with("missing", e);
  expect_cli_failure(run_cli("info --model '" + missing.string() + "'", dir_),
                     "tensor ln_f.bias (16) is missing");
  e = entries_of(model_, [](const std::string& n) { return n; });
  e[1].shape = {4, 4};
  const fs::path shape = directory_with("shape", e);
  expect_cli_failure(
      run_cli("export --model '" + shape.string() + "' --out '" + (dir_ / "x").string() + "'",
              dir_),
      "word_embeddings_layernorm.weight: shape (4, 4) does not match (16)");
  const std::string bytes = read_file(dir_ / "model" / "model.safetensors");
  write_text(dir_ / "model" / "model.safetensors", bytes.substr(0, bytes.size() - 1));
  expect_cli_failure(run_cli("info --model '" + (dir_ / "model").string() + "'", dir_),
                     "model.safetensors: tensor ln_f.bias");
}

TEST_F(ModelDirectory, CliExportRoundTrips) {
  const fs::path out = dir_ / "exported";
  const CliResult r = run_cli("export --model '" + (dir_ / "model").string() + "' --out '" +
                                  out.string() + "' --dtype bf16",
                              dir_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<BloomModel> m = load_model_directory(out);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->source_dtype, DType::kBF16);
  expect_same_weights(model_, *m);
  const CliResult bad = run_cli(
      "export --model '" + (dir_ / "model").string() + "' --out '" + out.string() + "' --dtype f8",
      dir_);
  EXPECT_EQ(bad.exit_code, 2);
}

}  // namespace
}  // namespace engine
