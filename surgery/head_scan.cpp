// Head scans of a training run; contract in surgery/head_scan.h.
#include "surgery/head_scan.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_format.h"
#include "surgery/corpus_scan.h"
#include "surgery/diagnosis.h"

namespace engine {

absl::StatusOr<HeadScan> scan_heads(const BloomModel& model, Backend& backend,
                                    const std::vector<std::vector<int32_t>>& chunks,
                                    const std::vector<HeadTarget>& targets,
                                    const HeadScan* before_surgery) {
  const int64_t L = model.config.n_layer, H = model.config.n_head;
  // The same scan as `engine diagnose` (surgery/corpus_scan.h), default thresholds.
  DiagnoseOptions options;
  options.seq_len = 0;
  for (const std::vector<int32_t>& chunk : chunks) {
    options.seq_len = std::max<int64_t>(options.seq_len, static_cast<int64_t>(chunk.size()));
  }
  absl::StatusOr<DiagnosisReport> diagnosed = diagnose_sequences(model, backend, chunks, options);
  if (!diagnosed.ok()) return diagnosed.status();
  const DiagnosisReport& report = *diagnosed;
  HeadScan scan;
  for (const HeadSummary& head : report.heads) scan.bos_mass.push_back(head.bos_mass.mean);
  std::vector<uint8_t> is_target(static_cast<size_t>(L * H), 0), target_layer(L, 0);
  int64_t revived = 0;
  for (const HeadTarget& t : targets) {
    is_target[t.layer * H + t.head] = 1;
    target_layer[t.layer] = 1;
    revived += is_collapsed(report.at(t.layer, t.head).cls) ? 0 : 1;
  }
  scan.summary = {{"scan_sequences", report.sequences},
                  {"healthy", report.counts.healthy},
                  {"low_entropy", report.counts.low_entropy},
                  {"sink", report.counts.sink},
                  {"dead", report.counts.dead},
                  {"collapsed", report.counts.collapsed()},
                  {"targets", targets.size()},
                  {"targets_not_collapsed", revived},
                  {"bos_mass", scan.bos_mass}};
  if (before_surgery != nullptr) {
    int64_t inside = 0, outside = 0;
    nlohmann::json drifted = nlohmann::json::array();
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t h = 0; h < H; ++h) {
        const size_t k = static_cast<size_t>(l * H + h);
        if (is_target[k] != 0) continue;
        if (head_drifted(before_surgery->bos_mass[k], scan.bos_mass[k], HeadScan::kDriftThreshold)) {
          (target_layer[l] != 0 ? inside : outside) += 1;
          drifted.push_back({l, h});
        }
      }
    }
    scan.summary["drift_inside_zone"] = inside;
    scan.summary["drift_outside_zone"] = outside;
    scan.summary["drifted_heads"] = drifted;
  }
  return scan;
}

namespace {

class TrainingHeadScan : public TrainingScan {
 public:
  TrainingHeadScan(std::vector<std::vector<int32_t>> chunks, std::vector<HeadTarget> targets)
      : chunks_(std::move(chunks)), targets_(std::move(targets)) {}

  absl::StatusOr<nlohmann::json> scan_base(const BloomModel& base, Backend& backend) override {
    absl::StatusOr<HeadScan> scan = scan_heads(base, backend, chunks_, {}, nullptr);
    if (!scan.ok()) return scan.status();
    base_ = std::move(*scan);
    return base_->summary;
  }

  absl::StatusOr<Line> scan(const BloomModel& model, Backend& backend, int64_t step) override {
    if (!base_.has_value()) {
      return absl::FailedPreconditionError("head scan: no scan of the base model");
    }
    absl::StatusOr<HeadScan> now = scan_heads(model, backend, chunks_, targets_, &*base_);
    if (!now.ok()) return now.status();
    Line out;
    out.fields = std::move(now->summary);
    const nlohmann::json& j = out.fields;
    out.log = absl::StrFormat(
        "scan  step %d: %d collapsed of %d heads, %d/%d targets not collapsed, "
        "%d frozen heads drifted (%d inside the surgical layers)",
        step, j["collapsed"].get<int64_t>(), model.config.n_layer * model.config.n_head,
        j["targets_not_collapsed"].get<int64_t>(), targets_.size(),
        j["drift_inside_zone"].get<int64_t>() + j["drift_outside_zone"].get<int64_t>(),
        j["drift_inside_zone"].get<int64_t>());
    return out;
  }

 private:
  std::vector<std::vector<int32_t>> chunks_;
  std::vector<HeadTarget> targets_;
  std::optional<HeadScan> base_;
};

}  // namespace

std::shared_ptr<TrainingScan> head_scan_for_training(std::vector<std::vector<int32_t>> chunks,
                                                     std::vector<HeadTarget> targets) {
  return std::make_shared<TrainingHeadScan>(std::move(chunks), std::move(targets));
}

}  // namespace engine
