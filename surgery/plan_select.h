// Turning a diagnosis report into a surgery plan (`engine plan`).
// Contract: the base set comes from --select (collapsed = SINK + DEAD, sink, dead, all-in-band =
// every head of every layer whose head index is in the report's band) or, when explicit heads are
// given, from those heads alone; --layers and --head-indices then restrict it, --exclude removes
// heads. Targets come out sorted by (layer, head). Selecting nothing is an error, because a plan
// with no targets is invalid.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "surgery/diagnosis.h"
#include "surgery/plan.h"

namespace engine {

struct IndexRange {
  int64_t first = 0, last = 0;  // inclusive
  bool contains(int64_t v) const { return v >= first && v <= last; }
};

struct PlanSelection {
  std::string select = "collapsed";
  std::vector<HeadTarget> heads;  // explicit targets; non-empty overrides `select`
  std::optional<IndexRange> layers;
  std::optional<IndexRange> head_indices;
  std::vector<HeadTarget> exclude;
};

// "5:14,6:3" -> targets. `flag` names the option in errors.
absl::StatusOr<std::vector<HeadTarget>> parse_head_list(const std::string& text,
                                                        const std::string& flag);
// "9-15" or "9" -> inclusive range.
absl::StatusOr<IndexRange> parse_index_range(const std::string& text, const std::string& flag);

absl::StatusOr<std::vector<HeadTarget>> select_heads(const DiagnosisReport& report,
                                                     const PlanSelection& selection);

}  // namespace engine
