#include "surgery/head_surgery.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/random.h"
#include "model/bloom_layout.h"

namespace engine {
namespace {

// Parameter names as the family's released checkpoints spell them (model/bloom_layout.h).
std::string name_of(const HeadGeometry& g, ParamRole role, int64_t layer) {
  BloomConfig c;
  c.family = g.family;
  c.linear_bias = g.qkv_bias;
  return parameter_name(c, role, layer);
}

// Fills the (3D, C) row block: Xavier with fan_in = C and fan_out = 3D (the block the research
// code re-initialised as one tensor), gain 1.
void xavier_fill(const TensorView& rows, QkvWeightInit init, uint64_t seed, const HeadTarget& t) {
  const int64_t fan_out = rows.shape[0];
  const int64_t fan_in = rows.shape[1];
  const uint64_t stream =
      random_stream(seed, static_cast<uint64_t>(t.layer), static_cast<uint64_t>(t.head));
  float* w = rows.as<float>();
  const int64_t n = rows.numel();
  if (init == QkvWeightInit::kXavierUniform) {
    const double bound = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
    for (int64_t i = 0; i < n; ++i) {
      const double u = uniform_at(stream, static_cast<uint64_t>(i));
      w[i] = static_cast<float>((2.0 * u - 1.0) * bound);
    }
  } else {
    const double stddev = std::sqrt(2.0 / static_cast<double>(fan_in + fan_out));
    for (int64_t i = 0; i < n; ++i) {
      w[i] = static_cast<float>(stddev * normal_at(stream, static_cast<uint64_t>(i)));
    }
  }
}

void zero_view(const TensorView& v) {
  const int64_t rows = v.rank() == 2 ? v.shape[0] : 1;
  const int64_t cols = v.shape.back();
  const int64_t stride = v.rank() == 2 ? v.strides[0] : 0;
  float* base = v.as<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) base[r * stride + c] = 0.0f;
  }
}

absl::Status check_arena(const ParameterArena& arena) {
  if (arena.dtype() != DType::kF32) {
    return absl::UnimplementedError(absl::StrCat("surgery needs an f32 parameter arena, got ",
                                                 dtype_name(arena.dtype())));
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorView> expect_shape(const ParameterArena& arena, const std::string& name,
                                        std::vector<int64_t> shape) {
  auto v = arena.view(name);
  if (!v.ok()) return v.status();
  if (v->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat("parameter ", name, " has shape ",
                                                   shape_string(v->shape), ", expected ",
                                                   shape_string(shape)));
  }
  return v;
}

}  // namespace

absl::StatusOr<HeadSlices> head_slices(const ParameterArena& arena, const HeadGeometry& g,
                                       const HeadTarget& t) {
  if (t.layer < 0 || t.layer >= g.n_layer || t.head < 0 || t.head >= g.n_head) {
    return absl::OutOfRangeError(absl::StrCat("head (layer ", t.layer, ", head ", t.head,
                                              ") is outside a model of ", g.n_layer, " layers x ",
                                              g.n_head, " heads"));
  }
  const int64_t d = g.head_dim;
  const int64_t c = g.hidden();
  auto qkv_w = expect_shape(arena, name_of(g, ParamRole::kQkvWeight, t.layer), {3 * c, c});
  if (!qkv_w.ok()) return qkv_w.status();
  auto dense = expect_shape(arena, name_of(g, ParamRole::kDenseWeight, t.layer), {c, c});
  if (!dense.ok()) return dense.status();

  HeadSlices s;
  auto rows = qkv_w->rows(3 * d * t.head, 3 * d * (t.head + 1));
  if (!rows.ok()) return rows.status();
  s.qkv_weight_rows = *rows;
  const std::string bias_name = name_of(g, ParamRole::kQkvBias, t.layer);
  s.has_qkv_bias = !bias_name.empty();
  if (s.has_qkv_bias) {
    auto qkv_b = expect_shape(arena, bias_name, {3 * c});
    if (!qkv_b.ok()) return qkv_b.status();
    auto bias_rows = qkv_b->rows(3 * d * t.head, 3 * d * (t.head + 1));
    if (!bias_rows.ok()) return bias_rows.status();
    s.qkv_bias_rows = *bias_rows;
  }
  auto cols = dense->cols(d * t.head, d * (t.head + 1));
  if (!cols.ok()) return cols.status();
  s.dense_columns = *cols;
  return s;
}

absl::StatusOr<FrozenMask> surgery_mask(const ParameterArena& arena, const HeadGeometry& g,
                                        const SurgeryPlan& plan) {
  if (absl::Status s = validate_plan(plan, g, "plan"); !s.ok()) return s;
  FrozenMask mask(arena.size_elements());
  for (const HeadTarget& t : plan.targets) {
    auto slices = head_slices(arena, g, t);
    if (!slices.ok()) return slices.status();
    if (plan.trainable.qkv_weight) {
      if (auto s = mask.mark_trainable(slices->qkv_weight_rows); !s.ok()) return s;
    }
    if (plan.trainable.qkv_bias && slices->has_qkv_bias) {
      if (auto s = mask.mark_trainable(slices->qkv_bias_rows); !s.ok()) return s;
    }
    if (plan.trainable.dense_columns) {
      if (auto s = mask.mark_trainable(slices->dense_columns); !s.ok()) return s;
    }
  }
  return mask;
}

absl::StatusOr<FrozenMask> apply_surgery(ParameterArena& arena, const HeadGeometry& g,
                                         const SurgeryPlan& plan) {
  if (absl::Status s = check_arena(arena); !s.ok()) return s;
  // Building the mask first validates every target and view before any weight changes.
  auto mask = surgery_mask(arena, g, plan);
  if (!mask.ok()) return mask.status();
  for (const HeadTarget& t : plan.targets) {
    auto slices = head_slices(arena, g, t);
    if (!slices.ok()) return slices.status();
    if (plan.qkv_weight != QkvWeightInit::kKeep) {
      xavier_fill(slices->qkv_weight_rows, plan.qkv_weight, plan.seed, t);
    }
    if (plan.qkv_bias == QkvBiasInit::kZero && slices->has_qkv_bias) {
      zero_view(slices->qkv_bias_rows);
    }
    if (plan.dense_columns == DenseColumnsInit::kZero) zero_view(slices->dense_columns);
  }
  return mask;
}

}  // namespace engine
