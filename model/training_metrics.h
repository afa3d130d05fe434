// metrics.jsonl of a training run (docs/TRAINING.md): one JSON object per line, flushed at once,
// so a killed run leaves whole lines; a resume keeps one history, each step once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace engine {

class MetricsLog {
 public:
  // keep_through_step >= 0 (a resume from step_N): lines of the earlier run about steps after N
  // are dropped first (atomically), since those steps run again and are logged anew; the log
  // stays one history, each step once. A line cut short by a kill is dropped too.
  absl::Status open(const std::filesystem::path& file, int64_t keep_through_step = -1);
  void write(const nlohmann::json& j);
  // An error once a write failed (e.g. a full disk), so the run stops instead of losing lines.
  absl::Status status() const;

 private:
  std::filesystem::path path_;
  std::ofstream stream_;
};

}  // namespace engine
