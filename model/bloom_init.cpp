#include "model/bloom_init.h"

#include <cmath>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/random.h"
#include "model/bloom_layout.h"

namespace engine {

absl::Status init_bloom_weights(BloomModel& model, uint64_t seed, double stddev) {
  if (!model.arena.allocated() || model.arena.dtype() != DType::kF32) {
    return absl::FailedPreconditionError("init_bloom_weights needs an allocated f32 model");
  }
  if (!(stddev > 0)) return absl::InvalidArgumentError(absl::StrCat("init std ", stddev));
  const double output_scale = 1.0 / std::sqrt(2.0 * static_cast<double>(model.config.n_layer));
  // LayerNorm weights and the two output projections, by role (the names differ per family).
  using R = ParamRole;
  const BloomConfig& c = model.config;
  std::set<std::string> norms = {parameter_name(c, R::kEmbLnWeight),
                                 parameter_name(c, R::kLnfWeight)};
  std::set<std::string> outputs;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    norms.insert(parameter_name(c, R::kLn1Weight, l));
    norms.insert(parameter_name(c, R::kLn2Weight, l));
    outputs.insert(parameter_name(c, R::kDenseWeight, l));
    outputs.insert(parameter_name(c, R::kFc2Weight, l));
  }
  const auto& params = model.arena.parameters();
  for (size_t p = 0; p < params.size(); ++p) {
    const ParameterInfo& info = params[p];
    float* w = reinterpret_cast<float*>(model.arena.base()) + info.offset;
    const std::string& name = info.name;
    const bool is_norm = norms.contains(name);
    if (absl::EndsWith(name, ".bias")) {
      for (int64_t i = 0; i < info.numel; ++i) w[i] = 0.0f;
    } else if (is_norm) {
      for (int64_t i = 0; i < info.numel; ++i) w[i] = 1.0f;
    } else {
      const bool output_projection = outputs.contains(name);
      const double s = output_projection ? stddev * output_scale : stddev;
      const uint64_t stream = random_stream(seed, p, 0);
      for (int64_t i = 0; i < info.numel; ++i) {
        w[i] = static_cast<float>(s * normal_at(stream, static_cast<uint64_t>(i)));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace engine
