// The argument check of the two CPU GELU forms: the tanh form of gelu.cpp (built once per
// instruction set) and the erf form of gelu_erf.cpp. Both report the same errors under the same
// op names; isa.cpp picks the form (GeluParams::exact).
// Safe to include before an instruction-set region (isa_region.h): it is compiled for the
// baseline target in every file that includes it.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/backend.h"

namespace engine::cpu {

// `op` names the entry point in the messages; the forward needs x and y, the backward x, dy and
// dx.
inline absl::Status check_gelu_params(const GeluParams& p, const char* op, bool backward) {
  if (p.n < 0) return absl::InvalidArgumentError(absl::StrCat(op, ": negative n=", p.n));
  if (p.x == nullptr) return absl::InvalidArgumentError(absl::StrCat(op, ": x is required"));
  if (!backward && p.y == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": y is required"));
  }
  if (backward && (p.dy == nullptr || p.dx == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": dy and dx are required"));
  }
  return absl::OkStatus();
}

}  // namespace engine::cpu
