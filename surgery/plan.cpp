#include "surgery/plan.h"

#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/io.h"

namespace engine {
namespace {

using json = nlohmann::json;

absl::Status field_error(const std::string& source, const std::string& field,
                         const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field \"", field, "\": ", problem));
}

// An integer that fits the target type; JSON floats like 3.0 are rejected to keep plans exact.
absl::StatusOr<int64_t> read_index(const json& v, const std::string& source,
                                   const std::string& field) {
  if (!v.is_number_integer()) {
    return field_error(source, field, absl::StrCat("expected a non-negative integer, got ", v.dump()));
  }
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT32_MAX)) {
      return field_error(source, field, absl::StrCat("value ", u, " is out of range"));
    }
    return static_cast<int64_t>(u);
  }
  const int64_t i = v.get<int64_t>();
  if (i < 0) return field_error(source, field, absl::StrCat("value ", i, " is negative"));
  return i;
}

constexpr std::pair<const char*, QkvWeightInit> kQkvWeightChoices[] = {
    {"xavier_uniform", QkvWeightInit::kXavierUniform},
    {"xavier_normal", QkvWeightInit::kXavierNormal},
    {"keep", QkvWeightInit::kKeep}};
constexpr std::pair<const char*, QkvBiasInit> kQkvBiasChoices[] = {{"zero", QkvBiasInit::kZero},
                                                                   {"keep", QkvBiasInit::kKeep}};
constexpr std::pair<const char*, DenseColumnsInit> kDenseChoices[] = {
    {"zero", DenseColumnsInit::kZero}, {"keep", DenseColumnsInit::kKeep}};

template <typename Enum, size_t N>
absl::StatusOr<Enum> read_choice(const json& v, const std::string& source, const std::string& field,
                                 const std::pair<const char*, Enum> (&choices)[N]) {
  std::string allowed;
  for (const auto& [name, value] : choices) {
    if (v.is_string() && v.get<std::string>() == name) return value;
    absl::StrAppend(&allowed, allowed.empty() ? "" : ", ", name);
  }
  return field_error(source, field, absl::StrCat("got ", v.dump(), ", expected one of ", allowed));
}

template <typename Enum, size_t N>
const char* choice_name(const std::pair<const char*, Enum> (&choices)[N], Enum value) {
  for (const auto& [name, v] : choices) {
    if (v == value) return name;
  }
  return "?";
}

}  // namespace

absl::StatusOr<SurgeryPlan> parse_plan(const json& j, const std::string& source) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": a plan must be a JSON object"));
  }
  static const std::set<std::string> kKnown = {"version", "targets", "reinit", "trainable", "seed",
                                               "comment"};
  for (const auto& [key, value] : j.items()) {
    if (kKnown.count(key) == 0) return field_error(source, key, "unknown key");
  }
  if (!j.contains("version")) return field_error(source, "version", "missing");
  if (!j["version"].is_number_integer() || j["version"].get<int64_t>() != SurgeryPlan::kVersion) {
    return field_error(source, "version",
                       absl::StrCat("unsupported value ", j["version"].dump(), " (expected ",
                                    SurgeryPlan::kVersion, ")"));
  }

  SurgeryPlan plan;
  if (!j.contains("targets")) return field_error(source, "targets", "missing");
  const json& targets = j["targets"];
  if (!targets.is_array()) return field_error(source, "targets", "expected an array");
  if (targets.empty()) return field_error(source, "targets", "the target list is empty");
  std::set<HeadTarget> seen;
  for (size_t i = 0; i < targets.size(); ++i) {
    const std::string where = absl::StrCat("targets[", i, "]");
    const json& t = targets[i];
    if (!t.is_object()) return field_error(source, where, "expected {\"layer\": L, \"head\": H}");
    for (const auto& [key, value] : t.items()) {
      if (key != "layer" && key != "head") {
        return field_error(source, absl::StrCat(where, ".", key), "unknown key");
      }
    }
    if (!t.contains("layer")) return field_error(source, where + ".layer", "missing");
    if (!t.contains("head")) return field_error(source, where + ".head", "missing");
    HeadTarget target;
    auto layer = read_index(t["layer"], source, where + ".layer");
    if (!layer.ok()) return layer.status();
    auto head = read_index(t["head"], source, where + ".head");
    if (!head.ok()) return head.status();
    target.layer = *layer;
    target.head = *head;
    if (!seen.insert(target).second) {
      return field_error(source, where,
                         absl::StrCat("duplicate target layer ", target.layer, " head ", target.head));
    }
    plan.targets.push_back(target);
  }

  if (j.contains("reinit")) {
    const json& r = j["reinit"];
    if (!r.is_object()) return field_error(source, "reinit", "expected an object");
    for (const auto& [key, value] : r.items()) {
      const std::string field = "reinit." + key;
      if (key == "qkv_weight") {
        auto v = read_choice(value, source, field, kQkvWeightChoices);
        if (!v.ok()) return v.status();
        plan.qkv_weight = *v;
      } else if (key == "qkv_bias") {
        auto v = read_choice(value, source, field, kQkvBiasChoices);
        if (!v.ok()) return v.status();
        plan.qkv_bias = *v;
      } else if (key == "dense_columns") {
        auto v = read_choice(value, source, field, kDenseChoices);
        if (!v.ok()) return v.status();
        plan.dense_columns = *v;
      } else {
        return field_error(source, field, "unknown key");
      }
    }
  }

  if (j.contains("trainable")) {
    const json& t = j["trainable"];
    if (!t.is_array()) return field_error(source, "trainable", "expected an array of slice names");
    if (t.empty()) return field_error(source, "trainable", "must name at least one slice");
    TrainableSlices slices{false, false, false};
    std::set<std::string> names;
    for (const json& v : t) {
      if (!v.is_string()) {
        return field_error(source, "trainable", absl::StrCat("expected a string, got ", v.dump()));
      }
      const std::string name = v.get<std::string>();
      if (!names.insert(name).second) {
        return field_error(source, "trainable", absl::StrCat("duplicate slice \"", name, "\""));
      }
      if (name == "qkv_weight") {
        slices.qkv_weight = true;
      } else if (name == "qkv_bias") {
        slices.qkv_bias = true;
      } else if (name == "dense_columns") {
        slices.dense_columns = true;
      } else {
        return field_error(source, "trainable",
                           absl::StrCat("unknown slice \"", name,
                                        "\" (expected qkv_weight, qkv_bias, dense_columns)"));
      }
    }
    plan.trainable = slices;
  }

  if (j.contains("seed")) {
    const json& s = j["seed"];
    if (!s.is_number_integer() || (!s.is_number_unsigned() && s.get<int64_t>() < 0)) {
      return field_error(source, "seed", absl::StrCat("expected a non-negative integer, got ", s.dump()));
    }
    plan.seed = s.get<uint64_t>();
  }
  if (j.contains("comment")) {
    if (!j["comment"].is_string()) return field_error(source, "comment", "expected a string");
    plan.comment = j["comment"].get<std::string>();
  }
  return plan;
}

absl::StatusOr<SurgeryPlan> parse_plan_text(const std::string& text, const std::string& source) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  return parse_plan(j, source);
}

absl::StatusOr<SurgeryPlan> load_plan(const std::string& path) {
  absl::StatusOr<std::string> text = read_file(path, "plan file");
  if (!text.ok()) return text.status();
  return parse_plan_text(*text, path);
}

json plan_to_json(const SurgeryPlan& plan) {
  json targets = json::array();
  for (const HeadTarget& t : plan.targets) targets.push_back({{"layer", t.layer}, {"head", t.head}});
  json trainable = json::array();
  if (plan.trainable.qkv_weight) trainable.push_back("qkv_weight");
  if (plan.trainable.qkv_bias) trainable.push_back("qkv_bias");
  if (plan.trainable.dense_columns) trainable.push_back("dense_columns");
  json j = {{"version", SurgeryPlan::kVersion},
            {"targets", targets},
            {"reinit",
             {{"qkv_weight", choice_name(kQkvWeightChoices, plan.qkv_weight)},
              {"qkv_bias", choice_name(kQkvBiasChoices, plan.qkv_bias)},
              {"dense_columns", choice_name(kDenseChoices, plan.dense_columns)}}},
            {"trainable", trainable},
            {"seed", plan.seed}};
  if (!plan.comment.empty()) j["comment"] = plan.comment;
  return j;
}

absl::StatusOr<QkvWeightInit> qkv_weight_init_from_name(const std::string& name) {
  return read_choice(json(name), "--init", "qkv_weight", kQkvWeightChoices);
}

absl::Status validate_plan(const SurgeryPlan& plan, const HeadGeometry& g,
                           const std::string& source) {
  for (size_t i = 0; i < plan.targets.size(); ++i) {
    const HeadTarget& t = plan.targets[i];
    if (t.layer >= g.n_layer) {
      return field_error(source, absl::StrCat("targets[", i, "].layer"),
                         absl::StrCat("layer ", t.layer, " is out of range: the model has ",
                                      g.n_layer, " layers (0-", g.n_layer - 1, ")"));
    }
    if (t.head >= g.n_head) {
      return field_error(source, absl::StrCat("targets[", i, "].head"),
                         absl::StrCat("head ", t.head, " is out of range: the model has ", g.n_head,
                                      " heads (0-", g.n_head - 1, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace engine
