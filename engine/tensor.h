// TensorView: a typed, strided window onto memory the view does not own.
// Contract: views never allocate. A view of a parameter remembers its element offset inside the
// parameter arena (`arena_offset`), so sub-block views (row ranges of a fused QKV weight, column
// ranges of a dense weight) can be turned into bitmask ranges by surgery without copying.
// Shapes use row-major order; strides are in elements.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace engine {

struct TensorView {
  std::string name;              // parameter name ("h.3.self_attention.dense.weight"), may be empty
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;    // e.g. (3C, C)
  std::vector<int64_t> strides;  // elements; row-major contiguous unless sliced
  std::byte* data = nullptr;     // address of element [0, ..., 0]
  int64_t arena_offset = -1;     // element index of [0, ..., 0] inside its arena, -1 if none

  int rank() const { return static_cast<int>(shape.size()); }
  int64_t numel() const;
  // True when the elements are laid out densely in row-major order.
  bool is_contiguous() const;

  template <typename T>
  T* as() const { return reinterpret_cast<T*>(data); }

  // Rows [begin, end) of dimension 0. Errors name the view and the bad range.
  absl::StatusOr<TensorView> rows(int64_t begin, int64_t end) const;
  // Columns [begin, end) of the last dimension of a rank-2 view.
  absl::StatusOr<TensorView> cols(int64_t begin, int64_t end) const;

  // "(2048, 6144) f32" style description for messages.
  std::string describe() const;
};

// Row-major contiguous strides for `shape`.
std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape);
// "(a, b, c)".
std::string shape_string(const std::vector<int64_t>& shape);
// Product of dims; -1 if it would overflow int64 or a dim is negative.
int64_t checked_numel(const std::vector<int64_t>& shape);

}  // namespace engine
