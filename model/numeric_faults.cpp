// Non-finite step diagnosis; contract in numeric_faults.h.
#include "model/numeric_faults.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace engine {

namespace {

std::string describe(const NonFiniteElement& e) {
  return absl::StrCat(e.tensor, " (element ", e.element, " is ", e.is_nan ? "NaN" : "Inf");
}

}  // namespace

std::optional<NonFiniteElement> first_nonfinite_weight(const ParameterArena& arena) {
  const float* w = reinterpret_cast<const float*>(arena.base());
  for (const ParameterInfo& p : arena.parameters()) {
    for (int64_t i = 0; i < p.numel; ++i) {
      const float x = w[p.offset + i];
      if (!std::isfinite(x)) return NonFiniteElement{p.name, i, std::isnan(x)};
    }
  }
  return std::nullopt;
}

std::optional<NonFiniteElement> first_nonfinite_gradient(const ParameterArena& arena,
                                                         const CompactGradients& gradients) {
  const float* g = gradients.data();
  const std::vector<ParameterInfo>& params = arena.parameters();
  for (int64_t j = 0; j < gradients.size(); ++j) {
    if (std::isfinite(g[j])) continue;
    const int64_t offset = gradients.arena_index(j);
    // Parameters are declared in ascending offset order: the owner is the last one starting at or
    // before `offset`.
    auto owner = std::upper_bound(
        params.begin(), params.end(), offset,
        [](int64_t off, const ParameterInfo& p) { return off < p.offset; });
    if (owner == params.begin()) continue;
    --owner;
    return NonFiniteElement{owner->name, offset - owner->offset, std::isnan(g[j])};
  }
  return std::nullopt;
}

NonFiniteCause describe_nonfinite_step(const ParameterArena& arena,
                                       const CompactGradients& gradients, double loss,
                                       double grad_norm) {
  if (std::optional<NonFiniteElement> w = first_nonfinite_weight(arena)) {
    return {absl::StrCat("non-finite weight in ", describe(*w), ")"), true};
  }
  if (!std::isfinite(loss)) {
    return {absl::StrCat("non-finite loss (loss ", loss, ", gradient norm ", grad_norm, ")"), false};
  }
  if (std::optional<NonFiniteElement> g = first_nonfinite_gradient(arena, gradients)) {
    return {absl::StrCat("non-finite gradient in ", describe(*g), "; gradient norm ", grad_norm,
                         ")"),
            false};
  }
  // The norm overflowed although every element is finite (a sum of squares beyond double range
  // cannot happen for f32 inputs of realistic size, but the check costs nothing here).
  return {absl::StrCat("non-finite gradient norm ", grad_norm, " with finite elements"), false};
}

}  // namespace engine
