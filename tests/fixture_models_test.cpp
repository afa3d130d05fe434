// The transformers-made fixture models (tests/fixtures/models) load into the arena with the
// values their files hold, survive save -> reload bit for bit (f32, and f16 -> f32 -> f16), and
// give the ALiBi slopes transformers uses.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "engine/dtype.h"
#include "model/config.h"
#include "model/model_directory.h"
#include "model/safetensors.h"

namespace engine {
namespace {

namespace fs = std::filesystem;

const fs::path kFixtures = fs::path(ENGINE_SOURCE_DIR) / "tests" / "fixtures";
const char* const kModels[] = {"bloom-h4-l2", "bloom-h6-l3", "bloom-h3-d32-l4", "bloom-h4-l2-f16"};

fs::path scratch_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() /
                       ("engine_fixture_models_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// The tensor's name inside the arena: transformers writes a "transformer." prefix.
std::string released_name(const std::string& name) {
  const std::string prefix = "transformer.";
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

class FixtureModel : public ::testing::TestWithParam<const char*> {};

TEST_P(FixtureModel, LoadsTheValuesInItsFiles) {
  const fs::path dir = kFixtures / "models" / GetParam();
  auto model = load_model_directory(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto file = SafetensorsFile::open(dir / "model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  int64_t checked = 0;
  for (const SafetensorsTensorInfo& t : file->header().tensors) {
    auto view = model->arena.view(released_name(t.name));
    ASSERT_TRUE(view.ok()) << view.status();
    ASSERT_EQ(view->shape, t.shape) << t.name;
    ASSERT_TRUE(t.dtype.has_value());
    std::vector<float> expected(static_cast<size_t>(t.numel));
    convert_to_f32(*t.dtype, file->tensor_data(t), expected.data(), expected.size());
    ASSERT_EQ(std::memcmp(view->data, expected.data(), expected.size() * sizeof(float)), 0)
        << t.name;
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int64_t>(model->arena.parameters().size()));
}

TEST_P(FixtureModel, SaveReloadIsBitIdentical) {
  auto model = load_model_directory(kFixtures / "models" / GetParam());
  ASSERT_TRUE(model.ok()) << model.status();
  const fs::path out = scratch_dir(GetParam());
  ASSERT_TRUE(save_model_directory(*model, out / "f32", DType::kF32).ok());
  auto again = load_model_directory(out / "f32");
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->arena.size_bytes(), model->arena.size_bytes());
  EXPECT_EQ(std::memcmp(again->arena.base(), model->arena.base(), model->arena.size_bytes()), 0);
  EXPECT_EQ(again->config.n_head, model->config.n_head);
  EXPECT_EQ(again->config.hidden_size, model->config.hidden_size);

  // The written file uses released names and PyTorch's metadata.
  auto file = SafetensorsFile::open(out / "f32" / "model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->header().metadata.at("format"), "pt");
  for (const auto& t : file->header().tensors) {
    EXPECT_EQ(t.name.rfind("transformer.", 0), std::string::npos) << t.name;
    EXPECT_NE(t.name, "lm_head.weight");
  }
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, FixtureModel, ::testing::ValuesIn(kModels),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) c = (c == '-') ? '_' : c;
                           return n;
                         });

// f16 checkpoint -> f32 arena -> f16 file reproduces the original tensor bytes exactly.
TEST(FixtureModels, HalfPrecisionRoundTripKeepsTheBytes) {
  const fs::path dir = kFixtures / "models" / "bloom-h4-l2-f16";
  auto model = load_model_directory(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->source_dtype, DType::kF16);
  const fs::path out = scratch_dir("f16");
  ASSERT_TRUE(save_model_directory(*model, out, DType::kF16).ok());
  auto original = SafetensorsFile::open(dir / "model.safetensors");
  auto written = SafetensorsFile::open(out / "model.safetensors");
  ASSERT_TRUE(original.ok() && written.ok());
  for (const auto& t : original->header().tensors) {
    const SafetensorsTensorInfo* w = written->header().find(released_name(t.name));
    ASSERT_NE(w, nullptr) << t.name;
    ASSERT_EQ(w->dtype_name, "F16");
    ASSERT_EQ(w->end - w->begin, t.end - t.begin);
    EXPECT_EQ(std::memcmp(written->tensor_data(*w), original->tensor_data(t), t.end - t.begin), 0)
        << t.name;
  }
  fs::remove_all(out);
}

// Our slope formula (METHOD.md section 1) equals the slopes transformers' build_alibi_tensor used.
TEST(FixtureModels, AlibiSlopesMatchTransformers) {
  for (const char* name : kModels) {
    auto model = load_model_directory(kFixtures / "models" / name);
    ASSERT_TRUE(model.ok()) << model.status();
    auto ref = SafetensorsFile::open(kFixtures / "reference" / (std::string(name) + ".safetensors"));
    ASSERT_TRUE(ref.ok()) << ref.status();
    const SafetensorsTensorInfo* t = ref->header().find("alibi_slopes");
    ASSERT_NE(t, nullptr);
    const std::vector<float> ours = alibi_slopes(model->config.n_head);
    ASSERT_EQ(static_cast<int64_t>(ours.size()), t->numel) << name;
    std::vector<float> theirs(ours.size());
    std::memcpy(theirs.data(), ref->tensor_data(*t), theirs.size() * sizeof(float));
    for (size_t h = 0; h < ours.size(); ++h) EXPECT_EQ(ours[h], theirs[h]) << name << " head " << h;
  }
}

// Slopes for the released head counts, from the closed form 2^(-8k/n) (and the interleaved
// extra slopes for a non-power-of-two count), written out independently here.
TEST(FixtureModels, AlibiSlopesReleasedHeadCounts) {
  const std::vector<float> s16 = alibi_slopes(16);
  for (int k = 1; k <= 16; ++k) EXPECT_EQ(s16[k - 1], std::pow(2.0f, -0.5f * k)) << k;
  const std::vector<float> s12 = alibi_slopes(12);  // p = 8, then 4 extra: 2^(-(2j-1)/2)
  for (int k = 1; k <= 8; ++k) EXPECT_FLOAT_EQ(s12[k - 1], std::pow(2.0f, -1.0f * k)) << k;
  for (int j = 1; j <= 4; ++j) EXPECT_FLOAT_EQ(s12[7 + j], std::pow(2.0f, -0.5f * (2 * j - 1))) << j;
}

}  // namespace
}  // namespace engine
