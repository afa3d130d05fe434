// Diagnosis: per-(layer, head) attention statistics over a corpus -> classes -> report.
// Contract (METHOD.md section 2): each sequence contributes one value per head and statistic
// (its mean over the sequence's valid query rows, computed by the fused attention kernel); the
// reported value is the unweighted mean over sequences, with population standard deviation
// (ddof 0), min and max. Classes are applied to the means, in the order DEAD, SINK, LOW_ENTROPY,
// HEALTHY. The report's JSON form is version 1 (docs/FORMATS.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace engine {

struct Thresholds {
  double dead = 0.95;
  double sink = 0.5;
  double low_entropy = 0.5;
};

enum class HeadClass { kHealthy, kLowEntropy, kSink, kDead };
const char* head_class_name(HeadClass c);
// One character per class for the text grid: '.' healthy, 'l' low entropy, 's' sink, 'D' dead.
char head_class_mark(HeadClass c);
absl::StatusOr<HeadClass> head_class_from_name(const std::string& name);
HeadClass classify(double bos_mass, double entropy, const Thresholds& t);
inline bool is_collapsed(HeadClass c) { return c == HeadClass::kSink || c == HeadClass::kDead; }

// Statistics of one sequence, (L, H) row-major.
struct SequenceHeadStats {
  std::vector<double> bos_mass, entropy, local_mass;
};

struct Spread {
  double mean = 0, std = 0, min = 0, max = 0;
};

struct HeadSummary {
  int64_t layer = 0, head = 0;
  double slope = 0;
  Spread bos_mass, entropy, local_mass;
  HeadClass cls = HeadClass::kHealthy;
};

struct HeadCounts {
  int64_t healthy = 0, low_entropy = 0, sink = 0, dead = 0;
  int64_t collapsed() const { return sink + dead; }
};

struct DiagnosisReport {
  static constexpr int kVersion = 1;
  nlohmann::json model = nlohmann::json::object();  // {"name", "n_layer", "n_head", ...}
  int64_t sequences = 0, tokens = 0, seq_len = 0;
  Thresholds thresholds;
  int64_t n_layer = 0, n_head = 0;
  std::vector<HeadSummary> heads;  // (L, H) row-major
  HeadCounts counts;
  // Per head index: fraction of layers where that head is collapsed; band = indices above
  // band_threshold (0.3).
  std::vector<double> collapsed_fraction_by_head;
  std::vector<int64_t> band;
  double band_threshold = 0.3;
  // Heads whose class changes when the sink threshold moves to 0.4 / 0.6.
  int64_t class_changes_sink_040 = 0, class_changes_sink_060 = 0;

  const HeadSummary& at(int64_t layer, int64_t head) const { return heads[layer * n_head + head]; }
};

// Streams per-sequence statistics into running sums; finish() classifies.
class DiagnosisAccumulator {
 public:
  DiagnosisAccumulator(int64_t n_layer, int64_t n_head);
  // `tokens` = valid tokens of this sequence (for the report's token count).
  absl::Status add(const SequenceHeadStats& s, int64_t tokens);
  int64_t sequences() const { return sequences_; }
  DiagnosisReport finish(const Thresholds& thresholds, const std::vector<float>& slopes,
                         nlohmann::json model, int64_t seq_len) const;

 private:
  struct Running {
    double sum = 0, sum_sq = 0, min = 0, max = 0;
  };
  int64_t n_layer_, n_head_;
  int64_t sequences_ = 0, tokens_ = 0;
  std::vector<Running> bos_, entropy_, local_;
};

// Recomputes classes, counts, band and sensitivity from the means in `report.heads`.
void classify_report(DiagnosisReport& report);

nlohmann::json report_to_json(const DiagnosisReport& report);
absl::StatusOr<DiagnosisReport> report_from_json(const nlohmann::json& j, const std::string& source);
absl::StatusOr<DiagnosisReport> load_report(const std::string& path);

// Human renderings.
std::string render_grid(const DiagnosisReport& report);   // layer x head, one mark per head
std::string render_csv(const DiagnosisReport& report);    // one row per head
// The heat map (bos_mass per head, with a colour scale and the class legend) and, with
// `scatter`, the bos_mass vs ALiBi slope scatter beside it.
std::string render_svg(const DiagnosisReport& report, bool scatter = true);
std::string render_html(const DiagnosisReport& report);   // self-contained page

}  // namespace engine
