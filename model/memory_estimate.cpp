// Training memory plan; contract in memory_estimate.h.
#include "model/memory_estimate.h"

#include <algorithm>
#include <cstdio>
#include <map>

#include "absl/strings/str_cat.h"
#include "model/bloom_layout.h"

namespace engine {
namespace {

constexpr int64_t kF32 = 4;
// Live gradient buffers inside one block's backward, in hidden widths per row: the block
// output's gradient and the attention residual's (1 + 1), the GELU output's and the fc1
// output's (4 + 4), and a scratch copy of the largest one when a gradient is accumulated (4).
constexpr int64_t kBackwardWidths = 14;

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

}  // namespace

int64_t TrainingMemoryPlan::total_bytes() const {
  int64_t total = 0;
  for (const MemoryLine& l : lines) total += l.bytes;
  return total;
}

std::string TrainingMemoryPlan::table() const {
  std::string out;
  for (const MemoryLine& l : lines) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "  %-26s %12s  ", l.name.c_str(), mib(l.bytes).c_str());
    absl::StrAppend(&out, buf, l.detail, "\n");
  }
  char buf[96];
  std::snprintf(buf, sizeof buf, "  %-26s %12s  (%.2f GiB)\n", "total", mib(total_bytes()).c_str(),
                static_cast<double>(total_bytes()) / (int64_t{1} << 30));
  absl::StrAppend(&out, buf);
  return out;
}

absl::StatusOr<TrainingMemoryPlan> plan_training_memory(const BloomConfig& c,
                                                        const TrainableHeads* plan,
                                                        const TrainingMemoryShape& s) {
  if (s.batch <= 0 || s.seq <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory plan: batch ", s.batch, " and seq ", s.seq, " must be positive"));
  }
  if (s.weight_bytes != 2 && s.weight_bytes != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory plan: weight storage of ", s.weight_bytes, " bytes"));
  }
  const int64_t L = c.n_layer, H = c.n_head, C = c.hidden_size, D = c.head_dim();
  const int64_t rows = s.batch * s.seq, ab = s.activation_bytes;
  if (plan != nullptr) {
    for (const HeadTarget& t : plan->targets) {
      if (t.layer < 0 || t.layer >= L || t.head < 0 || t.head >= H) {
        return absl::InvalidArgumentError(
            absl::StrCat("memory plan: target layer ", t.layer, " head ", t.head,
                         " is outside the model (", L, " layers x ", H, " heads)"));
      }
    }
  }
  TrainingMemoryPlan out;
  for (const BloomParameterSpec& p : bloom_parameter_specs(c)) {
    int64_t n = 1;
    for (int64_t d : p.shape) n *= d;
    out.parameters += n;
  }

  // What trains, and so what the backward reads (bloom_forward_backward's keep policy).
  const bool full = plan == nullptr;
  std::map<int64_t, int64_t> heads_in_layer;  // layer -> targets
  if (!full) {
    for (const HeadTarget& t : plan->targets) ++heads_in_layer[t.layer];
  }
  const bool qkv_w = full || plan->trainable.qkv_weight;
  const bool qkv_b = full || (plan->trainable.qkv_bias && family_traits(c).linear_bias);
  const bool dense = full || plan->trainable.dense_columns;
  if (full) {
    out.trainable = out.parameters;
  } else {
    const int64_t per_head = (qkv_w ? 3 * D * C : 0) + (qkv_b ? 3 * D : 0) + (dense ? C * D : 0);
    out.trainable = per_head * static_cast<int64_t>(plan->targets.size());
  }
  const bool something_trains = out.trainable > 0;
  // A plan trains attention slices only: embedding, LayerNorms and MLPs stay frozen.
  const bool embedding_trains = full;
  const bool mlp_trains = full;
  // The lowest block holding a trainable element (L when none does); heads_in_layer is ordered.
  const int64_t keep_from = full ? 0 : something_trains ? heads_in_layer.begin()->first : L;

  // Weights and per-trainable-element state.
  out.lines.push_back({"weights", out.parameters * s.weight_bytes,
                       absl::StrCat(out.parameters, " parameters x ", s.weight_bytes, " B")});
  const int64_t mask_bytes = (out.parameters + 63) / 64 * 8;
  out.lines.push_back({"frozen-mask bits", mask_bytes, "one bit per element"});
  out.lines.push_back({"gradient (compact)", out.trainable * kF32,
                       absl::StrCat(out.trainable, " trainable elements x 4 B")});
  out.lines.push_back({"AdamW moments", 2 * out.trainable * kF32, "m and v, fp32, trainable only"});
  if (s.weight_bytes < kF32) {
    out.lines.push_back({"fp32 master weights", out.trainable * kF32, "trainable elements only"});
  }
  if (s.device) {
    constexpr int64_t kUpdateChunk = int64_t{1} << 20;  // model/trainer.cpp
    const int64_t chunk = std::min(out.trainable, kUpdateChunk);
    out.lines.push_back({"update index", chunk * 8,
                         absl::StrCat(chunk, " arena offsets of the update's chunk x 8 B")});
  }

  // Activations.
  auto block_bytes = [&](bool ln2, bool gelu) {
    // x, ln1, qkv (3), attn, x_mid, ln2, fc1 (4), gelu (4); with clip_qkv also the
    // pre-clamp projection (3) the clamp's backward reads.
    const int64_t clip_widths = c.clip_qkv > 0.0 ? 3 : 0;
    const int64_t widths =
        1 + 1 + 3 + clip_widths + 1 + 1 + (ln2 ? 1 : 0) + 4 + (gelu ? 4 : 0);
    return rows * C * widths * ab + rows * 4 * kF32 + s.batch * H * s.seq * kF32;
  };
  const int64_t full_block = block_bytes(true, true);
  int64_t kept = 0;
  std::string kept_detail;
  if (!s.recompute) {
    int64_t kept_blocks = 0;
    bool scratch = keep_from > 0;
    for (int64_t l = keep_from; l < L; ++l) {
      kept += block_bytes(mlp_trains, mlp_trains);
      ++kept_blocks;
      scratch = scratch || !mlp_trains;
    }
    if (scratch) kept += full_block;
    kept_detail = absl::StrCat(kept_blocks, " blocks from layer ", keep_from,
                               mlp_trains ? "" : " without frozen MLPs' ln2/GELU outputs",
                               scratch ? ", + 1 scratch block" : "");
  } else {
    kept = L * rows * C * ab + 2 * full_block;
    kept_detail = absl::StrCat(L, " block inputs + 2 blocks' intermediates (recomputed)");
  }
  out.lines.push_back({"activations (blocks)", kept, kept_detail});
  const int64_t ends = 3 * rows * C * ab + rows * 4 * kF32 + rows * 4;
  out.lines.push_back({"activations (ends)", ends, "embedding, final residual, ln_f rows"});
  if (!embedding_trains) {
    out.lines.push_back({"classifier input grad", rows * C * kF32,
                         "from the forward's pass over the vocabulary"});
  }

  // The backward's transient buffers.
  int64_t largest_slice = 0;
  if (full) {
    largest_slice = std::max<int64_t>(c.vocab_size * C, 4 * C * C);
  } else {
    for (const auto& [layer, k] : heads_in_layer) {
      largest_slice = std::max({largest_slice, qkv_w ? k * 3 * D * C : 0, dense ? C * k * D : 0});
    }
  }
  int64_t transient = kBackwardWidths * rows * C * kF32 + largest_slice * kF32;
  if (s.recompute) transient += 2 * rows * C * kF32;  // the segment's output and its gradient
  out.lines.push_back({"backward transients", something_trains ? transient : 0,
                       "gradients inside one block + largest weight-gradient slice"});
  return out;
}

}  // namespace engine
