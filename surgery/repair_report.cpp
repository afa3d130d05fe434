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
constexpr int kPlotWidth = 700, kPlotHeight = 280;
constexpr int kMarginLeft = 56, kMarginRight = 56, kMarginTop = 30, kMarginBottom = 40;
constexpr int kAxisTicks = 4;
constexpr const char* kLossInk = "#1f77b4";
constexpr const char* kEvalInk = "#d62728";
// Smoothing of the per-step training loss: each point weighs the previous average by this.
constexpr double kEmaDecay = 0.9;

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

// "2-3", "2" or "1, 3" for the layers holding the heads.
std::string layer_span(const std::vector<int64_t>& layers) {
  if (layers.empty()) return "none";
  bool contiguous = true;
  for (size_t i = 1; i < layers.size(); ++i) contiguous &= layers[i] == layers[i - 1] + 1;
  if (layers.size() == 1) return absl::StrCat(layers[0]);
  if (contiguous) return absl::StrCat(layers.front(), "-", layers.back());
  std::string s;
  for (int64_t l : layers) absl::StrAppend(&s, s.empty() ? "" : ", ", l);
  return s;
}

}  // namespace

std::string pass_sentence(const RepairPassView& v) {
  const PassSummary& s = v.summary;
  std::vector<int64_t> layers;
  for (const HeadSummary& h : v.before.heads) {
    if (is_collapsed(h.cls) && (layers.empty() || layers.back() != h.layer)) {
      layers.push_back(h.layer);
    }
  }
  const int64_t found = s.before.collapsed();
  std::string out = absl::StrCat("Pass ", s.pass, ": ", found, " collapsed head",
                                 found == 1 ? "" : "s", " found");
  if (found > 0) absl::StrAppend(&out, " in layer", layers.size() == 1 ? " " : "s ", layer_span(layers));
  if (s.fallback_healthy) absl::StrAppend(&out, " (healthy-column fallback: ", s.targets, " heads re-initialised)");
  absl::StrAppend(&out, "; ", s.after.collapsed(), " left after pass ", s.pass,
                  "; held-out perplexity ", ppl_text(s.ppl_before), " -> ", ppl_text(s.ppl_after),
                  ".");
  return out;
}

std::string render_loss_svg(const TrainingCurves& curves) {
  // Two vertical scales: the training loss on the left (its per-step values and their EMA), the
  // held-out NLL on the right, each fitted to its own range so neither is squashed by the other.
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  double eval_lo = lo, eval_hi = -lo;
  int64_t max_step = 1;
  for (const auto& [step, v] : curves.loss) {
    lo = std::min(lo, v), hi = std::max(hi, v), max_step = std::max(max_step, step);
  }
  for (const auto& [step, v] : curves.eval_nll) {
    eval_lo = std::min(eval_lo, v), eval_hi = std::max(eval_hi, v);
    max_step = std::max(max_step, step);
  }
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"loss\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n",
      kPlotWidth, kPlotHeight, kPlotWidth, kPlotHeight);
  if (!std::isfinite(lo) && !std::isfinite(eval_lo)) {
    return absl::StrCat(svg, "<text x=\"10\" y=\"20\">no training steps recorded</text></svg>\n");
  }
  if (!std::isfinite(lo)) lo = eval_lo, hi = eval_hi;
  if (!std::isfinite(eval_lo)) eval_lo = lo, eval_hi = hi;
  // A flat curve (or a single evaluation) still needs a non-empty axis: pad it symmetrically.
  auto widen = [](double& a, double& b) {
    const double pad = std::max(0.05 * (b - a), 0.01 * std::max(1.0, std::abs(b)));
    a -= pad, b += pad;
  };
  widen(lo, hi);
  widen(eval_lo, eval_hi);
  const double w = kPlotWidth - kMarginLeft - kMarginRight;
  const double h = kPlotHeight - kMarginTop - kMarginBottom;
  auto x_of = [&](int64_t step) { return kMarginLeft + w * static_cast<double>(step) / max_step; };
  auto y_of = [&](double v) { return kMarginTop + h * (hi - v) / (hi - lo); };
  auto y_eval = [&](double v) { return kMarginTop + h * (eval_hi - v) / (eval_hi - eval_lo); };
  absl::StrAppendFormat(&svg,
                        "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
                        "stroke=\"#999\"/>\n",
                        kMarginLeft, kMarginTop, w, h);
  for (int i = 0; i <= kAxisTicks; ++i) {
    const double f = static_cast<double>(i) / kAxisTicks;
    const double v = lo + (hi - lo) * f, ev = eval_lo + (eval_hi - eval_lo) * f;
    absl::StrAppendFormat(&svg,
                          "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"%s\">%.3f</text>"
                          "<text x=\"%d\" y=\"%.1f\" fill=\"%s\">%.3f</text>\n",
                          kMarginLeft - 4, y_of(v) + 4, kLossInk, v, kPlotWidth - kMarginRight + 4,
                          y_eval(ev) + 4, kEvalInk, ev);
    const int64_t step = max_step * i / kAxisTicks;
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n",
                          x_of(step), kPlotHeight - kMarginBottom + 14, step);
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">optimizer step</text>\n",
                        kMarginLeft + w / 2, kPlotHeight - 6);
  if (!curves.loss.empty()) {
    svg += absl::StrFormat("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1\" "
                           "stroke-opacity=\"0.35\" points=\"", kLossInk);
    for (const auto& [step, v] : curves.loss) {
      absl::StrAppendFormat(&svg, "%.1f,%.1f ", x_of(step), y_of(v));
    }
    svg += "\"/>\n";
    // Exponential moving average with bias correction (as TensorBoard's smoothing), so the
    // first points are not pulled towards zero.
    svg += absl::StrFormat("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"",
                           kLossInk);
    double ema = 0.0, weight = 0.0;
    for (const auto& [step, v] : curves.loss) {
      ema = kEmaDecay * ema + (1.0 - kEmaDecay) * v;
      weight = kEmaDecay * weight + (1.0 - kEmaDecay);
      absl::StrAppendFormat(&svg, "%.1f,%.1f ", x_of(step), y_of(ema / weight));
    }
    svg += "\"/>\n";
  }
  if (curves.eval_nll.size() > 1) {
    svg += absl::StrFormat("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1\" "
                           "stroke-dasharray=\"4 3\" points=\"", kEvalInk);
    for (const auto& [step, v] : curves.eval_nll) {
      absl::StrAppendFormat(&svg, "%.1f,%.1f ", x_of(step), y_eval(v));
    }
    svg += "\"/>\n";
  }
  for (const auto& [step, v] : curves.eval_nll) {
    absl::StrAppendFormat(&svg,
                          "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\">"
                          "<title>step %d: held-out NLL %.4f (perplexity %.3f)</title></circle>\n",
                          x_of(step), y_eval(v), kEvalInk, step, v, std::exp(v));
  }
  absl::StrAppendFormat(
      &svg,
      "<g class=\"legend\"><text x=\"%d\" y=\"%d\" fill=\"%s\">training loss per step (faint) "
      "and its EMA (%.2f), left scale</text><text x=\"%d\" y=\"%d\" text-anchor=\"end\" "
      "fill=\"%s\">held-out NLL, right scale</text></g>\n",
      kMarginLeft, kMarginTop - 8, kLossInk, kEmaDecay, kPlotWidth - kMarginRight, kMarginTop - 8,
      kEvalInk);
  return svg + "</svg>\n";
}

std::string render_repair_html(const RepairReportHeader& header,
                               const std::vector<RepairPassView>& passes) {
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<title>Repair report</title>\n<style>"
      "body{font-family:sans-serif;margin:1.5em;max-width:1200px}"
      "table{border-collapse:collapse;margin:0.5em 0}"
      "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
      "th{background:#eee}td.l{text-align:left}"
      "pre{background:#f4f4f4;padding:6px;white-space:pre-wrap}"
      ".summary{font-size:1.15em;font-weight:bold}"
      ".subject{border:2px solid #c60;background:#fff4e6;padding:6px 10px}"
      ".pair{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}"
      "</style></head><body>\n<h1>Repair report</h1>\n";
  for (const RepairPassView& v : passes) {
    absl::StrAppend(&html, "<p class=\"summary\">", html_escape(pass_sentence(v)), "</p>\n");
  }
  if (!header.subject_note.empty()) {
    absl::StrAppend(&html, "<p class=\"subject\">", html_escape(header.subject_note), "</p>\n");
  }
  absl::StrAppend(&html, "<p>Model: <code>", html_escape(header.model), "</code><br>Data: ",
                  html_escape(header.data), "<br>Engine version: ", html_escape(header.version),
                  header.device.empty() ? "" : "<br>Device: ", html_escape(header.device),
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
    absl::StrAppend(&html, "<div class=\"pair\"><div><h3>Before</h3>\n", render_svg(v.before, false),
                    "</div><div><h3>After</h3>\n", render_svg(v.after, false),
                    "</div></div>\n<h3>Change of bos_mass (after - before)</h3>\n",
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
