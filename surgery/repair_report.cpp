// The repair report page; contract in surgery/repair_report.h.
#include "surgery/repair_report.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "surgery/html.h"

namespace engine {
namespace {

// Loss plot geometry in SVG user units.
constexpr int kPlotWidth = 640, kPlotHeight = 260;
constexpr int kMarginLeft = 56, kMarginRight = 16, kMarginTop = 16, kMarginBottom = 40;
constexpr int kAxisTicks = 4;

std::string ppl_text(const std::optional<double>& p) {
  return p.has_value() ? absl::StrFormat("%.3f", *p) : std::string("-");
}

std::string counts_cells(const HeadCounts& c) {
  return absl::StrCat("<td>", c.healthy, "</td><td>", c.low_entropy, "</td><td>", c.sink,
                      "</td><td>", c.dead, "</td><td>", c.collapsed(), "</td>");
}

std::string head_list(const std::vector<HeadTarget>& heads) {
  if (heads.empty()) return "none";
  std::string s;
  for (const HeadTarget& t : heads) absl::StrAppend(&s, s.empty() ? "" : ", ", t.layer, ":", t.head);
  return s;
}

}  // namespace

std::string render_loss_svg(const TrainingCurves& curves) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  int64_t max_step = 1;
  for (const auto& [step, v] : curves.loss) {
    lo = std::min(lo, v), hi = std::max(hi, v), max_step = std::max(max_step, step);
  }
  for (const auto& [step, v] : curves.eval_nll) {
    lo = std::min(lo, v), hi = std::max(hi, v), max_step = std::max(max_step, step);
  }
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n",
      kPlotWidth, kPlotHeight, kPlotWidth, kPlotHeight);
  if (!std::isfinite(lo)) {
    return absl::StrCat(svg, "<text x=\"10\" y=\"20\">no training steps recorded</text></svg>\n");
  }
  if (hi - lo < 1e-9) hi = lo + 1.0;  // a flat curve still needs a non-empty axis
  const double w = kPlotWidth - kMarginLeft - kMarginRight;
  const double h = kPlotHeight - kMarginTop - kMarginBottom;
  auto x_of = [&](int64_t step) { return kMarginLeft + w * static_cast<double>(step) / max_step; };
  auto y_of = [&](double v) { return kMarginTop + h * (hi - v) / (hi - lo); };
  absl::StrAppendFormat(&svg,
                        "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
                        "stroke=\"#999\"/>\n",
                        kMarginLeft, kMarginTop, w, h);
  for (int i = 0; i <= kAxisTicks; ++i) {
    const double v = lo + (hi - lo) * i / kAxisTicks;
    absl::StrAppendFormat(&svg, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.3f</text>\n",
                          kMarginLeft - 4, y_of(v) + 4, v);
    const int64_t step = max_step * i / kAxisTicks;
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n",
                          x_of(step), kPlotHeight - kMarginBottom + 14, step);
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">optimizer step</text>\n",
                        kMarginLeft + w / 2, kPlotHeight - 6);
  if (!curves.loss.empty()) {
    svg += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
    for (const auto& [step, v] : curves.loss) {
      absl::StrAppendFormat(&svg, "%.1f,%.1f ", x_of(step), y_of(v));
    }
    svg += "\"/>\n";
  }
  for (const auto& [step, v] : curves.eval_nll) {
    absl::StrAppendFormat(&svg,
                          "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#d62728\">"
                          "<title>step %d: held-out NLL %.4f (perplexity %.3f)</title></circle>\n",
                          x_of(step), y_of(v), step, v, std::exp(v));
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%d\" y=\"%d\" fill=\"#1f77b4\">training loss (nats/token)</text>"
                        "<text x=\"%d\" y=\"%d\" fill=\"#d62728\">held-out NLL</text>\n",
                        kMarginLeft + 8, kMarginTop + 14, kMarginLeft + 200, kMarginTop + 14);
  return svg + "</svg>\n";
}

std::string render_repair_html(const RepairReportHeader& header,
                               const std::vector<RepairPassView>& passes) {
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<title>Repair report</title>\n<style>"
      "body{font-family:sans-serif;margin:1.5em;max-width:1100px}"
      "table{border-collapse:collapse;margin:0.5em 0}"
      "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
      "th{background:#eee}td.l{text-align:left}"
      "pre{background:#f4f4f4;padding:6px;white-space:pre-wrap}"
      "</style></head><body>\n<h1>Repair report</h1>\n";
  absl::StrAppend(&html, "<p>Model: <code>", html_escape(header.model), "</code><br>Data: ",
                  html_escape(header.data), "<br>Engine version: ", html_escape(header.version),
                  "<br>Outcome: ", html_escape(header.stop_reason), "</p>\n");
  html += "<h2>Commands</h2>\n";
  for (const std::string& c : header.commands) absl::StrAppend(&html, "<pre>", html_escape(c), "</pre>\n");

  html +=
      "<h2>Head classes and held-out perplexity per pass</h2>\n<table><tr><th>pass</th>"
      "<th>when</th><th>HEALTHY</th><th>LOW_ENTROPY</th><th>SINK</th><th>DEAD</th>"
      "<th>collapsed</th><th>held-out perplexity</th><th>targets</th><th>steps</th>"
      "<th>frozen heads drifting</th><th>of them below the lowest target layer</th></tr>\n";
  for (const RepairPassView& v : passes) {
    const PassSummary& s = v.summary;
    absl::StrAppend(&html, "<tr><td>", s.pass, "</td><td class=\"l\">before</td>",
                    counts_cells(s.before), "<td>", ppl_text(s.ppl_before), "</td><td>", s.targets,
                    "</td><td>", s.steps, "</td><td></td><td></td></tr>\n");
    absl::StrAppend(&html, "<tr><td>", s.pass, "</td><td class=\"l\">after (", s.chosen_checkpoint,
                    ")</td>", counts_cells(s.after), "<td>", ppl_text(s.ppl_after),
                    "</td><td></td><td></td><td>", s.drift_outside, "</td><td>", s.drift_below,
                    "</td></tr>\n");
  }
  html += "</table>\n";
  absl::StrAppendFormat(
      &html,
      "<p>A head drifts when its bos_mass moves by more than %.2f. Frozen heads are every head "
      "that is not a target of that pass; drift below the lowest target layer is impossible "
      "unless something is wrong (nothing upstream changed).</p>\n",
      header.drift_threshold);
  if (passes.empty()) html += "<p>No pass trained.</p>\n";

  for (const RepairPassView& v : passes) {
    const PassSummary& s = v.summary;
    absl::StrAppend(&html, "<h2>Pass ", s.pass, "</h2>\n<p>Plan: ", html_escape(s.plan_note),
                    s.fallback_healthy ? " <strong>(healthy-column fallback)</strong>" : "",
                    "<br>Targets (layer:head): ", head_list(v.plan.targets), "</p>\n");
    absl::StrAppend(&html, "<h3>Before</h3>\n", render_svg(v.before), "<h3>After</h3>\n",
                    render_svg(v.after), "<h3>Change of bos_mass (after - before)</h3>\n",
                    render_delta_svg(v.comparison));
    absl::StrAppend(&html, "<p>Heads whose class changed: ", head_list(v.comparison.class_changes),
                    "<br>Drifting targets: ", head_list(v.comparison.drift_inside),
                    "<br>Drifting frozen heads: ", head_list(v.comparison.drift_outside),
                    "</p>\n<h3>Loss</h3>\n", render_loss_svg(v.curves));
  }
  html += "</body></html>\n";
  return html;
}

}  // namespace engine
