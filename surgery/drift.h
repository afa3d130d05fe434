// Drift (METHOD.md section 5): a head drifts when the mean attention it puts on the first token
// (bos_mass) moved by more than a threshold between two scans of the same model shape. This is
// the one definition; the training run's head scans (surgery/head_scan.h) and the comparison of
// two diagnosis reports (surgery/report_compare.h) both use it, and differ only in how they group
// the drifting heads.
#pragma once

#include <cmath>

namespace engine {

inline constexpr double kDefaultDriftThreshold = 0.05;

inline bool head_drifted(double bos_before, double bos_after,
                         double threshold = kDefaultDriftThreshold) {
  return std::abs(bos_after - bos_before) > threshold;
}

}  // namespace engine
