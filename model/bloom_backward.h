// The BLOOM block graph on the tape (engine/tape.h): forward with kept activations, then the
// backward into a compact gradient buffer.
// Contract:
// - bloom_forward_backward runs bloom_forward with keep_activations, records one tape entry per
//   op of the graph over the kept intermediates (embedding, word_embeddings_layernorm, per
//   block: LN1, QKV linear, fused ALiBi attention, dense linear + residual, LN2, dense_h_to_4h,
//   GELU, dense_4h_to_h + residual; ln_f; tied classifier + cross-entropy) and walks it back.
// - The loss is the forward's: mean over scored positions (targets >= 0) of -log p(target).
//   `gradient_scale` multiplies its gradient (1 / grad_accum for accumulation), and the result
//   is ADDED to `grads`, which also decides what is computed (only trainable elements; see
//   tape.h). A batch with no scored position adds nothing.
// - Errors are the forward's (bad ids, targets, mask) or a kernel's, one line each.
#pragma once

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/tape.h"
#include "model/bloom_forward.h"
#include "model/model_directory.h"

namespace engine {

// `in.targets` is required; in.keep_activations is implied.
absl::StatusOr<ForwardResult> bloom_forward_backward(const BloomModel& model, Backend& backend,
                                                     const ForwardInputs& in,
                                                     CompactGradients& grads,
                                                     double gradient_scale = 1.0);

}  // namespace engine
