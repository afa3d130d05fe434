// Classification, aggregation over sequences, band/sensitivity and the report's JSON form.
#include "surgery/diagnosis.h"

#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace engine {
namespace {

using ::testing::HasSubstr;

TEST(Classify, OrderAndStrictThresholds) {
  const Thresholds t;
  EXPECT_EQ(classify(0.96, 0.1, t), HeadClass::kDead);
  EXPECT_EQ(classify(0.95, 0.1, t), HeadClass::kSink);  // "> 0.95": equal is not dead
  EXPECT_EQ(classify(0.51, 3.0, t), HeadClass::kSink);
  EXPECT_EQ(classify(0.50, 0.2, t), HeadClass::kLowEntropy);
  EXPECT_EQ(classify(0.10, 0.49, t), HeadClass::kLowEntropy);
  EXPECT_EQ(classify(0.10, 0.50, t), HeadClass::kHealthy);
  EXPECT_EQ(classify(0.10, 2.0, Thresholds{0.95, 0.05, 0.5}), HeadClass::kSink);
}

// 2 layers x 3 heads; two sequences with hand-chosen values.
DiagnosisReport two_sequence_report() {
  DiagnosisAccumulator acc(2, 3);
  SequenceHeadStats a{{0.99, 0.60, 0.10, 0.70, 0.20, 0.30},
                      {0.05, 1.00, 0.30, 2.00, 2.00, 2.00},
                      {1.00, 0.50, 0.40, 0.30, 0.60, 0.70}};
  SequenceHeadStats b{{0.97, 0.40, 0.10, 0.50, 0.20, 0.30},
                      {0.07, 1.00, 0.50, 2.00, 2.00, 2.00},
                      {1.00, 0.50, 0.20, 0.30, 0.40, 0.70}};
  EXPECT_TRUE(acc.add(a, 10).ok());
  EXPECT_TRUE(acc.add(b, 12).ok());
  return acc.finish(Thresholds{}, {0.25f, 0.0625f, 0.015625f}, {{"name", "toy"}}, 16);
}

TEST(Diagnosis, MeansSpreadsAndClasses) {
  const DiagnosisReport r = two_sequence_report();
  EXPECT_EQ(r.sequences, 2);
  EXPECT_EQ(r.tokens, 22);
  const HeadSummary& h00 = r.at(0, 0);
  EXPECT_DOUBLE_EQ(h00.bos_mass.mean, 0.98);
  EXPECT_NEAR(h00.bos_mass.std, 0.01, 1e-12);  // population std of {0.99, 0.97}
  EXPECT_DOUBLE_EQ(h00.bos_mass.min, 0.97);
  EXPECT_DOUBLE_EQ(h00.bos_mass.max, 0.99);
  EXPECT_DOUBLE_EQ(h00.entropy.mean, 0.06);
  EXPECT_EQ(h00.cls, HeadClass::kDead);
  EXPECT_EQ(r.at(0, 1).cls, HeadClass::kHealthy);     // bos mean 0.5 is not > 0.5
  EXPECT_EQ(r.at(0, 2).cls, HeadClass::kLowEntropy);  // entropy mean 0.4
  EXPECT_EQ(r.at(1, 0).cls, HeadClass::kSink);        // bos 0.6
  EXPECT_EQ(r.at(1, 1).cls, HeadClass::kHealthy);
  EXPECT_EQ(r.at(1, 2).cls, HeadClass::kHealthy);
  EXPECT_EQ(r.counts.dead, 1);
  EXPECT_EQ(r.counts.sink, 1);
  EXPECT_EQ(r.counts.low_entropy, 1);
  EXPECT_EQ(r.counts.healthy, 3);
  EXPECT_EQ(r.counts.collapsed(), 2);
  EXPECT_DOUBLE_EQ(r.at(0, 2).slope, 0.015625);
}

TEST(Diagnosis, BandAndSensitivity) {
  const DiagnosisReport r = two_sequence_report();
  // Head 0 is collapsed in both layers (fraction 1.0); heads 1 and 2 in none.
  EXPECT_EQ(r.collapsed_fraction_by_head, (std::vector<double>{1.0, 0.0, 0.0}));
  EXPECT_EQ(r.band, (std::vector<int64_t>{0}));
  // At sink 0.4: head (0,1) bos 0.5 becomes SINK, (1,1) bos 0.2 stays, (0,2) 0.1 stays -> 1.
  EXPECT_EQ(r.class_changes_sink_040, 1);
  // At sink 0.6: head (1,0) bos 0.6 is no longer > 0.6 -> HEALTHY (entropy 2) -> 1.
  EXPECT_EQ(r.class_changes_sink_060, 1);
}

TEST(Diagnosis, JsonRoundTripAndSchema) {
  const DiagnosisReport r = two_sequence_report();
  const nlohmann::json j = report_to_json(r);
  EXPECT_EQ(j["version"], 1);
  EXPECT_EQ(j["heads"].size(), 6u);
  EXPECT_EQ(j["heads"][0]["class"], "DEAD");
  EXPECT_EQ(j["counts"]["collapsed"], 2);
  EXPECT_EQ(j["data"]["seq_len"], 16);
  auto back = report_from_json(j, "report.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->n_layer, 2);
  EXPECT_EQ(back->n_head, 3);
  for (size_t i = 0; i < r.heads.size(); ++i) {
    EXPECT_EQ(back->heads[i].cls, r.heads[i].cls);
    EXPECT_DOUBLE_EQ(back->heads[i].bos_mass.mean, r.heads[i].bos_mass.mean);
    EXPECT_DOUBLE_EQ(back->heads[i].bos_mass.std, r.heads[i].bos_mass.std);
  }
  EXPECT_EQ(back->band, r.band);
}

TEST(Diagnosis, BadReportsNameTheField) {
  nlohmann::json j = report_to_json(two_sequence_report());
  j["heads"][3].erase("bos_mass");
  auto r = report_from_json(j, "r.json");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("heads[3].bos_mass\": missing"));
  j = report_to_json(two_sequence_report());
  j["heads"].erase(5);
  r = report_from_json(j, "r.json");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("do not cover"));
  j = report_to_json(two_sequence_report());
  j["version"] = 7;
  EXPECT_FALSE(report_from_json(j, "r.json").ok());
}

TEST(Diagnosis, AccumulatorRejectsWrongShape) {
  DiagnosisAccumulator acc(2, 3);
  SequenceHeadStats s{{1, 2}, {1, 2}, {1, 2}};
  EXPECT_FALSE(acc.add(s, 1).ok());
}

TEST(Diagnosis, Renderings) {
  const DiagnosisReport r = two_sequence_report();
  const std::string grid = render_grid(r);
  EXPECT_THAT(grid, HasSubstr("    0  D.l\n"));
  EXPECT_THAT(grid, HasSubstr("    1  s..\n"));
  EXPECT_THAT(grid, HasSubstr("collapsed 2 of 6"));
  EXPECT_THAT(grid, HasSubstr("band (head indices collapsed in > 30% of layers): 0"));
  const std::string csv = render_csv(r);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 7);
  EXPECT_THAT(csv, HasSubstr("\n0,0,0.25,0.98,"));
  const std::string svg = render_svg(r);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_THAT(svg, HasSubstr("</svg>"));
  EXPECT_THAT(svg, HasSubstr("layer 1 head 0 (ALiBi slope "));
  EXPECT_THAT(svg, HasSubstr("bos_mass 0.600"));
  const std::string html = render_html(r);
  EXPECT_THAT(html, HasSubstr("<title>Head diagnosis: toy</title>"));
  // Self-contained: nothing is fetched (the SVG namespace string is an identifier, not a fetch).
  EXPECT_THAT(html, Not(HasSubstr("src=")));
  EXPECT_THAT(html, Not(HasSubstr("<link")));
}

}  // namespace
}  // namespace engine
