#include "surgery/diagnosis.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/io.h"
#include "surgery/html.h"

namespace engine {
namespace {

using json = nlohmann::json;

constexpr double kSensitivityLow = 0.4;
constexpr double kSensitivityHigh = 0.6;

Spread spread_of(double sum, double sum_sq, double min, double max, int64_t n) {
  Spread s;
  if (n == 0) return s;
  s.mean = sum / static_cast<double>(n);
  const double var = std::max(0.0, sum_sq / static_cast<double>(n) - s.mean * s.mean);
  s.std = std::sqrt(var);
  s.min = min;
  s.max = max;
  return s;
}

absl::Status bad(const std::string& source, const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field \"", field, "\": ", what));
}

absl::StatusOr<double> number_field(const json& j, const std::string& key, const std::string& source,
                                    const std::string& where) {
  if (!j.contains(key)) return bad(source, where + key, "missing");
  if (!j[key].is_number()) return bad(source, where + key, "expected a number");
  return j[key].get<double>();
}

absl::StatusOr<int64_t> int_field(const json& j, const std::string& key, const std::string& source,
                                  const std::string& where) {
  if (!j.contains(key)) return bad(source, where + key, "missing");
  if (!j[key].is_number_integer()) return bad(source, where + key, "expected an integer");
  return j[key].get<int64_t>();
}

// Optional fields: absent -> `fallback`; present with the wrong type -> an error (not a throw).
absl::StatusOr<double> optional_number(const json& j, const std::string& key, double fallback,
                                       const std::string& source, const std::string& where) {
  return j.contains(key) ? number_field(j, key, source, where) : fallback;
}

absl::StatusOr<int64_t> optional_int(const json& j, const std::string& key, int64_t fallback,
                                     const std::string& source, const std::string& where) {
  return j.contains(key) ? int_field(j, key, source, where) : fallback;
}

// Heatmap colour for a value in [0, 1]: white -> deep red.
std::string heat_colour(double v) {
  v = std::clamp(v, 0.0, 1.0);
  const int g = static_cast<int>(std::lround(255 * (1.0 - v)));
  const int r = static_cast<int>(std::lround(255 - 75 * v));
  return absl::StrFormat("#%02x%02x%02x", r, g, g);
}


}  // namespace

const char* head_class_name(HeadClass c) {
  switch (c) {
    case HeadClass::kHealthy: return "HEALTHY";
    case HeadClass::kLowEntropy: return "LOW_ENTROPY";
    case HeadClass::kSink: return "SINK";
    case HeadClass::kDead: return "DEAD";
  }
  return "?";
}

char head_class_mark(HeadClass c) {
  switch (c) {
    case HeadClass::kHealthy: return '.';
    case HeadClass::kLowEntropy: return 'l';
    case HeadClass::kSink: return 's';
    case HeadClass::kDead: return 'D';
  }
  return '?';
}

absl::StatusOr<HeadClass> head_class_from_name(const std::string& name) {
  for (HeadClass c : {HeadClass::kHealthy, HeadClass::kLowEntropy, HeadClass::kSink, HeadClass::kDead}) {
    if (name == head_class_name(c)) return c;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown head class \"", name, "\""));
}

HeadClass classify(double bos_mass, double entropy, const Thresholds& t) {
  if (bos_mass > t.dead) return HeadClass::kDead;
  if (bos_mass > t.sink) return HeadClass::kSink;
  if (entropy < t.low_entropy) return HeadClass::kLowEntropy;
  return HeadClass::kHealthy;
}

DiagnosisAccumulator::DiagnosisAccumulator(int64_t n_layer, int64_t n_head)
    : n_layer_(n_layer),
      n_head_(n_head),
      bos_(static_cast<size_t>(n_layer * n_head)),
      entropy_(bos_.size()),
      local_(bos_.size()) {}

absl::Status DiagnosisAccumulator::add(const SequenceHeadStats& s, int64_t tokens) {
  const size_t n = bos_.size();
  if (s.bos_mass.size() != n || s.entropy.size() != n || s.local_mass.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("head statistics of size ", s.bos_mass.size(),
                                                   " for a model of ", n_layer_, " x ", n_head_,
                                                   " heads"));
  }
  auto update = [first = sequences_ == 0](Running& r, double v) {
    r.sum += v;
    r.sum_sq += v * v;
    r.min = first ? v : std::min(r.min, v);
    r.max = first ? v : std::max(r.max, v);
  };
  for (size_t i = 0; i < n; ++i) {
    update(bos_[i], s.bos_mass[i]);
    update(entropy_[i], s.entropy[i]);
    update(local_[i], s.local_mass[i]);
  }
  ++sequences_;
  tokens_ += tokens;
  return absl::OkStatus();
}

DiagnosisReport DiagnosisAccumulator::finish(const Thresholds& thresholds,
                                             const std::vector<float>& slopes, json model,
                                             int64_t seq_len) const {
  DiagnosisReport r;
  r.model = std::move(model);
  r.sequences = sequences_;
  r.tokens = tokens_;
  r.seq_len = seq_len;
  r.thresholds = thresholds;
  r.n_layer = n_layer_;
  r.n_head = n_head_;
  for (int64_t l = 0; l < n_layer_; ++l) {
    for (int64_t h = 0; h < n_head_; ++h) {
      const size_t i = static_cast<size_t>(l * n_head_ + h);
      HeadSummary s;
      s.layer = l;
      s.head = h;
      s.slope = h < static_cast<int64_t>(slopes.size()) ? slopes[h] : 0.0;
      s.bos_mass = spread_of(bos_[i].sum, bos_[i].sum_sq, bos_[i].min, bos_[i].max, sequences_);
      s.entropy = spread_of(entropy_[i].sum, entropy_[i].sum_sq, entropy_[i].min, entropy_[i].max,
                            sequences_);
      s.local_mass = spread_of(local_[i].sum, local_[i].sum_sq, local_[i].min, local_[i].max,
                               sequences_);
      r.heads.push_back(s);
    }
  }
  classify_report(r);
  return r;
}

void classify_report(DiagnosisReport& r) {
  r.counts = HeadCounts{};
  r.class_changes_sink_040 = 0;
  r.class_changes_sink_060 = 0;
  std::vector<int64_t> collapsed_layers(static_cast<size_t>(r.n_head), 0);
  Thresholds low = r.thresholds, high = r.thresholds;
  low.sink = kSensitivityLow;
  high.sink = kSensitivityHigh;
  for (HeadSummary& h : r.heads) {
    h.cls = classify(h.bos_mass.mean, h.entropy.mean, r.thresholds);
    switch (h.cls) {
      case HeadClass::kHealthy: ++r.counts.healthy; break;
      case HeadClass::kLowEntropy: ++r.counts.low_entropy; break;
      case HeadClass::kSink: ++r.counts.sink; break;
      case HeadClass::kDead: ++r.counts.dead; break;
    }
    if (is_collapsed(h.cls)) ++collapsed_layers[static_cast<size_t>(h.head)];
    if (classify(h.bos_mass.mean, h.entropy.mean, low) != h.cls) ++r.class_changes_sink_040;
    if (classify(h.bos_mass.mean, h.entropy.mean, high) != h.cls) ++r.class_changes_sink_060;
  }
  r.collapsed_fraction_by_head.assign(static_cast<size_t>(r.n_head), 0.0);
  r.band.clear();
  for (int64_t h = 0; h < r.n_head; ++h) {
    const double f = r.n_layer > 0 ? static_cast<double>(collapsed_layers[h]) / r.n_layer : 0.0;
    r.collapsed_fraction_by_head[h] = f;
    if (f > r.band_threshold) r.band.push_back(h);
  }
}

json report_to_json(const DiagnosisReport& r) {
  json heads = json::array();
  for (const HeadSummary& h : r.heads) {
    heads.push_back({{"layer", h.layer},
                     {"head", h.head},
                     {"slope", h.slope},
                     {"bos_mass", h.bos_mass.mean},
                     {"bos_mass_std", h.bos_mass.std},
                     {"bos_mass_min", h.bos_mass.min},
                     {"bos_mass_max", h.bos_mass.max},
                     {"entropy", h.entropy.mean},
                     {"entropy_std", h.entropy.std},
                     {"entropy_min", h.entropy.min},
                     {"entropy_max", h.entropy.max},
                     {"local_mass", h.local_mass.mean},
                     {"local_mass_std", h.local_mass.std},
                     {"local_mass_min", h.local_mass.min},
                     {"local_mass_max", h.local_mass.max},
                     {"class", head_class_name(h.cls)}});
  }
  return json{{"version", DiagnosisReport::kVersion},
              {"model", r.model},
              {"data", {{"sequences", r.sequences}, {"tokens", r.tokens}, {"seq_len", r.seq_len}}},
              {"thresholds",
               {{"dead", r.thresholds.dead},
                {"sink", r.thresholds.sink},
                {"low_entropy", r.thresholds.low_entropy}}},
              {"heads", heads},
              {"counts",
               {{"HEALTHY", r.counts.healthy},
                {"LOW_ENTROPY", r.counts.low_entropy},
                {"SINK", r.counts.sink},
                {"DEAD", r.counts.dead},
                {"collapsed", r.counts.collapsed()}}},
              {"band",
               {{"threshold", r.band_threshold},
                {"collapsed_fraction_by_head", r.collapsed_fraction_by_head},
                {"heads", r.band}}},
              {"sensitivity",
               {{"sink_0.4_class_changes", r.class_changes_sink_040},
                {"sink_0.6_class_changes", r.class_changes_sink_060}}}};
}

absl::StatusOr<DiagnosisReport> report_from_json(const json& j, const std::string& source) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  auto version = int_field(j, "version", source, "");
  if (!version.ok()) return version.status();
  if (*version != DiagnosisReport::kVersion) {
    return bad(source, "version", absl::StrCat("unsupported value ", *version));
  }
  DiagnosisReport r;
  r.model = j.value("model", json::object());
  if (!r.model.is_object()) return bad(source, "model", "expected an object");
  if (j.contains("data")) {
    const json& d = j["data"];
    if (!d.is_object()) return bad(source, "data", "expected an object");
    for (auto [key, dst] : {std::pair<const char*, int64_t*>{"sequences", &r.sequences},
                            {"tokens", &r.tokens},
                            {"seq_len", &r.seq_len}}) {
      auto v = optional_int(d, key, 0, source, "data.");
      if (!v.ok()) return v.status();
      *dst = *v;
    }
  }
  if (!j.contains("thresholds") || !j["thresholds"].is_object()) {
    return bad(source, "thresholds", "missing or not an object");
  }
  for (auto [key, dst] : {std::pair<const char*, double*>{"dead", &r.thresholds.dead},
                          {"sink", &r.thresholds.sink},
                          {"low_entropy", &r.thresholds.low_entropy}}) {
    auto v = number_field(j["thresholds"], key, source, "thresholds.");
    if (!v.ok()) return v.status();
    *dst = *v;
  }
  if (!j.contains("heads") || !j["heads"].is_array() || j["heads"].empty()) {
    return bad(source, "heads", "missing, not an array, or empty");
  }
  int64_t max_layer = -1, max_head = -1;
  for (size_t i = 0; i < j["heads"].size(); ++i) {
    const json& e = j["heads"][i];
    const std::string where = absl::StrCat("heads[", i, "].");
    if (!e.is_object()) return bad(source, absl::StrCat("heads[", i, "]"), "expected an object");
    HeadSummary h;
    auto layer = int_field(e, "layer", source, where);
    if (!layer.ok()) return layer.status();
    auto head = int_field(e, "head", source, where);
    if (!head.ok()) return head.status();
    if (*layer < 0 || *head < 0) return bad(source, where + "layer", "negative index");
    h.layer = *layer;
    h.head = *head;
    for (auto [key, dst] : {std::pair<const char*, Spread*>{"bos_mass", &h.bos_mass},
                            {"entropy", &h.entropy},
                            {"local_mass", &h.local_mass}}) {
      auto v = number_field(e, key, source, where);
      if (!v.ok()) return v.status();
      dst->mean = *v;
      using Extra = std::tuple<const char*, double, double*>;  // suffix, default, destination
      for (auto [suffix, fallback, out] : {Extra{"_std", 0.0, &dst->std},
                                           Extra{"_min", *v, &dst->min},
                                           Extra{"_max", *v, &dst->max}}) {
        auto extra = optional_number(e, std::string(key) + suffix, fallback, source, where);
        if (!extra.ok()) return extra.status();
        *out = *extra;
      }
    }
    auto slope = optional_number(e, "slope", 0.0, source, where);
    if (!slope.ok()) return slope.status();
    h.slope = *slope;
    max_layer = std::max(max_layer, h.layer);
    max_head = std::max(max_head, h.head);
    r.heads.push_back(h);
  }
  // A full grid has more entries than its largest index; checking that first also keeps the
  // product below from overflowing on hostile indices.
  const int64_t entries = static_cast<int64_t>(r.heads.size());
  if (max_layer >= entries || max_head >= entries) {
    return bad(source, "heads", absl::StrCat(entries, " entries cannot cover layer ", max_layer,
                                             " and head ", max_head));
  }
  r.n_layer = max_layer + 1;
  r.n_head = max_head + 1;
  if (static_cast<int64_t>(r.heads.size()) != r.n_layer * r.n_head) {
    return bad(source, "heads", absl::StrCat(r.heads.size(), " entries do not cover a ", r.n_layer,
                                             " x ", r.n_head, " grid"));
  }
  std::sort(r.heads.begin(), r.heads.end(), [](const HeadSummary& a, const HeadSummary& b) {
    return a.layer != b.layer ? a.layer < b.layer : a.head < b.head;
  });
  for (size_t i = 0; i < r.heads.size(); ++i) {
    if (r.heads[i].layer * r.n_head + r.heads[i].head != static_cast<int64_t>(i)) {
      return bad(source, "heads", absl::StrCat("duplicate entry for layer ", r.heads[i].layer,
                                               " head ", r.heads[i].head));
    }
  }
  classify_report(r);
  return r;
}

absl::StatusOr<DiagnosisReport> load_report(const std::string& path) {
  absl::StatusOr<std::string> text = read_file(path, "report");
  if (!text.ok()) return text.status();
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  return report_from_json(j, path);
}

std::string render_grid(const DiagnosisReport& r) {
  std::string out = "layer  ";
  for (int64_t h = 0; h < r.n_head; ++h) absl::StrAppend(&out, h % 10);
  out += "   (head index mod 10)\n";
  for (int64_t l = 0; l < r.n_layer; ++l) {
    absl::StrAppend(&out, absl::StrFormat("%5d  ", l));
    for (int64_t h = 0; h < r.n_head; ++h) out += head_class_mark(r.at(l, h).cls);
    out += '\n';
  }
  absl::StrAppend(&out, "legend: . HEALTHY  l LOW_ENTROPY  s SINK  D DEAD\n");
  absl::StrAppend(&out, "HEALTHY ", r.counts.healthy, "  LOW_ENTROPY ", r.counts.low_entropy,
                  "  SINK ", r.counts.sink, "  DEAD ", r.counts.dead, "  collapsed ",
                  r.counts.collapsed(), " of ", r.heads.size(), "\n");
  std::string band;
  for (int64_t h : r.band) absl::StrAppend(&band, band.empty() ? "" : ",", h);
  absl::StrAppend(&out, "band (head indices collapsed in > ",
                  static_cast<int>(r.band_threshold * 100), "% of layers): ",
                  band.empty() ? "none" : band, "\n");
  absl::StrAppend(&out, "sink threshold sensitivity: ", r.class_changes_sink_040,
                  " heads change class at 0.4, ", r.class_changes_sink_060, " at 0.6\n");
  return out;
}

std::string render_csv(const DiagnosisReport& r) {
  std::string out =
      "layer,head,slope,bos_mass,bos_mass_std,bos_mass_min,bos_mass_max,entropy,entropy_std,"
      "local_mass,local_mass_std,class\n";
  for (const HeadSummary& h : r.heads) {
    absl::StrAppend(&out, absl::StrFormat("%d,%d,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%s\n",
                                          h.layer, h.head, h.slope, h.bos_mass.mean, h.bos_mass.std,
                                          h.bos_mass.min, h.bos_mass.max, h.entropy.mean,
                                          h.entropy.std, h.local_mass.mean, h.local_mass.std,
                                          head_class_name(h.cls)));
  }
  return out;
}

std::string render_svg(const DiagnosisReport& r, bool scatter) {
  // Layout constants (pixels). Cells are large enough to hold the head's bos_mass as text and,
  // below it, the class letter; the colour bar and the class legend sit under the grid, and
  // kLegendW is the width their longest line needs at font-size 10 (nothing may be clipped:
  // tests/report_render_test.cpp measures every text's box in Chromium).
  // kThresholdLabel leaves room right of the scatter for the threshold lines' labels.
  constexpr int kThresholdLabel = 60;
  constexpr int kCell = 36, kMargin = 40, kScatterW = 320, kScatterH = 240, kGap = 70;
  constexpr int kLegendW = 400, kLegendH = 90, kBarW = 300, kBarH = 12, kBarSteps = 30;
  // Above this bos_mass a cell is dark enough that its text is drawn in white.
  constexpr double kDarkCell = 0.6;
  const int grid_w = static_cast<int>(r.n_head) * kCell;
  const int grid_h = static_cast<int>(r.n_layer) * kCell;
  const int left_w = std::max(grid_w, kLegendW);
  const int width = scatter ? kMargin + left_w + kGap + kScatterW + kMargin + kThresholdLabel
                            : kMargin + left_w + kMargin;
  const int height =
      kMargin + std::max(grid_h + kLegendH, scatter ? kScatterH : 0) + kMargin + 20;
  std::string s = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"heatmap\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"10\">\n",
      width, height, width, height);
  absl::StrAppend(&s, absl::StrFormat(
      "<text x=\"%d\" y=\"16\" font-size=\"12\">bos_mass per head (rows: layers, columns: heads)"
      "</text>\n", kMargin));
  s += "<g class=\"cells\">\n";
  for (const HeadSummary& h : r.heads) {
    const int x = kMargin + static_cast<int>(h.head) * kCell;
    const int y = kMargin + static_cast<int>(h.layer) * kCell;
    const char* ink = h.bos_mass.mean > kDarkCell ? "#fff" : "#000";
    absl::StrAppend(&s, absl::StrFormat(
        "<g><title>layer %d head %d (ALiBi slope %.4g): bos_mass %.3f, entropy %.3f, %s</title>"
        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"#ccc\"/>"
        "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"%s\">%.2f</text>",
        h.layer, h.head, h.slope, h.bos_mass.mean, h.entropy.mean, head_class_name(h.cls), x, y,
        kCell, kCell, heat_colour(h.bos_mass.mean), x + kCell / 2, y + kCell / 2, ink,
        h.bos_mass.mean));
    if (h.cls != HeadClass::kHealthy) {
      absl::StrAppend(&s, absl::StrFormat(
          "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-weight=\"bold\" fill=\"%s\">%c"
          "</text>", x + kCell / 2, y + kCell / 2 + 12, ink, head_class_mark(h.cls)));
    }
    s += "</g>\n";
  }
  s += "</g>\n";
  absl::StrAppend(&s, heatmap_axis_labels(r.n_layer, r.n_head, kMargin, kMargin, kCell));
  // The colour scale (bos_mass 0 .. 1, with the sink and dead thresholds marked) and the classes.
  const int bar_y = kMargin + grid_h + 26;
  s += "<g class=\"legend\">\n";
  for (int i = 0; i < kBarSteps; ++i) {
    const double v = (i + 0.5) / kBarSteps;
    absl::StrAppend(&s, absl::StrFormat(
        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n",
        kMargin + i * kBarW / kBarSteps, bar_y, kBarW / kBarSteps, kBarH, heat_colour(v)));
  }
  absl::StrAppend(&s, absl::StrFormat(
      "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n",
      kMargin, bar_y, kBarW, kBarH));
  const std::pair<const char*, double> ticks[] = {
      {"0", 0.0}, {"sink", r.thresholds.sink}, {"dead", r.thresholds.dead}, {"1", 1.0}};
  // The scale's ends below the bar, the thresholds above it (the dead threshold sits close to 1,
  // so the two would overlap on one line).
  for (const auto& [name, v] : ticks) {
    if (!(v >= 0.0 && v <= 1.0)) continue;
    const double x = kMargin + v * kBarW;
    const bool threshold = v > 0.0 && v < 1.0;
    const char* anchor = v == 0.0 ? "start" : v == 1.0 ? "end" : "middle";
    if (threshold) {
      absl::StrAppend(&s, absl::StrFormat(
          "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#444\"/>"
          "<text x=\"%.1f\" y=\"%d\" text-anchor=\"end\">%s %.2f</text>\n",
          x, bar_y - 3, x, bar_y + kBarH, x + 2, bar_y - 3, name, v));
    } else {
      absl::StrAppend(&s, absl::StrFormat(
          "<text x=\"%.1f\" y=\"%d\" text-anchor=\"%s\">%s</text>\n", x, bar_y + kBarH + 12,
          anchor, name));
    }
  }
  absl::StrAppend(&s, absl::StrFormat(
      "<text x=\"%d\" y=\"%d\">colour and number: bos_mass (mean attention on the first token)"
      "</text>\n<text x=\"%d\" y=\"%d\">letter: class (s SINK, D DEAD, l LOW_ENTROPY; none: "
      "HEALTHY)</text>\n",
      kMargin, bar_y + kBarH + 32, kMargin, bar_y + kBarH + 46));
  s += "</g>\n";
  if (!scatter) return s + "</svg>\n";
  // Scatter: ALiBi slope (log2, x) against bos_mass (y).
  const int sx = kMargin + left_w + kGap, sy = kMargin;
  double lo = 0, hi = 0;
  bool first = true;
  for (const HeadSummary& h : r.heads) {
    if (h.slope <= 0) continue;
    const double v = std::log2(h.slope);
    lo = first ? v : std::min(lo, v);
    hi = first ? v : std::max(hi, v);
    first = false;
  }
  if (hi - lo < 1e-9) hi = lo + 1;
  absl::StrAppend(&s, absl::StrFormat(
      "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n"
      "<text x=\"%d\" y=\"%d\" font-size=\"12\">bos_mass vs ALiBi slope (log2)</text>\n"
      "<text x=\"%d\" y=\"%d\">%.1f</text><text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.1f</text>\n",
      sx, sy, kScatterW, kScatterH, sx, sy - 8, sx, sy + kScatterH + 14, lo, sx + kScatterW,
      sy + kScatterH + 14, hi));
  // y axis: bos_mass ticks every quarter, the x axis title, and the sink and dead thresholds as
  // dashed lines so a point's class can be read off the plot.
  constexpr int kYTicks = 4;
  for (int t = 0; t <= kYTicks; ++t) {
    const double v = static_cast<double>(t) / kYTicks;
    const double y = sy + (1.0 - v) * kScatterH;
    absl::StrAppend(&s, absl::StrFormat(
        "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#888\"/>"
        "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n",
        sx - 4, y, sx, y, sx - 6, y + 3, v));
  }
  absl::StrAppend(&s, absl::StrFormat(
      "<text transform=\"translate(%d,%d) rotate(-90)\" text-anchor=\"middle\">bos_mass"
      "</text>\n<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">log2(ALiBi slope)</text>\n",
      sx - 30, sy + kScatterH / 2, sx + kScatterW / 2, sy + kScatterH + 14));
  const std::pair<const char*, double> threshold_lines[] = {{"sink", r.thresholds.sink},
                                                             {"dead", r.thresholds.dead}};
  for (const auto& [name, v] : threshold_lines) {
    if (!(v >= 0.0 && v <= 1.0)) continue;
    const double y = sy + (1.0 - v) * kScatterH;
    absl::StrAppend(&s, absl::StrFormat(
        "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#b00\" "
        "stroke-dasharray=\"4 3\"/><text x=\"%d\" y=\"%.1f\" fill=\"#b00\">%s %.2f</text>\n",
        sx, y, sx + kScatterW, y, sx + kScatterW + 3, y + 3, name, v));
  }
  for (const HeadSummary& h : r.heads) {
    if (h.slope <= 0) continue;
    const double fx = (std::log2(h.slope) - lo) / (hi - lo);
    const double fy = std::clamp(h.bos_mass.mean, 0.0, 1.0);
    absl::StrAppend(&s, absl::StrFormat(
        "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>layer %d head %d</title>"
        "</circle>\n",
        sx + fx * kScatterW, sy + (1.0 - fy) * kScatterH,
        is_collapsed(h.cls) ? "#b00" : "#36c", h.layer, h.head));
  }
  s += "</svg>\n";
  return s;
}

std::string render_html(const DiagnosisReport& r) {
  std::string name = r.model.is_object() && r.model.contains("name") && r.model["name"].is_string()
                         ? r.model["name"].get<std::string>()
                         : "model";
  std::string html = absl::StrCat(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Head diagnosis: ",
      html_escape(name),
      "</title>\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
      "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>\n",
      "<h1>Head diagnosis: ", html_escape(name), "</h1>\n");
  absl::StrAppend(&html, absl::StrFormat(
      "<p>%d sequences, %d tokens, sequence length %d. Thresholds: dead %.2f, sink %.2f, low "
      "entropy %.2f.</p>\n",
      r.sequences, r.tokens, r.seq_len, r.thresholds.dead, r.thresholds.sink,
      r.thresholds.low_entropy));
  absl::StrAppend(&html, "<table><tr><th>HEALTHY</th><th>LOW_ENTROPY</th><th>SINK</th><th>DEAD</th>"
                         "<th>collapsed</th></tr><tr>",
                  absl::StrFormat("<td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td>",
                                  r.counts.healthy, r.counts.low_entropy, r.counts.sink,
                                  r.counts.dead, r.counts.collapsed()),
                  "</tr></table>\n");
  absl::StrAppend(&html, render_svg(r));
  absl::StrAppend(&html, "<h2>Heads</h2>\n<table><tr><th>layer</th><th>head</th><th>slope</th>"
                         "<th>bos_mass</th><th>std</th><th>entropy</th><th>local_mass</th>"
                         "<th>class</th></tr>\n");
  for (const HeadSummary& h : r.heads) {
    absl::StrAppend(&html, absl::StrFormat(
        "<tr><td>%d</td><td>%d</td><td>%.4g</td><td>%.4f</td><td>%.4f</td><td>%.4f</td>"
        "<td>%.4f</td><td>%s</td></tr>\n",
        h.layer, h.head, h.slope, h.bos_mass.mean, h.bos_mass.std, h.entropy.mean,
        h.local_mass.mean, head_class_name(h.cls)));
  }
  html += "</table>\n</body></html>\n";
  return html;
}

}  // namespace engine
