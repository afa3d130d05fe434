// Report comparison: deltas, class changes, drift, and their renderings.
#include "surgery/report_compare.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "surgery/html.h"

namespace engine {
namespace {

using json = nlohmann::json;

// Colour of a delta in [-1, 1]: white at 0, towards blue as bos_mass falls (a head letting go of
// position 0) and towards red as it rises (a head collapsing).
std::string delta_colour(double delta) {
  constexpr int kBlue[3] = {33, 102, 172};
  constexpr int kRed[3] = {178, 24, 43};
  const double v = std::clamp(delta, -1.0, 1.0);
  const int* end = v < 0 ? kBlue : kRed;
  const double f = std::abs(v);
  int rgb[3];
  for (int i = 0; i < 3; ++i) rgb[i] = static_cast<int>(std::lround(255 + (end[i] - 255) * f));
  return absl::StrFormat("#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

json head_list(const std::vector<HeadTarget>& heads) {
  json out = json::array();
  for (const HeadTarget& h : heads) out.push_back({{"layer", h.layer}, {"head", h.head}});
  return out;
}

json counts_json(const HeadCounts& c) {
  return json{{"HEALTHY", c.healthy}, {"LOW_ENTROPY", c.low_entropy}, {"SINK", c.sink},
              {"DEAD", c.dead},       {"collapsed", c.collapsed()}};
}

std::string head_list_text(const std::vector<HeadTarget>& heads) {
  if (heads.empty()) return "none";
  std::string out;
  for (const HeadTarget& h : heads) absl::StrAppend(&out, out.empty() ? "" : " ", h.layer, ":", h.head);
  return out;
}


}  // namespace

absl::StatusOr<ReportComparison> compare_reports(const DiagnosisReport& before,
                                                 const DiagnosisReport& after,
                                                 const SurgeryPlan* plan, double drift_threshold,
                                                 const std::string& before_name,
                                                 const std::string& after_name,
                                                 const std::string& plan_name) {
  if (before.n_layer != after.n_layer || before.n_head != after.n_head) {
    return absl::InvalidArgumentError(absl::StrCat(
        after_name, ": covers ", after.n_layer, " layers x ", after.n_head, " heads but ",
        before_name, " covers ", before.n_layer, " x ", before.n_head, ": not the same model shape"));
  }
  if (!(drift_threshold >= 0) || !std::isfinite(drift_threshold)) {
    return absl::InvalidArgumentError(
        absl::StrCat("drift threshold must be finite and >= 0, got ", drift_threshold));
  }
  ReportComparison c;
  c.n_layer = before.n_layer;
  c.n_head = before.n_head;
  c.drift_threshold = drift_threshold;
  c.thresholds_match = before.thresholds.dead == after.thresholds.dead &&
                       before.thresholds.sink == after.thresholds.sink &&
                       before.thresholds.low_entropy == after.thresholds.low_entropy;
  c.before = before.counts;
  c.after = after.counts;
  std::set<HeadTarget> targets;
  if (plan != nullptr) {
    if (absl::Status s = validate_plan(*plan, HeadGeometry{c.n_layer, c.n_head, 1}, plan_name);
        !s.ok()) {
      return s;
    }
    c.has_plan = true;
    targets.insert(plan->targets.begin(), plan->targets.end());
    c.plan_targets = static_cast<int64_t>(targets.size());
    c.lowest_target_layer = targets.empty() ? -1 : targets.begin()->layer;
  }
  for (int64_t l = 0; l < c.n_layer; ++l) {
    for (int64_t h = 0; h < c.n_head; ++h) {
      const HeadSummary& b = before.at(l, h);
      const HeadSummary& a = after.at(l, h);
      HeadComparison hc;
      hc.layer = l;
      hc.head = h;
      hc.target = targets.count(HeadTarget{l, h}) > 0;
      hc.bos_before = b.bos_mass.mean;
      hc.bos_after = a.bos_mass.mean;
      hc.entropy_before = b.entropy.mean;
      hc.entropy_after = a.entropy.mean;
      hc.local_before = b.local_mass.mean;
      hc.local_after = a.local_mass.mean;
      hc.class_before = b.cls;
      hc.class_after = a.cls;
      hc.drifted = head_drifted(hc.bos_before, hc.bos_after, drift_threshold);
      const HeadTarget id{l, h};
      if (hc.class_changed()) c.class_changes.push_back(id);
      if (hc.drifted) {
        if (hc.target) {
          c.drift_inside.push_back(id);
        } else {
          c.drift_outside.push_back(id);
          if (c.has_plan && l < c.lowest_target_layer) c.drift_below_lowest_target_layer.push_back(id);
        }
      }
      c.heads.push_back(hc);
    }
  }
  return c;
}

json comparison_to_json(const ReportComparison& c) {
  json heads = json::array();
  for (const HeadComparison& h : c.heads) {
    heads.push_back({{"layer", h.layer},
                     {"head", h.head},
                     {"target", h.target},
                     {"bos_mass_before", h.bos_before},
                     {"bos_mass_after", h.bos_after},
                     {"delta_bos_mass", h.delta_bos()},
                     {"entropy_before", h.entropy_before},
                     {"entropy_after", h.entropy_after},
                     {"delta_entropy", h.delta_entropy()},
                     {"local_mass_before", h.local_before},
                     {"local_mass_after", h.local_after},
                     {"delta_local_mass", h.delta_local()},
                     {"class_before", head_class_name(h.class_before)},
                     {"class_after", head_class_name(h.class_after)},
                     {"drifted", h.drifted}});
  }
  json drift = {{"threshold", c.drift_threshold},
                {"inside_targets", head_list(c.drift_inside)},
                {"outside_targets", head_list(c.drift_outside)}};
  json plan = nullptr;
  if (c.has_plan) {
    plan = {{"targets", c.plan_targets}, {"lowest_target_layer", c.lowest_target_layer}};
    drift["below_lowest_target_layer"] = head_list(c.drift_below_lowest_target_layer);
  }
  return json{{"version", 1},
              {"n_layer", c.n_layer},
              {"n_head", c.n_head},
              {"thresholds_match", c.thresholds_match},
              {"plan", plan},
              {"counts_before", counts_json(c.before)},
              {"counts_after", counts_json(c.after)},
              {"class_changes", head_list(c.class_changes)},
              {"drift", drift},
              {"heads", heads}};
}

std::string render_comparison_text(const ReportComparison& c) {
  std::string out;
  if (!c.thresholds_match) {
    out += "warning: the two reports used different thresholds; class changes mix both effects\n";
  }
  absl::StrAppend(&out, absl::StrFormat("%-12s %8s %8s\n", "class", "before", "after"));
  const std::pair<const char*, std::pair<int64_t, int64_t>> rows[] = {
      {"HEALTHY", {c.before.healthy, c.after.healthy}},
      {"LOW_ENTROPY", {c.before.low_entropy, c.after.low_entropy}},
      {"SINK", {c.before.sink, c.after.sink}},
      {"DEAD", {c.before.dead, c.after.dead}},
      {"collapsed", {c.before.collapsed(), c.after.collapsed()}}};
  for (const auto& [name, v] : rows) {
    absl::StrAppend(&out, absl::StrFormat("%-12s %8d %8d\n", name, v.first, v.second));
  }
  absl::StrAppend(&out, "class changes (", c.class_changes.size(), "):");
  if (c.class_changes.empty()) out += " none";
  for (const HeadTarget& t : c.class_changes) {
    const HeadComparison& h = c.at(t.layer, t.head);
    absl::StrAppend(&out, absl::StrFormat(" %d:%d %s->%s", h.layer, h.head,
                                          head_class_name(h.class_before),
                                          head_class_name(h.class_after)));
  }
  out += "\n";
  if (c.has_plan) {
    absl::StrAppend(&out, absl::StrFormat(
        "drift (|delta bos_mass| > %.3g), plan with %d targets:\n", c.drift_threshold,
        c.plan_targets));
    absl::StrAppend(&out, "  targets (re-initialised) ", c.drift_inside.size(), ": ",
                    head_list_text(c.drift_inside), "\n");
    absl::StrAppend(&out, "  frozen heads ", c.drift_outside.size(), ": ",
                    head_list_text(c.drift_outside), "\n");
    absl::StrAppend(&out, "  frozen heads below the lowest target layer (", c.lowest_target_layer,
                    ", expected none) ", c.drift_below_lowest_target_layer.size(), ": ",
                    head_list_text(c.drift_below_lowest_target_layer), "\n");
  } else {
    absl::StrAppend(&out, absl::StrFormat("drift (|delta bos_mass| > %.3g), no plan: ",
                                          c.drift_threshold),
                    c.drift_outside.size(), ": ", head_list_text(c.drift_outside), "\n");
  }
  return out;
}

std::string render_comparison_csv(const ReportComparison& c) {
  std::string out =
      "layer,head,target,bos_mass_before,bos_mass_after,delta_bos_mass,entropy_before,"
      "entropy_after,delta_entropy,local_mass_before,local_mass_after,delta_local_mass,"
      "class_before,class_after,drifted\n";
  for (const HeadComparison& h : c.heads) {
    absl::StrAppend(&out, absl::StrFormat(
        "%d,%d,%d,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%s,%s,%d\n", h.layer, h.head,
        h.target ? 1 : 0, h.bos_before, h.bos_after, h.delta_bos(), h.entropy_before,
        h.entropy_after, h.delta_entropy(), h.local_before, h.local_after, h.delta_local(),
        head_class_name(h.class_before), head_class_name(h.class_after), h.drifted ? 1 : 0));
  }
  return out;
}

std::string render_delta_svg(const ReportComparison& c) {
  // Layout (pixels): heatmap cells, margins for the axis labels, the colour bar below.
  // Cells hold the delta as text; kLegendW is the width the longest legend line needs at
  // font-size 10 (nothing may be clipped: tests/report_render_test.cpp measures it in Chromium).
  constexpr int kCell = 36, kLeft = 44, kTop = 44, kRight = 20, kLegendH = 98;
  constexpr int kBarW = 200, kBarH = 12, kBarSteps = 20, kLegendW = 440;
  const int grid_w = static_cast<int>(c.n_head) * kCell;
  const int grid_h = static_cast<int>(c.n_layer) * kCell;
  const int width = std::max(kLeft + grid_w + kRight, kLeft + kLegendW + kRight);
  const int height = kTop + grid_h + kLegendH;
  std::string s = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"heatmap\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"10\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%d\" y=\"16\" font-size=\"12\">delta bos_mass per head (after - before; rows: "
      "layers, columns: heads)</text>\n",
      width, height, width, height, kLeft);
  for (const HeadComparison& h : c.heads) {
    const int x = kLeft + static_cast<int>(h.head) * kCell;
    const int y = kTop + static_cast<int>(h.layer) * kCell;
    absl::StrAppend(&s, absl::StrFormat(
        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"#ccc\">"
        "<title>layer %d head %d%s: bos_mass %.3f -> %.3f (%+.3f), %s -> %s</title></rect>\n",
        x, y, kCell, kCell, delta_colour(h.delta_bos()), h.layer, h.head,
        h.target ? " (target)" : "", h.bos_before, h.bos_after, h.delta_bos(),
        head_class_name(h.class_before), head_class_name(h.class_after)));
    // The delta as text, left out where it rounds to zero so real changes stand out.
    if (std::abs(h.delta_bos()) >= 0.005) {
      absl::StrAppend(&s, absl::StrFormat(
          "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"9\" fill=\"%s\">%+.2f"
          "</text>\n", x + kCell / 2, y + 12, std::abs(h.delta_bos()) > 0.6 ? "#fff" : "#000",
          h.delta_bos()));
    }
  }
  // Outlines drawn after every cell so neighbours do not paint over them.
  for (const HeadComparison& h : c.heads) {
    const int x = kLeft + static_cast<int>(h.head) * kCell;
    const int y = kTop + static_cast<int>(h.layer) * kCell;
    if (h.target) {
      absl::StrAppend(&s, absl::StrFormat(
          "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#000\" "
          "stroke-width=\"2\"/>\n", x + 1, y + 1, kCell - 2, kCell - 2));
    } else if (h.drifted) {
      absl::StrAppend(&s, absl::StrFormat(
          "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#e08000\" "
          "stroke-width=\"2\" stroke-dasharray=\"3,2\"/>\n", x + 1, y + 1, kCell - 2, kCell - 2));
    }
    if (h.class_changed()) {
      absl::StrAppend(&s, absl::StrFormat(
          "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%c</text>\n", x + kCell / 2,
          y + kCell - 6, head_class_mark(h.class_after)));
    }
  }
  absl::StrAppend(&s, heatmap_axis_labels(c.n_layer, c.n_head, kLeft, kTop, kCell));
  // Colour bar from -1 to +1 and the legend of the marks.
  const int bar_y = kTop + grid_h + 16;
  s += "<g class=\"legend\">\n";
  for (int i = 0; i < kBarSteps; ++i) {
    const double v = -1.0 + (2.0 * i + 1.0) / kBarSteps;
    absl::StrAppend(&s, absl::StrFormat(
        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n",
        kLeft + i * kBarW / kBarSteps, bar_y, kBarW / kBarSteps, kBarH, delta_colour(v)));
  }
  absl::StrAppend(&s, absl::StrFormat(
      "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n"
      "<text x=\"%d\" y=\"%d\">-1</text><text x=\"%d\" y=\"%d\" text-anchor=\"middle\">0</text>"
      "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">+1</text>\n"
      "<text x=\"%d\" y=\"%d\">black box: plan target; dashed orange: frozen head that drifted "
      "(|delta| &gt; %.3g)</text>\n"
      "<text x=\"%d\" y=\"%d\">letter: the new class of a head whose class changed</text>\n"
      "<text x=\"%d\" y=\"%d\">(. HEALTHY, l LOW_ENTROPY, s SINK, D DEAD)</text>\n",
      kLeft, bar_y, kBarW, kBarH, kLeft, bar_y + kBarH + 12, kLeft + kBarW / 2, bar_y + kBarH + 12,
      kLeft + kBarW, bar_y + kBarH + 12, kLeft, bar_y + kBarH + 30, c.drift_threshold, kLeft,
      bar_y + kBarH + 44, kLeft, bar_y + kBarH + 58));
  s += "</g>\n</svg>\n";
  return s;
}

std::string render_comparison_html(const ReportComparison& c) {
  std::string html =
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Head diagnosis: comparison"
      "</title>\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
      "margin-bottom:1em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
      ".warn{color:#a00}</style></head><body>\n<h1>Head diagnosis: before and after</h1>\n";
  if (!c.thresholds_match) {
    html += "<p class=\"warn\">The two reports used different thresholds; class changes mix both "
            "effects.</p>\n";
  }
  absl::StrAppend(&html, "<table><tr><th>class</th><th>before</th><th>after</th></tr>\n");
  const std::pair<const char*, std::pair<int64_t, int64_t>> rows[] = {
      {"HEALTHY", {c.before.healthy, c.after.healthy}},
      {"LOW_ENTROPY", {c.before.low_entropy, c.after.low_entropy}},
      {"SINK", {c.before.sink, c.after.sink}},
      {"DEAD", {c.before.dead, c.after.dead}},
      {"collapsed", {c.before.collapsed(), c.after.collapsed()}}};
  for (const auto& [name, v] : rows) {
    absl::StrAppend(&html, absl::StrFormat("<tr><th>%s</th><td>%d</td><td>%d</td></tr>\n", name,
                                           v.first, v.second));
  }
  html += "</table>\n";
  if (c.has_plan) {
    absl::StrAppend(&html, absl::StrFormat(
        "<p>Drift (|delta bos_mass| &gt; %.3g), plan of %d targets: targets that moved %d; "
        "frozen heads that drifted %d, of which below the lowest target layer (%d, expected "
        "none) %d.</p>\n",
        c.drift_threshold, c.plan_targets, c.drift_inside.size(), c.drift_outside.size(),
        c.lowest_target_layer, c.drift_below_lowest_target_layer.size()));
  } else {
    absl::StrAppend(&html, absl::StrFormat("<p>Drift (|delta bos_mass| &gt; %.3g): %d heads.</p>\n",
                                           c.drift_threshold, c.drift_outside.size()));
  }
  html += render_delta_svg(c);
  html += "<h2>Heads that changed class or drifted</h2>\n<table><tr><th>layer</th><th>head</th>"
          "<th>target</th><th>bos_mass before</th><th>after</th><th>delta</th><th>class before"
          "</th><th>class after</th></tr>\n";
  for (const HeadComparison& h : c.heads) {
    if (!h.class_changed() && !h.drifted) continue;
    absl::StrAppend(&html, absl::StrFormat(
        "<tr><td>%d</td><td>%d</td><td>%s</td><td>%.4f</td><td>%.4f</td><td>%+.4f</td>"
        "<td>%s</td><td>%s</td></tr>\n",
        h.layer, h.head, h.target ? "yes" : "", h.bos_before, h.bos_after, h.delta_bos(),
        html_escape(head_class_name(h.class_before)), html_escape(head_class_name(h.class_after))));
  }
  html += "</table>\n</body></html>\n";
  return html;
}

}  // namespace engine
