// Report -> plan selection rules, and the `engine plan` command end to end.
#include "surgery/plan_select.h"

#include <unistd.h>

#include <string>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace engine {
namespace {

using ::testing::HasSubstr;

// 4 layers x 4 heads. bos_mass chosen per head: head 3 collapsed in layers 1-3 (band),
// (0, 1) DEAD, (2, 0) SINK, everything else healthy.
DiagnosisReport make_report() {
  DiagnosisReport r;
  r.n_layer = 4;
  r.n_head = 4;
  for (int64_t l = 0; l < 4; ++l) {
    for (int64_t h = 0; h < 4; ++h) {
      HeadSummary s;
      s.layer = l;
      s.head = h;
      s.entropy.mean = 2.0;
      s.bos_mass.mean = 0.1;
      if (h == 3 && l >= 1) s.bos_mass.mean = 0.7;
      if (l == 0 && h == 1) s.bos_mass.mean = 0.99;
      if (l == 2 && h == 0) s.bos_mass.mean = 0.6;
      r.heads.push_back(s);
    }
  }
  classify_report(r);
  return r;
}

std::vector<HeadTarget> select(const PlanSelection& sel) {
  auto t = select_heads(make_report(), sel);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : std::vector<HeadTarget>{};
}

TEST(PlanSelect, ByClass) {
  EXPECT_EQ(select({}), (std::vector<HeadTarget>{{0, 1}, {1, 3}, {2, 0}, {2, 3}, {3, 3}}));
  PlanSelection dead;
  dead.select = "dead";
  EXPECT_EQ(select(dead), (std::vector<HeadTarget>{{0, 1}}));
  PlanSelection sink;
  sink.select = "sink";
  EXPECT_EQ(select(sink), (std::vector<HeadTarget>{{1, 3}, {2, 0}, {2, 3}, {3, 3}}));
}

TEST(PlanSelect, BandIsWholeHeadColumns) {
  PlanSelection band;
  band.select = "all-in-band";
  EXPECT_EQ(select(band), (std::vector<HeadTarget>{{0, 3}, {1, 3}, {2, 3}, {3, 3}}));
}

TEST(PlanSelect, FiltersAndExclusions) {
  PlanSelection sel;
  sel.layers = IndexRange{1, 2};
  EXPECT_EQ(select(sel), (std::vector<HeadTarget>{{1, 3}, {2, 0}, {2, 3}}));
  sel.head_indices = IndexRange{3, 3};
  EXPECT_EQ(select(sel), (std::vector<HeadTarget>{{1, 3}, {2, 3}}));
  sel.exclude = {{2, 3}};
  EXPECT_EQ(select(sel), (std::vector<HeadTarget>{{1, 3}}));
}

TEST(PlanSelect, ExplicitHeadsOverrideSelect) {
  PlanSelection sel;
  sel.heads = {{3, 0}, {0, 0}, {3, 0}};
  EXPECT_EQ(select(sel), (std::vector<HeadTarget>{{0, 0}, {3, 0}}));
  sel.heads = {{4, 0}};
  auto bad = select_heads(make_report(), sel);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("4:0 is outside"));
}

TEST(PlanSelect, EmptySelectionAndBadSpellingsAreErrors) {
  PlanSelection sel;
  sel.layers = IndexRange{3, 3};
  sel.head_indices = IndexRange{0, 0};
  EXPECT_EQ(select_heads(make_report(), sel).status().code(), absl::StatusCode::kNotFound);
  sel = {};
  sel.select = "sinks";
  EXPECT_THAT(std::string(select_heads(make_report(), sel).status().message()),
              HasSubstr("\"sinks\" is not one of"));
  EXPECT_FALSE(parse_head_list("1:2,3", "heads").ok());
  EXPECT_FALSE(parse_head_list("1:-2", "heads").ok());
  EXPECT_FALSE(parse_head_list("", "heads").ok());
  EXPECT_FALSE(parse_index_range("5-2", "layers").ok());
  EXPECT_FALSE(parse_index_range("a-b", "layers").ok());
  auto r = parse_index_range("9-15", "head-indices");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->first, 9);
  EXPECT_EQ(r->last, 15);
  auto heads = parse_head_list("5:14, 6:3", "heads");
  ASSERT_TRUE(heads.ok());
  EXPECT_EQ(*heads, (std::vector<HeadTarget>{{5, 14}, {6, 3}}));
}

TEST(PlanCommand, WritesAStrictPlanFromAReport) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("engine_plan_cli_test." + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir / "report.json") << report_to_json(make_report()).dump();
  }
  const std::string cmd = absl::StrCat(ENGINE_CLI_PATH, " plan --report ", (dir / "report.json").string(),
                                       " --out ", (dir / "plan.json").string(),
                                       " --head_indices 3 --seed 7 > /dev/null");
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto plan = load_plan((dir / "plan.json").string());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->targets, (std::vector<HeadTarget>{{1, 3}, {2, 3}, {3, 3}}));
  EXPECT_EQ(plan->seed, 7u);

  const std::string bad = absl::StrCat(ENGINE_CLI_PATH, " plan --report ", (dir / "missing.json").string(),
                                       " --out ", (dir / "p2.json").string(), " 2> ",
                                       (dir / "err.txt").string());
  EXPECT_NE(std::system(bad.c_str()), 0);
  std::ifstream err(dir / "err.txt");
  std::string line;
  std::getline(err, line);
  EXPECT_THAT(line, HasSubstr("missing.json: cannot open report"));
  EXPECT_FALSE(std::filesystem::exists(dir / "p2.json"));
  std::filesystem::remove_all(dir);
}

// Flag names take dashes or underscores (--head-indices = --head_indices, the spelling the usage
// line once showed but the parser refused), errors name the flag as --help spells it, and a value
// that looks like a flag stays a value.
TEST(PlanCommand, DashedAndUnderscoredFlagNamesAreOneFlag) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("engine_plan_dashes_test." + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir / "report.json") << report_to_json(make_report()).dump();
  }
  const std::string report = (dir / "report.json").string();
  for (const char* spelling : {"--head_indices 3", "--head-indices 3", "--head-indices=3"}) {
    const std::string out = (dir / "plan.json").string();
    std::filesystem::remove(out);
    const std::string cmd = absl::StrCat(ENGINE_CLI_PATH, " plan --report ", report, " --out ", out,
                                         " ", spelling, " --comment --not-a-flag > /dev/null");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << spelling;
    auto plan = load_plan(out);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->targets, (std::vector<HeadTarget>{{1, 3}, {2, 3}, {3, 3}})) << spelling;
    EXPECT_EQ(plan->comment, "--not-a-flag") << spelling;
  }
  for (const char* spelling : {"--head_indices 5-2", "--head-indices 5-2"}) {
    const std::string cmd = absl::StrCat(ENGINE_CLI_PATH, " plan --report ", report, " --out ",
                                         (dir / "p2.json").string(), " ", spelling, " 2> ",
                                         (dir / "err.txt").string());
    EXPECT_NE(std::system(cmd.c_str()), 0) << spelling;
    std::ifstream err(dir / "err.txt");
    std::string line;
    std::getline(err, line);
    EXPECT_THAT(line, HasSubstr("--head_indices: ")) << spelling;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace engine
