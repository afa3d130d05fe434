// ParameterArena: every parameter of a model in one allocation, addressed through typed views.
// Contract: parameters are declared (name, shape) first, then `allocate()` makes one zeroed,
// 64-byte aligned block holding all of them in declaration order; every parameter starts on an
// element offset that is a multiple of kAlignElements. All parameters share the arena's dtype, so
// an element offset is also the index a FrozenMask bit or an optimizer slot refers to.
// Not thread-safe for declaration; views may be read concurrently after allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"
#include "engine/tensor.h"

namespace engine {

struct ParameterInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // element offset inside the arena
  int64_t numel = 0;
};

class ParameterArena {
 public:
  // Each parameter begins on a multiple of this many elements (64 bytes at f32): cache-line and
  // SIMD-aligned starts for every kernel that reads a whole parameter.
  static constexpr int64_t kAlignElements = 16;

  explicit ParameterArena(DType dtype = DType::kF32) : dtype_(dtype) {}
  ParameterArena(const ParameterArena&) = delete;
  ParameterArena& operator=(const ParameterArena&) = delete;
  ParameterArena(ParameterArena&&) = default;
  ParameterArena& operator=(ParameterArena&&) = default;

  // Declares a parameter. Fails on duplicate names, negative dims, overflow, or after allocate().
  absl::Status declare(std::string name, std::vector<int64_t> shape);
  // Allocates the single zeroed block. Fails if already allocated or out of memory.
  absl::Status allocate();

  bool allocated() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const std::vector<ParameterInfo>& parameters() const { return params_; }
  bool contains(std::string_view name) const;
  // Total elements including alignment padding.
  int64_t size_elements() const { return size_elements_; }
  size_t size_bytes() const { return static_cast<size_t>(size_elements_) * dtype_size(dtype_); }
  // Elements that belong to parameters (no padding).
  int64_t parameter_elements() const;

  // Full view of a parameter (requires allocate()). NotFound names the missing parameter.
  absl::StatusOr<TensorView> view(std::string_view name) const;
  TensorView view(const ParameterInfo& p) const;

  std::byte* base() { return storage_.get(); }
  const std::byte* base() const { return storage_.get(); }

 private:
  struct FreeDeleter {
    void operator()(std::byte* p) const;
  };

  DType dtype_;
  std::vector<ParameterInfo> params_;
  std::unordered_map<std::string, size_t> index_;
  int64_t size_elements_ = 0;
  std::unique_ptr<std::byte, FreeDeleter> storage_;
};

}  // namespace engine
