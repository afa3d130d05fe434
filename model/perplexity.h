// Sliding-window perplexity, the Hugging Face way, with exact token accounting.
// Contract: each document is scored on its own from its own position 0. Windows of at most
// seq_len tokens start at 0, stride, 2 * stride, ... and stop with the first window that reaches
// the document's end (transformers' documented loop). In each window only the tokens not scored
// by an earlier window are scored, each with the window's preceding tokens as context. A token
// that is the first of its window has no context there and is not scored: with stride < seq_len
// that is only a document's first token, so a document of n tokens contributes exactly
// max(n - 1, 0) tokens; with stride == seq_len (disjoint windows) every window's first token is
// skipped too. tokens_scored always counts exactly the tokens whose -ln p entered nll_sum (the
// off-by-one of weighting each window's mean loss by its target length is avoided).
// Windows from any documents are batched (right-padded) `batch` at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "model/model_directory.h"

namespace engine {

struct PerplexityOptions {
  int64_t seq_len = 512;
  int64_t stride = 256;   // 1 <= stride <= seq_len
  int64_t batch = 1;      // windows per forward pass
};

struct PerplexityResult {
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double nll_sum = 0.0;  // sum of -ln p over scored tokens
  double mean_nll() const { return tokens_scored > 0 ? nll_sum / tokens_scored : 0.0; }
};

// Called after each batch of windows with (windows done, windows total).
using PerplexityProgress = std::function<void(int64_t, int64_t)>;

absl::StatusOr<PerplexityResult> sliding_window_perplexity(
    const BloomModel& model, Backend& backend, const std::vector<std::vector<int32_t>>& documents,
    const PerplexityOptions& options, const PerplexityProgress& progress = nullptr);

}  // namespace engine
