// Report comparison (surgery/report_compare.h, `engine diagnose --compare`) on hand-made reports
// whose deltas, class changes and drift are known by construction.
#include "surgery/report_compare.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace engine {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

constexpr int64_t kLayers = 3, kHeads = 4;
constexpr double kEntropy = 2.0;  // every head: high entropy, so only bos_mass decides the class

// A 3 x 4 report with these bos_mass means (L, H), as report.json v1 would hold it.
DiagnosisReport make_report(const std::vector<double>& bos, Thresholds t = {}) {
  json heads = json::array();
  for (int64_t l = 0; l < kLayers; ++l) {
    for (int64_t h = 0; h < kHeads; ++h) {
      heads.push_back({{"layer", l}, {"head", h}, {"bos_mass", bos[l * kHeads + h]},
                       {"entropy", kEntropy}, {"local_mass", 0.25}});
    }
  }
  const json j = {{"version", 1},
                  {"thresholds", {{"dead", t.dead}, {"sink", t.sink}, {"low_entropy", t.low_entropy}}},
                  {"heads", heads}};
  absl::StatusOr<DiagnosisReport> r = report_from_json(j, "crafted");
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

const std::vector<double> kBefore = {0.10, 0.20, 0.30, 0.98,   // layer 0: one DEAD
                                     0.10, 0.20, 0.70, 0.30,   // layer 1: one SINK
                                     0.10, 0.20, 0.30, 0.99};  // layer 2: one DEAD
// Targets (1, 2) and (2, 3) recover; (0, 2) and (2, 1) drift by 0.06 without changing class;
// (2, 0) drifts into SINK; (1, 0) moves by 0.04, under the drift threshold.
const std::vector<double> kAfter = {0.10, 0.20, 0.36, 0.98,
                                    0.14, 0.20, 0.20, 0.30,
                                    0.55, 0.26, 0.30, 0.40};

SurgeryPlan two_target_plan() {
  SurgeryPlan p;
  p.targets = {{1, 2}, {2, 3}};
  return p;
}

using Heads = std::vector<HeadTarget>;

TEST(CompareReports, DeltasClassChangesAndDriftWithAPlan) {
  const SurgeryPlan plan = two_target_plan();
  absl::StatusOr<ReportComparison> c = compare_reports(make_report(kBefore), make_report(kAfter), &plan);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->has_plan);
  EXPECT_TRUE(c->thresholds_match);
  EXPECT_EQ(c->plan_targets, 2);
  EXPECT_EQ(c->lowest_target_layer, 1);
  for (int64_t l = 0; l < kLayers; ++l) {
    for (int64_t h = 0; h < kHeads; ++h) {
      const HeadComparison& hc = c->at(l, h);
      EXPECT_EQ(hc.layer, l);
      EXPECT_EQ(hc.head, h);
      EXPECT_NEAR(hc.delta_bos(), kAfter[l * kHeads + h] - kBefore[l * kHeads + h], 1e-15);
      EXPECT_EQ(hc.delta_entropy(), 0.0);
    }
  }
  EXPECT_EQ(c->at(1, 2).class_before, HeadClass::kSink);
  EXPECT_EQ(c->at(1, 2).class_after, HeadClass::kHealthy);
  EXPECT_TRUE(c->at(1, 2).target);
  EXPECT_FALSE(c->at(1, 3).target);
  EXPECT_EQ(c->class_changes, (Heads{{1, 2}, {2, 0}, {2, 3}}));
  EXPECT_EQ(c->drift_inside, (Heads{{1, 2}, {2, 3}}));
  EXPECT_EQ(c->drift_outside, (Heads{{0, 2}, {2, 0}, {2, 1}}));
  EXPECT_EQ(c->drift_below_lowest_target_layer, (Heads{{0, 2}}));
  EXPECT_FALSE(c->at(1, 0).drifted);  // 0.04
  EXPECT_EQ(c->before.collapsed(), 3);
  EXPECT_EQ(c->after.collapsed(), 2);  // (0, 3) DEAD, (2, 0) SINK

  // A looser threshold keeps only the big movers.
  c = compare_reports(make_report(kBefore), make_report(kAfter), &plan, 0.1);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->drift_inside, (Heads{{1, 2}, {2, 3}}));
  EXPECT_EQ(c->drift_outside, (Heads{{2, 0}}));
  EXPECT_TRUE(c->drift_below_lowest_target_layer.empty());
}

TEST(CompareReports, WithoutAPlanEveryDrifterIsOutside) {
  absl::StatusOr<ReportComparison> c = compare_reports(make_report(kBefore), make_report(kAfter), nullptr);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->has_plan);
  EXPECT_EQ(c->lowest_target_layer, -1);
  EXPECT_TRUE(c->drift_inside.empty());
  EXPECT_EQ(c->drift_outside, (Heads{{0, 2}, {1, 2}, {2, 0}, {2, 1}, {2, 3}}));
  EXPECT_TRUE(c->drift_below_lowest_target_layer.empty());
  const json j = comparison_to_json(*c);
  EXPECT_TRUE(j["plan"].is_null());
  EXPECT_FALSE(j["drift"].contains("below_lowest_target_layer"));
}

TEST(CompareReports, MismatchesAreErrorsNamingTheInput) {
  std::vector<double> smaller(kBefore.begin(), kBefore.begin() + 2 * kHeads);
  json heads = json::array();
  for (int64_t i = 0; i < 2 * kHeads; ++i) {
    heads.push_back({{"layer", i / kHeads}, {"head", i % kHeads}, {"bos_mass", smaller[i]},
                     {"entropy", kEntropy}, {"local_mass", 0.25}});
  }
  absl::StatusOr<DiagnosisReport> two_layers = report_from_json(
      {{"version", 1}, {"thresholds", {{"dead", 0.95}, {"sink", 0.5}, {"low_entropy", 0.5}}},
       {"heads", heads}},
      "small");
  ASSERT_TRUE(two_layers.ok()) << two_layers.status();
  absl::StatusOr<ReportComparison> c =
      compare_reports(make_report(kBefore), *two_layers, nullptr, 0.05, "b.json", "a.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("a.json: covers 2 layers x 4 heads"));

  SurgeryPlan out_of_range;
  out_of_range.targets = {{3, 0}};
  c = compare_reports(make_report(kBefore), make_report(kAfter), &out_of_range, 0.05, "b", "a", "p.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("p.json"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("targets[0].layer"));

  EXPECT_FALSE(compare_reports(make_report(kBefore), make_report(kAfter), nullptr, -1).ok());
}

TEST(CompareReports, ThresholdMismatchIsFlagged) {
  Thresholds other;
  other.sink = 0.4;
  absl::StatusOr<ReportComparison> c =
      compare_reports(make_report(kBefore), make_report(kBefore, other), nullptr);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->thresholds_match);
  EXPECT_THAT(render_comparison_text(*c), HasSubstr("different thresholds"));
  EXPECT_TRUE(c->drift_outside.empty());
}

TEST(CompareReports, JsonAndRenderings) {
  const SurgeryPlan plan = two_target_plan();
  absl::StatusOr<ReportComparison> c = compare_reports(make_report(kBefore), make_report(kAfter), &plan);
  ASSERT_TRUE(c.ok()) << c.status();
  const json j = comparison_to_json(*c);
  EXPECT_EQ(j["version"], 1);
  EXPECT_EQ(j["plan"], (json{{"targets", 2}, {"lowest_target_layer", 1}}));
  EXPECT_EQ(j["counts_before"]["collapsed"], 3);
  EXPECT_EQ(j["counts_after"]["SINK"], 1);
  EXPECT_EQ(j["class_changes"].size(), 3u);
  EXPECT_EQ(j["drift"]["below_lowest_target_layer"], (json{{{"layer", 0}, {"head", 2}}}));
  ASSERT_EQ(j["heads"].size(), 12u);
  const json& h12 = j["heads"][1 * kHeads + 2];
  EXPECT_EQ(h12["target"], true);
  EXPECT_NEAR(h12["delta_bos_mass"].get<double>(), -0.5, 1e-15);
  EXPECT_EQ(h12["class_before"], "SINK");
  EXPECT_EQ(h12["class_after"], "HEALTHY");
  EXPECT_EQ(h12["drifted"], true);

  const std::string svg = render_delta_svg(*c);
  auto count = [&](const std::string& needle) {
    size_t n = 0;
    for (size_t p = svg.find(needle); p != std::string::npos; p = svg.find(needle, p + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("stroke=\"#000\" stroke-width=\"2\""), 2u);  // the two targets
  EXPECT_EQ(count("stroke-dasharray"), 3u);                   // three frozen drifters
  EXPECT_EQ(count("<title>layer "), 12u);                     // one cell per head
  // A head whose bos_mass fell is blue-ish, one that rose red-ish, an unchanged one white.
  EXPECT_THAT(svg, HasSubstr("layer 0 head 0: bos_mass 0.100 -> 0.100 (+0.000)"));
  EXPECT_THAT(svg, HasSubstr("fill=\"#ffffff\" stroke=\"#ccc\"><title>layer 0 head 0"));

  const std::string csv = render_comparison_csv(*c);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 13);
  EXPECT_THAT(csv, HasSubstr("\n1,2,1,0.7,0.2,-0.5,2,2,0,0.25,0.25,0,SINK,HEALTHY,1\n"));
  const std::string text = render_comparison_text(*c);
  EXPECT_THAT(text, HasSubstr("frozen heads below the lowest target layer (1, expected none) 1: 0:2"));
  EXPECT_THAT(text, HasSubstr("class changes (3): 1:2 SINK->HEALTHY 2:0 HEALTHY->SINK 2:3 DEAD->HEALTHY"));
  const std::string html = render_comparison_html(*c);
  EXPECT_THAT(html, HasSubstr("<!DOCTYPE html>"));
  EXPECT_THAT(html, HasSubstr("<svg"));
  EXPECT_EQ(html.find("http://", html.find("</svg>")), std::string::npos);  // nothing fetched
}

class CompareCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / absl::StrCat("compare_cli_", ::getpid());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string read(const std::string& name) const {
    std::ifstream in(dir_ / name, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  int run(const std::string& args) const {
    const std::string cmd = absl::StrCat(ENGINE_CLI_PATH, " diagnose ", args, " > ", path("out.txt"),
                                         " 2> ", path("err.txt"));
    const int status = std::system(cmd.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::filesystem::path dir_;
};

TEST_F(CompareCli, WritesComparisonAndPictures) {
  std::ofstream(path("before.json")) << report_to_json(make_report(kBefore)).dump();
  std::ofstream(path("after.json")) << report_to_json(make_report(kAfter)).dump();
  std::ofstream(path("plan.json")) << plan_to_json(two_target_plan()).dump();
  ASSERT_EQ(run(absl::StrCat("--compare ", path("before.json"), " ", path("after.json"), " --plan ",
                             path("plan.json"), " --out ", path("c.json"), " --svg ", path("c.svg"),
                             " --html ", path("c.html"), " --csv ", path("c.csv"))),
            0)
      << read("err.txt");
  const SurgeryPlan plan = two_target_plan();
  absl::StatusOr<ReportComparison> want =
      compare_reports(make_report(kBefore), make_report(kAfter), &plan);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(json::parse(read("c.json")), comparison_to_json(*want));
  EXPECT_EQ(read("c.svg"), render_delta_svg(*want));
  EXPECT_EQ(read("c.csv"), render_comparison_csv(*want));
  EXPECT_THAT(read("c.html"), HasSubstr("<svg"));
  EXPECT_EQ(read("out.txt"), render_comparison_text(*want));

  EXPECT_EQ(run(absl::StrCat("--compare ", path("before.json"))), 2);
  EXPECT_EQ(run(absl::StrCat("--compare ", path("before.json"), " ", path("missing.json"))), 1);
  EXPECT_THAT(read("err.txt"), HasSubstr("missing.json"));
}

}  // namespace
}  // namespace engine
