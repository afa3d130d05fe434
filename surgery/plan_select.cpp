#include "surgery/plan_select.h"

#include <algorithm>
#include <charconv>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace engine {
namespace {

absl::StatusOr<int64_t> parse_index(absl::string_view text, const std::string& flag) {
  int64_t v = -1;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(first, last, v);
  if (text.empty() || ec != std::errc() || ptr != last || v < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": \"", std::string(text),
                                                   "\" is not a non-negative integer"));
  }
  return v;
}

}  // namespace

absl::StatusOr<std::vector<HeadTarget>> parse_head_list(const std::string& text,
                                                        const std::string& flag) {
  std::vector<HeadTarget> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    item = absl::StripAsciiWhitespace(item);
    std::vector<absl::string_view> parts = absl::StrSplit(item, ':');
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": \"", std::string(item),
                                                     "\" is not LAYER:HEAD"));
    }
    auto layer = parse_index(parts[0], flag);
    if (!layer.ok()) return layer.status();
    auto head = parse_index(parts[1], flag);
    if (!head.ok()) return head.status();
    out.push_back(HeadTarget{*layer, *head});
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": no heads given"));
  return out;
}

absl::StatusOr<IndexRange> parse_index_range(const std::string& text, const std::string& flag) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, '-');
  if (parts.size() == 1) {
    auto v = parse_index(parts[0], flag);
    if (!v.ok()) return v.status();
    return IndexRange{*v, *v};
  }
  if (parts.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": \"", text, "\" is not A-B"));
  }
  auto a = parse_index(parts[0], flag);
  if (!a.ok()) return a.status();
  auto b = parse_index(parts[1], flag);
  if (!b.ok()) return b.status();
  if (*b < *a) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": range ", text, " is empty"));
  }
  return IndexRange{*a, *b};
}

absl::StatusOr<std::vector<HeadTarget>> select_heads(const DiagnosisReport& report,
                                                     const PlanSelection& sel) {
  std::set<HeadTarget> chosen;
  if (!sel.heads.empty()) {
    for (const HeadTarget& t : sel.heads) {
      if (t.layer >= report.n_layer || t.head >= report.n_head) {
        return absl::OutOfRangeError(absl::StrCat("--heads: ", t.layer, ":", t.head,
                                                  " is outside the report's ", report.n_layer,
                                                  " layers x ", report.n_head, " heads"));
      }
      chosen.insert(t);
    }
  } else {
    const std::set<int64_t> band(report.band.begin(), report.band.end());
    for (const HeadSummary& h : report.heads) {
      bool take = false;
      if (sel.select == "collapsed") {
        take = is_collapsed(h.cls);
      } else if (sel.select == "sink") {
        take = h.cls == HeadClass::kSink;
      } else if (sel.select == "dead") {
        take = h.cls == HeadClass::kDead;
      } else if (sel.select == "all-in-band") {
        take = band.count(h.head) != 0;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("--select: \"", sel.select,
                         "\" is not one of collapsed, sink, dead, all-in-band"));
      }
      if (take) chosen.insert(HeadTarget{h.layer, h.head});
    }
  }
  std::vector<HeadTarget> out;
  const std::set<HeadTarget> excluded(sel.exclude.begin(), sel.exclude.end());
  for (const HeadTarget& t : chosen) {
    if (sel.layers && !sel.layers->contains(t.layer)) continue;
    if (sel.head_indices && !sel.head_indices->contains(t.head)) continue;
    if (excluded.count(t) != 0) continue;
    out.push_back(t);
  }
  if (out.empty()) {
    return absl::NotFoundError(
        "the selection matches no head (a plan needs at least one target); nothing to repair");
  }
  return out;
}

}  // namespace engine
