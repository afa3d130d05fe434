// Test helpers for the transformers-made reference fixtures (tests/fixtures/README.md): reading
// reference arrays, turning a case's labels into engine targets, and the gradient tolerance of
// docs/TOLERANCES.md. Header-only, shared by the backward and trainer tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/safetensors.h"

namespace engine::testing_fixtures {

inline const std::filesystem::path kFixtures =
    std::filesystem::path(ENGINE_SOURCE_DIR) / "tests/fixtures";
constexpr int32_t kIgnoreIndex = -100;

// A whole file's bytes ("" when it cannot be read), and writing them back.
inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

// Training data for the fixture models: `documents` lines of {"input_ids": [...]}, each 10-30
// ids drawn with `seed` from [4, 260) (the fixture vocabulary without its special ids).
inline void write_random_id_documents(const std::filesystem::path& file, int documents,
                                      uint32_t seed) {
  std::ofstream data(file);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> id(4, 259), len(10, 30);
  for (int d = 0; d < documents; ++d) {
    data << "{\"input_ids\": [";
    for (int t = len(rng); t > 0; --t) data << id(rng) << (t > 1 ? ", " : "");
    data << "]}\n";
  }
}

inline std::filesystem::path fixture_model_dir(const std::string& model) {
  return kFixtures / "models" / model;
}  // transformers' "not scored" label

class Reference {
 public:
  explicit Reference(const std::string& model) {
    absl::StatusOr<SafetensorsFile> f =
        SafetensorsFile::open(kFixtures / "reference" / (model + ".safetensors"));
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
    std::vector<T> out(info->numel);
    std::memcpy(out.data(), file_->tensor_data(*info), info->numel * sizeof(T));
    return out;
  }
  std::vector<int64_t> shape(const std::string& name) const {
    const SafetensorsTensorInfo* info = file_->header().find(name);
    return info == nullptr ? std::vector<int64_t>{} : info->shape;
  }

 private:
  std::optional<SafetensorsFile> file_;
};

struct CaseData {
  int64_t batch = 0, seq = 0;
  std::vector<int32_t> ids, targets;
  std::vector<uint8_t> mask;
};

// targets[t] = labels[t + 1] (the shift transformers applies inside its loss), -100 -> -1.
inline CaseData load_case(const Reference& ref, const std::string& c) {
  CaseData d;
  const std::vector<int64_t> shape = ref.shape(c + ".input_ids");
  d.ids = ref.get<int32_t>(c + ".input_ids");
  d.batch = shape[0], d.seq = shape[1];
  const std::vector<int32_t> mask = ref.get<int32_t>(c + ".attention_mask");
  const std::vector<int32_t> labels = ref.get<int32_t>(c + ".labels");
  d.mask.assign(mask.begin(), mask.end());
  d.targets.assign(d.batch * d.seq, -1);
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t t = 0; t + 1 < d.seq; ++t) {
      const int32_t label = labels[b * d.seq + t + 1];
      d.targets[b * d.seq + t] = label == kIgnoreIndex ? -1 : label;
    }
  }
  return d;
}

// docs/TOLERANCES.md, gradients: |err| <= 1e-3 |ref| + 1e-5 max|ref| per element. Returns the
// number of violating elements and reports the first few.
inline int64_t gradient_mismatches(const std::string& what, const float* got, const float* ref,
                                   int64_t n) {
  constexpr double kRelative = 1e-3;
  constexpr double kOfMax = 1e-5;
  double max_ref = 0.0;
  for (int64_t i = 0; i < n; ++i) max_ref = std::max(max_ref, std::abs(double{ref[i]}));
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double err = std::abs(double{got[i]} - ref[i]);
    if (err > kRelative * std::abs(double{ref[i]}) + kOfMax * max_ref) {
      if (++bad <= 3) {
        ADD_FAILURE() << what << " element " << i << ": got " << got[i] << ", reference " << ref[i]
                      << " (max |ref| " << max_ref << ")";
      }
    }
  }
  return bad;
}

}  // namespace engine::testing_fixtures
