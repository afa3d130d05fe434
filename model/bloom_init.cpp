#include "model/bloom_init.h"

#include <cmath>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/random.h"

namespace engine {

absl::Status init_bloom_weights(BloomModel& model, uint64_t seed, double stddev) {
  if (!model.arena.allocated() || model.arena.dtype() != DType::kF32) {
    return absl::FailedPreconditionError("init_bloom_weights needs an allocated f32 model");
  }
  if (!(stddev > 0)) return absl::InvalidArgumentError(absl::StrCat("init std ", stddev));
  const double output_scale = 1.0 / std::sqrt(2.0 * static_cast<double>(model.config.n_layer));
  const auto& params = model.arena.parameters();
  for (size_t p = 0; p < params.size(); ++p) {
    const ParameterInfo& info = params[p];
    float* w = reinterpret_cast<float*>(model.arena.base()) + info.offset;
    const std::string& name = info.name;
    const bool is_norm = absl::StrContains(name, "layernorm") || absl::StartsWith(name, "ln_f");
    if (absl::EndsWith(name, ".bias")) {
      for (int64_t i = 0; i < info.numel; ++i) w[i] = 0.0f;
    } else if (is_norm) {
      for (int64_t i = 0; i < info.numel; ++i) w[i] = 1.0f;
    } else {
      const bool output_projection = absl::EndsWith(name, "self_attention.dense.weight") ||
                                     absl::EndsWith(name, "mlp.dense_4h_to_h.weight");
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
