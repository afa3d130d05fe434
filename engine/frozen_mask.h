// FrozenMask: one bit per parameter-arena element, 1 = trainable. Everything the trainer knows
// about freezing comes from this mask; the optimizer only ever touches elements listed by
// `trainable_indices()`, so frozen elements stay bit-identical.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/arena.h"
#include "engine/tensor.h"

namespace engine {

class FrozenMask {
 public:
  // All elements frozen.
  explicit FrozenMask(int64_t elements);
  // Every parameter element trainable (ordinary fine-tuning); arena padding stays frozen.
  static FrozenMask all_trainable(const ParameterArena& arena);

  // Marks every element of a (possibly strided, rank 1 or 2) arena view trainable.
  absl::Status mark_trainable(const TensorView& view);

  bool trainable(int64_t element) const {
    return (words_[static_cast<size_t>(element >> 6)] >> (element & 63)) & 1u;
  }
  int64_t elements() const { return elements_; }
  int64_t trainable_count() const;
  // Arena element offsets of the trainable elements, ascending: the compact optimizer layout.
  std::vector<int64_t> trainable_indices() const;
  const std::vector<uint64_t>& words() const { return words_; }

 private:
  void set_range(int64_t begin, int64_t end);

  int64_t elements_;
  std::vector<uint64_t> words_;
};

}  // namespace engine
