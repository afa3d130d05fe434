// The HTML pages of `engine diagnose` (report and comparison) opened in a real browser: headless
// Chromium takes a screenshot of each, and the screenshot must be a PNG of the window's size that
// is far from blank. "Far from blank" is judged by compressed size against a control: an empty
// page of the same size compresses to a few kB, while a page with a heatmap, a scatter and tables
// does not; a page that fails to render (a parse error, a broken SVG) looks like the control.
// Skipped when no Chromium binary is found (set ENGINE_CHROMIUM to point at one); the set-up
// script installs Debian's chromium, so CI runs it. scripts/render_reports.sh produces the same
// pages and screenshots for a person to look at.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "model/model_directory.h"
#include "surgery/corpus_scan.h"
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

  std::string chromium_;
  std::filesystem::path dir_;
};

TEST_F(ReportRender, ReportAndComparisonPagesRenderInChromium) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "bloom-h6-l3");
  ASSERT_TRUE(model.ok()) << model.status();
  std::unique_ptr<Backend> backend = make_cpu_backend();
  DiagnoseOptions options;
  options.model_name = "bloom-h6-l3";
  absl::StatusOr<DiagnosisReport> before =
      diagnose_sequences(*model, *backend, fixture_sequences("bloom-h6-l3", "batch"), options);
  ASSERT_TRUE(before.ok()) << before.status();
  absl::StatusOr<DiagnosisReport> after =
      diagnose_sequences(*model, *backend, fixture_sequences("bloom-h6-l3", "right_pad"), options);
  ASSERT_TRUE(after.ok()) << after.status();
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
}

}  // namespace
}  // namespace engine
