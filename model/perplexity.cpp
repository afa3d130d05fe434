// Sliding-window perplexity; contract in perplexity.h.
#include "model/perplexity.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "model/bloom_forward.h"

namespace engine {
namespace {

struct Window {
  int64_t document, begin, end;  // tokens [begin, end) of the document
  int64_t first_new;             // tokens at index >= first_new are scored in this window
};

}  // namespace

absl::StatusOr<PerplexityResult> sliding_window_perplexity(
    const BloomModel& model, Backend& backend, const std::vector<std::vector<int32_t>>& documents,
    const PerplexityOptions& options, const PerplexityProgress& progress) {
  if (options.seq_len < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("perplexity: seq_len must be at least 2, got ", options.seq_len));
  }
  if (options.stride < 1 || options.stride > options.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("perplexity: stride ", options.stride,
                                                   " must be in [1, seq_len = ",
                                                   options.seq_len, "]"));
  }
  if (options.batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("perplexity: batch must be at least 1, got ", options.batch));
  }
  std::vector<Window> windows;
  for (int64_t d = 0; d < static_cast<int64_t>(documents.size()); ++d) {
    const int64_t n = static_cast<int64_t>(documents[d].size());
    if (n == 0) return absl::InvalidArgumentError(absl::StrCat("perplexity: document ", d, " is empty"));
    int64_t scored_until = 1;  // token 0 has no context
    for (int64_t begin = 0; scored_until < n; begin += options.stride) {
      const int64_t end = std::min(begin + options.seq_len, n);
      windows.push_back({d, begin, end, scored_until});
      scored_until = end;
    }
  }

  PerplexityResult result;
  result.windows = static_cast<int64_t>(windows.size());
  for (size_t w0 = 0; w0 < windows.size(); w0 += options.batch) {
    const size_t w1 = std::min(windows.size(), w0 + static_cast<size_t>(options.batch));
    const int64_t B = static_cast<int64_t>(w1 - w0);
    int64_t T = 0;
    for (size_t w = w0; w < w1; ++w) T = std::max(T, windows[w].end - windows[w].begin);
    // Right padding: padded keys are never attended and padded rows are not scored.
    std::vector<int32_t> ids(B * T, 0), targets(B * T, -1);
    std::vector<uint8_t> mask(B * T, 0);
    for (int64_t b = 0; b < B; ++b) {
      const Window& win = windows[w0 + b];
      const std::vector<int32_t>& doc = documents[win.document];
      for (int64_t t = 0; t < win.end - win.begin; ++t) {
        ids[b * T + t] = doc[win.begin + t];
        mask[b * T + t] = 1;
        // Position t predicts token begin + t + 1, so a window's first token is never a target.
        const int64_t target = win.begin + t + 1;
        if (target < win.end && target >= win.first_new) targets[b * T + t] = doc[target];
      }
    }
    ForwardInputs in;
    in.batch = B, in.seq = T;
    in.ids = ids.data(), in.mask = mask.data(), in.targets = targets.data();
    absl::StatusOr<ForwardResult> r = bloom_forward(model, backend, in);
    if (!r.ok()) return r.status();
    for (int64_t k = 0; k < B * T; ++k) {
      if (targets[k] >= 0) result.nll_sum += r->row_loss[k];
    }
    result.tokens_scored += r->scored;
    if (progress) progress(static_cast<int64_t>(w1), result.windows);
  }
  return result;
}

}  // namespace engine
