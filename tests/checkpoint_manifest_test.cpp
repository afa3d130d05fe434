// Content manifests (model/checkpoint_manifest.h): written by save_model_directory, checked by
// load_model_directory, and refused with one line naming the file when a byte differs; a
// directory without a manifest (as Hugging Face ships them) still loads.
#include "model/checkpoint_manifest.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/sha256.h"
#include "gtest/gtest.h"
#include "model/model_directory.h"
#include "nlohmann/json.hpp"
#include "tests/fixture_reference.h"

namespace engine {
namespace {

namespace fs = std::filesystem;
using testing_fixtures::kFixtures;

using testing_fixtures::read_bytes;
using testing_fixtures::write_bytes;
std::string hex_of(const std::string& bytes) { return to_hex(sha256(bytes.data(), bytes.size())); }

class Manifests : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            absl::StrCat("engine_manifest_test_", ::getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    absl::StatusOr<BloomModel> m = load_model_directory(kFixtures / "models" / "bloom-h4-l2");
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
    dir_ = root_ / "saved";
    ASSERT_TRUE(save_model_directory(model_, dir_).ok());
  }
  void TearDown() override { fs::remove_all(root_); }

  fs::path root_, dir_;
  BloomModel model_;
};

TEST_F(Manifests, SaveListsEveryFileWithSizeAndHash) {
  const nlohmann::json j = nlohmann::json::parse(read_bytes(dir_ / kManifestFile));
  EXPECT_EQ(j["format"], "engine-manifest");
  EXPECT_EQ(j["algorithm"], "sha256");
  std::set<std::string> listed;
  for (const nlohmann::json& e : j["files"]) {
    const std::string name = e["name"].get<std::string>();
    listed.insert(name);
    const std::string bytes = read_bytes(dir_ / name);
    EXPECT_EQ(e["size"].get<uint64_t>(), bytes.size()) << name;
    EXPECT_EQ(e["sha256"].get<std::string>(), hex_of(bytes)) << name;
  }
  EXPECT_EQ(listed, (std::set<std::string>{"config.json", "model.safetensors"}));
  EXPECT_TRUE(verify_directory(dir_, true).ok());
  EXPECT_TRUE(load_model_directory(dir_).ok());
}

TEST_F(Manifests, FlippedByteIsRefusedNamingTheFile) {
  const fs::path weights = dir_ / "model.safetensors";
  std::string bytes = read_bytes(weights);
  const std::string listed = hex_of(bytes);
  bytes[bytes.size() - 5] ^= 0x01;  // a low mantissa bit of the last tensor: still a valid file
  write_bytes(weights, bytes);
  absl::StatusOr<BloomModel> loaded = load_model_directory(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(std::string(loaded.status().message()),
            absl::StrCat(weights.string(), ": content hash mismatch (manifest says ", listed,
                         ", file has ", hex_of(bytes), ")"));
  // Without the manifest the same directory loads: nothing says what its bytes should be.
  fs::remove(dir_ / kManifestFile);
  EXPECT_TRUE(load_model_directory(dir_).ok());
}

TEST_F(Manifests, TruncatedOrMissingFilesAndHostileManifestsAreNamed) {
  const std::string config = read_bytes(dir_ / "config.json");
  write_bytes(dir_ / "config.json", config.substr(0, 10));
  absl::StatusOr<BloomModel> loaded = load_model_directory(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(std::string(loaded.status().message()),
            absl::StrCat((dir_ / "config.json").string(), ": size 10 bytes differs from the ",
                         "manifest's ", config.size()));
  write_bytes(dir_ / "config.json", config);
  ASSERT_TRUE(load_model_directory(dir_).ok());

  nlohmann::json j = nlohmann::json::parse(read_bytes(dir_ / kManifestFile));
  const nlohmann::json good = j;
  j["files"][0]["name"] = "../saved/config.json";
  write_bytes(dir_ / kManifestFile, j.dump());
  loaded = load_model_directory(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(std::string(loaded.status().message()),
            absl::StrCat((dir_ / kManifestFile).string(),
                         ": field \"files[0].name\": expected a plain file name"));

  j = good;
  j["files"].erase(1);  // config.json is listed second
  write_bytes(dir_ / kManifestFile, j.dump());
  loaded = load_model_directory(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(std::string(loaded.status().message()),
            absl::StrCat((dir_ / kManifestFile).string(),
                         ": does not list config.json, which is part of the directory"));

  j = good;
  j["files"].push_back({{"name", "gone.bin"}, {"size", 1}, {"sha256", std::string(64, '0')}});
  write_bytes(dir_ / kManifestFile, j.dump());
  absl::Status s = verify_directory(dir_, true);
  EXPECT_EQ(std::string(s.message()),
            absl::StrCat((dir_ / "gone.bin").string(), ": listed in manifest.json but missing"));
}

// Saving again over a directory replaces its manifest: an old one never condemns new files.
TEST_F(Manifests, ResavingReplacesTheManifest) {
  absl::StatusOr<TensorView> bias = model_.arena.view("ln_f.bias");
  ASSERT_TRUE(bias.ok());
  bias->as<float>()[0] += 1.0f;
  ASSERT_TRUE(save_model_directory(model_, dir_).ok());
  absl::StatusOr<BloomModel> loaded = load_model_directory(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  absl::StatusOr<TensorView> got = loaded->arena.view("ln_f.bias");
  EXPECT_EQ(got->as<float>()[0], bias->as<float>()[0]);
}

TEST_F(Manifests, ExtendAddsFilesAndKeepsTheListedOnes) {
  write_bytes(dir_ / "extra.bin", "extra");
  ASSERT_TRUE(extend_manifest(dir_, {"extra.bin"}).ok());
  absl::StatusOr<std::optional<Manifest>> m = read_manifest(dir_);
  ASSERT_TRUE(m.ok() && m->has_value());
  ASSERT_EQ((*m)->files.size(), 3u);
  EXPECT_EQ((*m)->files[2].sha256, hex_of("extra"));
  write_bytes(dir_ / "extra.bin", "extrA");
  absl::Status s = verify_directory(dir_, true);
  EXPECT_NE(std::string(s.message()).find("extra.bin: content hash mismatch"), std::string::npos)
      << s;
  // The model files themselves still verify (the loader checks only the files it reads).
  EXPECT_TRUE(load_model_directory(dir_).ok());
}

TEST(ArenaSha256, ChangesWithOneUlpOfOneWeight) {
  absl::StatusOr<BloomModel> f32 = load_model_directory(kFixtures / "models" / "bloom-h4-l2");
  ASSERT_TRUE(f32.ok());
  const std::string base = arena_sha256(f32->arena);
  absl::StatusOr<TensorView> w = f32->arena.view("h.1.mlp.dense_4h_to_h.weight");
  ASSERT_TRUE(w.ok());
  w->as<float>()[7] = std::nextafter(w->as<float>()[7], 1.0f);
  EXPECT_NE(arena_sha256(f32->arena), base);
}

}  // namespace
}  // namespace engine
