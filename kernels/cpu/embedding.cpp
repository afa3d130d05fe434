// Token embedding lookup and its backward scatter-add.
// Contract: forward out[r] = table[ids[r]] for (rows) ids; backward dtable[ids[r]] += dout[r]
// (accumulated, duplicate ids summed). Ids outside [0, vocab) are an error naming the row; the
// check runs before anything is written. Storage (table, out, dout): a 16-bit row is copied as
// is (widening and rounding back is the identity) and dout rows are widened before the fp32
// scatter-add into dtable (kernels/cpu/storage.h).
#include <cstring>
#include <vector>

#include <omp.h>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/storage.h"

namespace engine::cpu {
namespace {

absl::Status check_ids(const EmbeddingParams& p, const char* op) {
  if (p.rows < 0 || p.width <= 0 || p.vocab <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": bad shape rows=", p.rows,
                                                   " width=", p.width, " vocab=", p.vocab));
  }
  if (p.ids == nullptr && p.rows > 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ids are required"));
  }
  for (int64_t r = 0; r < p.rows; ++r) {
    if (p.ids[r] < 0 || p.ids[r] >= p.vocab) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": token id ", p.ids[r], " at row ", r,
                                                     " is outside the vocabulary [0, ", p.vocab,
                                                     ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status embedding_forward(const EmbeddingParams& p) {
  if (absl::Status s = check_storage(p.storage, "embedding_forward"); !s.ok()) return s;
  if (absl::Status s = check_ids(p, "embedding_forward"); !s.ok()) return s;
  if (p.table == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("embedding_forward: table and out are required");
  }
  const int64_t row_bytes = static_cast<int64_t>(dtype_size(p.storage)) * p.width;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    std::memcpy(static_cast<char*>(p.out) + r * row_bytes,
                static_cast<const char*>(p.table) + static_cast<int64_t>(p.ids[r]) * row_bytes,
                static_cast<size_t>(row_bytes));
  }
  return absl::OkStatus();
}

absl::Status embedding_backward(const EmbeddingParams& p) {
  if (absl::Status s = check_storage(p.storage, "embedding_backward"); !s.ok()) return s;
  if (absl::Status s = check_ids(p, "embedding_backward"); !s.ok()) return s;
  if (p.dout == nullptr || p.dtable == nullptr) {
    return absl::InvalidArgumentError("embedding_backward: dout and dtable are required");
  }
  std::vector<float> widened_dout;
  const float* dout = static_cast<const float*>(p.dout);
  if (p.storage != DType::kF32) {
    widened_dout.resize(static_cast<size_t>(p.rows * p.width));
    convert_to_f32(p.storage, p.dout, widened_dout.data(), widened_dout.size());
    dout = widened_dout.data();
  }
  // Rows are processed in order and the width is split across threads, so two rows with the same
  // id never race and the summation order is deterministic.
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads();
    const int64_t tid = omp_get_thread_num();
    const int64_t begin = p.width * tid / threads;
    const int64_t end = p.width * (tid + 1) / threads;
    for (int64_t r = 0; r < p.rows; ++r) {
      const float* src = dout + r * p.width;
      float* dst = p.dtable + static_cast<int64_t>(p.ids[r]) * p.width;
      for (int64_t i = begin; i < end; ++i) dst[i] += src[i];
    }
  }
  return absl::OkStatus();
}

}  // namespace engine::cpu
