#include "engine/frozen_mask.h"

#include <bit>

#include "absl/strings/str_cat.h"

namespace engine {

FrozenMask::FrozenMask(int64_t elements)
    : elements_(elements), words_(static_cast<size_t>((elements + 63) / 64), 0) {}

FrozenMask FrozenMask::all_trainable(const ParameterArena& arena) {
  FrozenMask mask(arena.size_elements());
  for (const ParameterInfo& p : arena.parameters()) mask.set_range(p.offset, p.offset + p.numel);
  return mask;
}

void FrozenMask::set_range(int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end;) {
    const int64_t word = i >> 6;
    const int64_t bit = i & 63;
    const int64_t span = std::min<int64_t>(64 - bit, end - i);
    const uint64_t bits = span == 64 ? ~uint64_t{0} : ((uint64_t{1} << span) - 1) << bit;
    words_[static_cast<size_t>(word)] |= bits;
    i += span;
  }
}

absl::Status FrozenMask::mark_trainable(const TensorView& v) {
  if (v.arena_offset < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("view of ", v.name.empty() ? "tensor" : v.name, " is not in the arena"));
  }
  if (v.rank() != 1 && v.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("view of ", v.name, " has rank ", v.rank(),
                                                   "; only rank 1 and 2 views can be marked"));
  }
  const int64_t rows = v.rank() == 2 ? v.shape[0] : 1;
  const int64_t cols = v.shape.back();
  const int64_t row_stride = v.rank() == 2 ? v.strides[0] : 0;
  if (v.strides.back() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("view of ", v.name, " has a non-unit inner stride"));
  }
  const int64_t last = v.arena_offset + (rows - 1) * row_stride + cols;
  if (rows > 0 && cols > 0 && last > elements_) {
    return absl::OutOfRangeError(absl::StrCat("view of ", v.name, " ends at element ", last,
                                              " beyond the mask of ", elements_));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t begin = v.arena_offset + r * row_stride;
    set_range(begin, begin + cols);
  }
  return absl::OkStatus();
}

int64_t FrozenMask::trainable_count() const {
  int64_t n = 0;
  for (uint64_t w : words_) n += std::popcount(w);
  return n;
}

std::vector<int64_t> FrozenMask::trainable_indices() const {
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(trainable_count()));
  for (size_t w = 0; w < words_.size(); ++w) {
    uint64_t bits = words_[w];
    while (bits != 0) {
      const int bit = std::countr_zero(bits);
      out.push_back(static_cast<int64_t>(w) * 64 + bit);
      bits &= bits - 1;
    }
  }
  return out;
}

}  // namespace engine
