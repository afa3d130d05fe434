// Learning-rate schedules (METHOD.md section 4): linear warm-up for `warmup` optimizer steps, then
// cosine decay to 0 at `total` steps, or constant after warm-up. Steps are 1-based: step 1 is the
// first update, and lr(step) is the rate that update uses.
#pragma once

#include <cstdint>

namespace engine {

enum class ScheduleKind { kCosine, kConstant };

struct LrSchedule {
  double peak = 5e-5;
  int64_t total = 1;
  int64_t warmup = 0;
  ScheduleKind kind = ScheduleKind::kCosine;

  // The published default warm-up: min(100, total / 4).
  static int64_t default_warmup(int64_t total) { return total / 4 < 100 ? total / 4 : 100; }
  double lr(int64_t step) const;
};

}  // namespace engine
