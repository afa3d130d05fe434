// Test helper: read arrays of the transformers-made reference fixtures
// (tests/fixtures/reference/<model>.safetensors; names and shapes in <model>.json).
#pragma once

#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "model/safetensors.h"

namespace engine::testing {

inline const std::filesystem::path kFixtureDir =
    std::filesystem::path(ENGINE_SOURCE_DIR) / "tests" / "fixtures";

inline std::filesystem::path fixture_model_dir(const std::string& model) {
  return kFixtureDir / "models" / model;
}

// Reads one reference array as a flat vector of T, checking its element size.
class ReferenceData {
 public:
  explicit ReferenceData(const std::string& model) {
    absl::StatusOr<SafetensorsFile> f =
        SafetensorsFile::open(kFixtureDir / "reference" / (model + ".safetensors"));
    EXPECT_TRUE(f.ok()) << f.status();
    if (f.ok()) file_.emplace(std::move(*f));
  }
  bool has(const std::string& name) const {
    return file_.has_value() && file_->header().find(name) != nullptr;
  }
  template <typename T>
  std::vector<T> get(const std::string& name, std::vector<int64_t>* shape = nullptr) const {
    const SafetensorsTensorInfo* info = file_.has_value() ? file_->header().find(name) : nullptr;
    EXPECT_NE(info, nullptr) << name;
    if (info == nullptr) return {};
    EXPECT_EQ(info->element_size, sizeof(T)) << name;
    if (shape != nullptr) *shape = info->shape;
    std::vector<T> out(static_cast<size_t>(info->numel));
    std::memcpy(out.data(), file_->tensor_data(*info), out.size() * sizeof(T));
    return out;
  }

 private:
  std::optional<SafetensorsFile> file_;
};

}  // namespace engine::testing
