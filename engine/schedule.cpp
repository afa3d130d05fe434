#include "engine/schedule.h"

#include <algorithm>
#include <cmath>

namespace engine {

double LrSchedule::lr(int64_t step) const {
  constexpr double kPi = 3.14159265358979323846;
  if (step <= 0) return 0.0;
  if (warmup > 0 && step <= warmup) {
    return peak * static_cast<double>(step) / static_cast<double>(warmup);
  }
  if (kind == ScheduleKind::kConstant) return peak;
  const int64_t decay_steps = std::max<int64_t>(1, total - warmup);
  const double progress =
      std::clamp(static_cast<double>(step - warmup) / static_cast<double>(decay_steps), 0.0, 1.0);
  return peak * 0.5 * (1.0 + std::cos(kPi * progress));
}

}  // namespace engine
