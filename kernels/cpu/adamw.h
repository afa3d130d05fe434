// Masked AdamW (and plain SGD) on the CPU over the compact trainable state.
// Contract: element i of grad/m/v/master belongs to arena element index[i]; only those arena
// elements are ever written, so every other parameter stays bit-identical. The update is
// PyTorch's AdamW: decoupled weight decay p -= lr*wd*p, then the bias-corrected Adam step.
#pragma once

#include "absl/status/status.h"
#include "engine/backend.h"

namespace engine::cpu {

absl::Status masked_adamw(const MaskedAdamWParams& p);

// p[index[i]] -= lr * grad_scale * grad[i] (no state): for ablations and gradient checks.
absl::Status masked_sgd(const MaskedAdamWParams& p);

// sqrt(sum grad[i]^2), accumulated in double in a fixed order (independent of the thread count).
double global_grad_norm(const float* grad, int64_t n);

}  // namespace engine::cpu
