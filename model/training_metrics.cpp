// metrics.jsonl of a training run; contract in model/training_metrics.h.
#include "model/training_metrics.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "engine/io.h"

namespace engine {

namespace fs = std::filesystem;

absl::Status MetricsLog::open(const fs::path& file, int64_t keep_through_step) {
  path_ = file;
  std::error_code ec;
  if (keep_through_step >= 0 && fs::exists(file, ec)) {
    std::ifstream in(file);
    std::string kept, line;
    bool dropped = false;
    while (std::getline(in, line)) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      const auto step = j.is_object() ? j.find("step") : j.end();
      if (!j.is_object() || (step != j.end() && step->is_number_integer() &&
                             step->get<int64_t>() > keep_through_step)) {
        dropped = true;
        continue;
      }
      kept += line;
      kept += '\n';
    }
    if (dropped) {
      if (absl::Status s = write_string_atomically(file, kept); !s.ok()) return s;
    }
  }
  stream_.open(file, std::ios::app);
  if (!stream_)
    return absl::InternalError(absl::StrCat(file.string(), ": cannot open for append"));
  return absl::OkStatus();
}

void MetricsLog::write(const nlohmann::json& j) {
  if (!stream_.is_open()) return;
  stream_ << j.dump() << '\n';
  stream_.flush();
}

absl::Status MetricsLog::status() const {
  if (!stream_.is_open() || stream_.good()) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(path_.string(), ": write failed (disk full?)"));
}

}  // namespace engine
