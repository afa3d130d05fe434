// Naming the tensor behind a non-finite training step.
// Contract:
//  - These scans run only after a step's loss or global gradient norm came out non-finite, so the
//    healthy path pays nothing for them. Each returns the first non-finite element in arena order
//    (parameter, element within it, NaN or Inf), or std::nullopt when there is none.
//  - describe_nonfinite_step turns them into the cause of a step's failure, checked in causal
//    order: a non-finite weight (which poisons the loss and every gradient after it), else a
//    non-finite loss (finite weights, overflow in the forward), else the first non-finite
//    gradient, e.g. "non-finite gradient in h.1.self_attention.query_key_value.weight (element 17
//    is NaN; gradient norm nan)".
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "engine/arena.h"
#include "engine/tape.h"

namespace engine {

struct NonFiniteElement {
  std::string tensor;
  int64_t element = 0;  // index within the tensor
  bool is_nan = false;  // otherwise +-Inf
};

std::optional<NonFiniteElement> first_nonfinite_weight(const ParameterArena& arena);

// Maps the compact gradient buffer (one value per trainable element, in ascending arena offset
// order) back to parameter names.
std::optional<NonFiniteElement> first_nonfinite_gradient(const ParameterArena& arena,
                                                         const CompactGradients& gradients);

struct NonFiniteCause {
  std::string message;          // without the "step N: " prefix
  bool weight_at_fault = false;  // skipping the update cannot help: the weights stay poisoned
};
NonFiniteCause describe_nonfinite_step(const ParameterArena& arena,
                                       const CompactGradients& gradients, double loss,
                                       double grad_norm);

}  // namespace engine
