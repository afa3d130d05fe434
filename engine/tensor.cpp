#include "engine/tensor.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace engine {

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) {
    strides[i] = strides[i + 1] * shape[i + 1];
  }
  return strides;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return -1;
    n *= d;
  }
  return n;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool TensorView::is_contiguous() const { return strides == contiguous_strides(shape); }

absl::StatusOr<TensorView> TensorView::rows(int64_t begin, int64_t end) const {
  if (rank() < 1 || begin < 0 || end < begin || end > shape[0]) {
    return absl::OutOfRangeError(absl::StrCat("rows [", begin, ", ", end, ") out of range for ",
                                              name.empty() ? "tensor" : name, " ", describe()));
  }
  TensorView v = *this;
  v.shape[0] = end - begin;
  v.data = data + static_cast<size_t>(begin * strides[0]) * dtype_size(dtype);
  if (arena_offset >= 0) v.arena_offset = arena_offset + begin * strides[0];
  return v;
}

absl::StatusOr<TensorView> TensorView::cols(int64_t begin, int64_t end) const {
  if (rank() != 2 || begin < 0 || end < begin || end > shape[1]) {
    return absl::OutOfRangeError(absl::StrCat("columns [", begin, ", ", end,
                                              ") out of range for ",
                                              name.empty() ? "tensor" : name, " ", describe()));
  }
  TensorView v = *this;
  v.shape[1] = end - begin;
  v.data = data + static_cast<size_t>(begin * strides[1]) * dtype_size(dtype);
  if (arena_offset >= 0) v.arena_offset = arena_offset + begin * strides[1];
  return v;
}

std::string TensorView::describe() const {
  return absl::StrCat(shape_string(shape), " ", dtype_name(dtype));
}

}  // namespace engine
