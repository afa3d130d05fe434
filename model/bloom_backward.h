// The BLOOM block graph on the tape (engine/tape.h): forward with kept activations, then the
// backward into a compact gradient buffer.
// Contract:
// - bloom_forward_backward runs bloom_forward with keep_activations, records one tape entry per
//   op of the graph over the kept intermediates (embedding, word_embeddings_layernorm, per
//   block: LN1, QKV linear, fused ALiBi attention, dense linear + residual, LN2, dense_h_to_4h,
//   GELU, dense_4h_to_h + residual; ln_f; classifier (the tied embedding or an untied lm_head) + cross-entropy) and walks it back.
// - The loss is the forward's: mean over scored positions (targets >= 0) of -log p(target).
//   `gradient_scale` multiplies its gradient (1 / grad_accum for accumulation), and the result
//   is ADDED to `grads`, which also decides what is computed (only trainable elements; see
//   tape.h). A batch with no scored position adds nothing.
// - recompute: the forward keeps only each block's input; the backward runs one tape segment per
//   block from the top, recomputing that block's intermediates first (activation memory of one
//   block instead of L, for one extra block forward each). Same results, bit for bit: the same
//   ops run on the same values in the same order.
// - sink_loss (controlled collapse, docs/REPAIR.md): when its weight is not empty, the loss also
//   holds sum over (layer l, head h) of weight[l * H + h] * mean over the real query rows t of
//   -log A[t, first real key]; its gradient (times gradient_scale) enters through the attention
//   backward (AlibiAttentionParams::sink_loss_weight) and `value` receives this micro-batch's
//   auxiliary loss. ForwardResult::loss stays the language-model loss alone.
// - Backends: the CPU, or a device with the model's weights resident (model/device_model.h);
//   `grads` must live on the same kind of backend (CompactGradients' backend constructor), else
//   FailedPrecondition. Storage: the weights' (storage_on): with BF16 / F16 weights (a device, or
//   the CPU's storage twin) the tape runs in that type, activations and activation gradients
//   16-bit, parameter gradients fp32 (engine/tape.h). A sink loss runs on a device too: its
//   kernel term in the device's attention backward, its value from the backend op
//   attention_sink_sums over the block's QKV and lse where they are (only H per-head sums in
//   double come back per layer); with 16-bit weights it is Unimplemented (the op reads fp32).
// - Errors are the forward's (bad ids, targets, mask) or a kernel's, one line each.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/tape.h"
#include "model/bloom_forward.h"
#include "model/model_directory.h"

namespace engine {

// The auxiliary attention-sink loss of controlled collapse (contract above).
struct SinkLoss {
  std::vector<float> weight;  // (L, H) per-head weight W; empty = no auxiliary loss
  double value = 0.0;         // out: the weighted auxiliary loss of the last call
};

// `in.targets` is required; in.keep_activations is implied. `sink_loss` may be null.
absl::StatusOr<ForwardResult> bloom_forward_backward(const BloomModel& model, Backend& backend,
                                                     const ForwardInputs& in,
                                                     CompactGradients& grads,
                                                     double gradient_scale = 1.0,
                                                     bool recompute = false,
                                                     SinkLoss* sink_loss = nullptr);

}  // namespace engine
