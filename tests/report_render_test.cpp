// The HTML pages of `engine diagnose` (report and comparison) opened in a real browser: headless
// Chromium takes a screenshot of each, and the screenshot must be a PNG of the window's size that
// is far from blank. "Far from blank" is judged by compressed size against a control: an empty
// page of the same size compresses to a few kB, while a page with a heatmap, a scatter and tables
// does not; a page that fails to render (a parse error, a broken SVG) looks like the control.
// The pages' layout is checked too: a script added to a copy of each page measures, in the
// browser, every heat map (an <svg class="heatmap">: one cell per head and a legend) and every
// text of every SVG, which must lie wholly inside its SVG (a clipped legend such as "D DEA..."
// fails), and Chromium's --dump-dom returns the findings.
// Skipped when no Chromium binary is found (set ENGINE_CHROMIUM to point at one); the set-up
// script installs Debian's chromium, so CI runs it. scripts/render_reports.sh produces the same
// pages and screenshots for a person to look at.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "model/model_directory.h"
#include "surgery/corpus_scan.h"
#include "surgery/repair_report.h"
#include "surgery/report_compare.h"
#include "tests/fixture_reference.h"

namespace engine {
namespace {

const std::filesystem::path kFixtures = testing_fixtures::kFixtures;
constexpr int kWidth = 1000, kHeight = 800;
// A rendered page must compress to at least this many times the empty control page.
constexpr double kMinSizeRatio = 3.0;
constexpr int kBrowserTimeoutSeconds = 90;

std::string find_chromium() {
  if (const char* env = std::getenv("ENGINE_CHROMIUM"); env != nullptr && *env != '\0') return env;
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
      const std::filesystem::path p = std::filesystem::path(dir) / name;
      if (::access(p.c_str(), X_OK) == 0) return p.string();
    }
  }
  return "";
}

// Real rows of one fixture case, one sequence per row.
std::vector<TokenSequence> fixture_sequences(const std::string& model, const std::string& c) {
  const testing_fixtures::Reference ref(model);
  std::vector<int64_t> shape;
  const std::vector<int32_t> ids = ref.get<int32_t>(c + ".input_ids", &shape);
  const std::vector<int32_t> mask = ref.get<int32_t>(c + ".attention_mask");
  std::vector<TokenSequence> out(shape[0]);
  for (int64_t b = 0; b < shape[0]; ++b) {
    for (int64_t t = 0; t < shape[1]; ++t) {
      if (mask[b * shape[1] + t] != 0) out[b].push_back(ids[b * shape[1] + t]);
    }
  }
  return out;
}

class ReportRender : public ::testing::Test {
 protected:
  void SetUp() override {
    chromium_ = find_chromium();
    if (chromium_.empty()) GTEST_SKIP() << "no Chromium found (set ENGINE_CHROMIUM)";
    dir_ = std::filesystem::temp_directory_path() / absl::StrCat("report_render_", ::getpid());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Screenshot of `html` (written to NAME.html) as NAME.png; returns the PNG's bytes.
  std::string screenshot(const std::string& name, const std::string& html) {
    const std::filesystem::path page = dir_ / (name + ".html");
    const std::filesystem::path png = dir_ / (name + ".png");
    std::ofstream(page, std::ios::binary) << html;
    const std::string cmd = absl::StrCat(
        "timeout ", kBrowserTimeoutSeconds, " ", chromium_,
        " --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run",
        " --user-data-dir=", (dir_ / "profile").string(), " --window-size=", kWidth, ",", kHeight,
        " --screenshot=", png.string(), " file://", page.string(), " > ",
        (dir_ / "browser.log").string(), " 2>&1");
    const int status = std::system(cmd.c_str());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd;
    std::ifstream in(png, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  static void expect_png_of_window_size(const std::string& png) {
    constexpr char kSignature[] = "\x89PNG\r\n\x1a\n";
    ASSERT_GE(png.size(), 24u);
    ASSERT_EQ(png.substr(0, 8), std::string(kSignature, 8));
    // IHDR: width and height, big-endian, at bytes 16 and 20.
    auto be32 = [&](size_t at) {
      return (uint32_t(uint8_t(png[at])) << 24) | (uint32_t(uint8_t(png[at + 1])) << 16) |
             (uint32_t(uint8_t(png[at + 2])) << 8) | uint32_t(uint8_t(png[at + 3]));
    };
    EXPECT_EQ(be32(16), static_cast<uint32_t>(kWidth));
    EXPECT_EQ(be32(20), static_cast<uint32_t>(kHeight));
  }

  // The layout findings of `html` in Chromium (see the file comment): lines "heatmaps N",
  // "legends N" (heat maps with a legend holding text), "fewest_cells N" (over the heat maps),
  // "loss_legends N", and one "clipped: TEXT" per text outside its SVG.
  std::vector<std::string> layout_findings(const std::string& name, const std::string& html) {
    static const char kScript[] = R"JS(<script>
(function() {
  const out = [];
  const svgs = Array.from(document.querySelectorAll('svg'));
  const heat = svgs.filter(s => s.classList.contains('heatmap'));
  out.push('heatmaps ' + heat.length);
  let legends = 0, fewest = heat.length ? 1e9 : 0;
  for (const s of heat) {
    const l = s.querySelector('g.legend');
    if (l && l.querySelectorAll('text').length > 0) legends++;
    const cells = Array.from(s.querySelectorAll('title'))
                      .filter(t => t.textContent.startsWith('layer ') &&
                              t.textContent.includes('bos_mass')).length;
    fewest = Math.min(fewest, cells);
  }
  out.push('legends ' + legends);
  out.push('fewest_cells ' + fewest);
  out.push('loss_legends ' + svgs.filter(s => s.classList.contains('loss') &&
                                              s.querySelector('g.legend text')).length);
  const slack = 0.5;
  for (const s of svgs) {
    const box = s.getBoundingClientRect();
    for (const t of s.querySelectorAll('text')) {
      const b = t.getBoundingClientRect();
      if (b.width === 0 && b.height === 0) continue;
      if (b.left < box.left - slack || b.top < box.top - slack ||
          b.right > box.right + slack || b.bottom > box.bottom + slack) {
        out.push('clipped: ' + t.textContent);
      }
    }
  }
  const pre = document.createElement('pre');
  pre.id = 'layout';
  pre.textContent = '\n' + out.join('\n') + '\n';
  document.body.appendChild(pre);
})();
</script>)JS";
    const std::string::size_type end = html.rfind("</body>");
    const std::string page = end == std::string::npos
                                 ? html + kScript
                                 : html.substr(0, end) + kScript + html.substr(end);
    const std::filesystem::path file = dir_ / (name + "_layout.html");
    const std::filesystem::path dom = dir_ / (name + "_layout.dom");
    std::ofstream(file, std::ios::binary) << page;
    const std::string cmd = absl::StrCat(
        "timeout ", kBrowserTimeoutSeconds, " ", chromium_,
        " --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run",
        " --user-data-dir=", (dir_ / "profile").string(), " --window-size=", kWidth, ",", kHeight,
        " --dump-dom file://", file.string(), " > ", dom.string(), " 2> ",
        (dir_ / "browser.log").string());
    const int status = std::system(cmd.c_str());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd;
    std::ifstream in(dom, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    const std::string out = text.str();
    const std::string::size_type from = out.find("<pre id=\"layout\">");
    EXPECT_NE(from, std::string::npos) << "the layout script did not run: " << out.substr(0, 300);
    std::vector<std::string> lines;
    if (from == std::string::npos) return lines;
    std::stringstream body(out.substr(from, out.find("</pre>", from) - from));
    std::string line;
    while (std::getline(body, line)) {
      if (!line.empty() && line.find("<pre") == std::string::npos) lines.push_back(line);
    }
    return lines;
  }

  // Heat maps and legends present, nothing clipped.
  void expect_whole_heatmaps(const std::vector<std::string>& lines, int heatmaps,
                             int64_t cells, int loss_legends) {
    const auto has = [&](const std::string& want) {
      return std::find(lines.begin(), lines.end(), want) != lines.end();
    };
    std::string all;
    for (const std::string& l : lines) absl::StrAppend(&all, l, "\n");
    EXPECT_TRUE(has(absl::StrCat("heatmaps ", heatmaps))) << all;
    EXPECT_TRUE(has(absl::StrCat("legends ", heatmaps))) << all;
    EXPECT_TRUE(has(absl::StrCat("fewest_cells ", cells))) << all;
    EXPECT_TRUE(has(absl::StrCat("loss_legends ", loss_legends))) << all;
    for (const std::string& l : lines) EXPECT_EQ(l.rfind("clipped", 0), std::string::npos) << l;
  }

  // Two diagnoses of the fixture model bloom-h6-l3 (its "batch" and "right_pad" sequences): the
  // before and after of the comparison and repair pages.
  void diagnose_twice(std::optional<DiagnosisReport>& before,
                      std::optional<DiagnosisReport>& after) {
    absl::StatusOr<BloomModel> model =
        load_model_directory(kFixtures / "models" / "bloom-h6-l3");
    ASSERT_TRUE(model.ok()) << model.status();
    std::unique_ptr<Backend> backend = make_cpu_backend();
    DiagnoseOptions options;
    options.model_name = "bloom-h6-l3";
    absl::StatusOr<DiagnosisReport> a =
        diagnose_sequences(*model, *backend, fixture_sequences("bloom-h6-l3", "batch"), options);
    ASSERT_TRUE(a.ok()) << a.status();
    absl::StatusOr<DiagnosisReport> b = diagnose_sequences(
        *model, *backend, fixture_sequences("bloom-h6-l3", "right_pad"), options);
    ASSERT_TRUE(b.ok()) << b.status();
    before = *std::move(a), after = *std::move(b);
  }

  std::string chromium_;
  std::filesystem::path dir_;
};

TEST_F(ReportRender, ReportAndComparisonPagesRenderInChromium) {
  std::optional<DiagnosisReport> before, after;
  diagnose_twice(before, after);
  if (HasFatalFailure()) return;
  SurgeryPlan plan;
  plan.targets = {{0, 4}, {0, 5}};
  absl::StatusOr<ReportComparison> cmp = compare_reports(*before, *after, &plan);
  ASSERT_TRUE(cmp.ok()) << cmp.status();

  const std::string blank = screenshot(
      "blank", "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body></body></html>\n");
  expect_png_of_window_size(blank);
  const std::string report = screenshot("report", render_html(*before));
  expect_png_of_window_size(report);
  const std::string compare = screenshot("compare", render_comparison_html(*cmp));
  expect_png_of_window_size(compare);
  ASSERT_GT(blank.size(), 0u);
  EXPECT_GT(static_cast<double>(report.size()), kMinSizeRatio * blank.size())
      << "report " << report.size() << " bytes, blank " << blank.size();
  EXPECT_GT(static_cast<double>(compare.size()), kMinSizeRatio * blank.size())
      << "comparison " << compare.size() << " bytes, blank " << blank.size();
  const int64_t heads = before->n_layer * before->n_head;
  expect_whole_heatmaps(layout_findings("report", render_html(*before)), 1, heads, 0);
  expect_whole_heatmaps(layout_findings("compare", render_comparison_html(*cmp)), 1, heads, 0);
}

// The repair report: per pass a heat map before and after and the delta map, each with its
// legend, and a loss curve with its legend; a summary sentence on top; nothing clipped.
TEST_F(ReportRender, RepairReportHeatMapsAndLegendsAreWholeInChromium) {
  std::optional<DiagnosisReport> before, after;
  diagnose_twice(before, after);
  if (HasFatalFailure()) return;
  RepairPassView view;
  view.before = *before, view.after = *after;
  view.plan.targets = {{0, 4}, {0, 5}};
  absl::StatusOr<ReportComparison> cmp = compare_reports(*before, *after, &view.plan);
  ASSERT_TRUE(cmp.ok()) << cmp.status();
  view.comparison = *cmp;
  view.summary.pass = 1;
  view.summary.before = before->counts, view.summary.after = after->counts;
  view.summary.targets = 2;
  view.summary.ppl_before = 9.41, view.summary.ppl_after = 9.02;
  for (int64_t step = 1; step <= 100; ++step) {
    view.curves.loss.emplace_back(step, 3.0 - 0.005 * step + 0.2 * ((step * 7) % 5) / 5.0);
    if (step % 25 == 0) view.curves.eval_nll.emplace_back(step, 2.3 - 0.001 * step);
  }
  RepairReportHeader header;
  header.model = "bloom-h6-l3";
  header.subject_note = "test subject";
  const std::string html = render_repair_html(header, {view});
  EXPECT_NE(html.find("<p class=\"summary\">Pass 1: "), std::string::npos);
  const int64_t heads = before->n_layer * before->n_head;
  expect_whole_heatmaps(layout_findings("repair", html), 3, heads, 1);
  expect_png_of_window_size(screenshot("repair", html));
}

}  // namespace
}  // namespace engine
