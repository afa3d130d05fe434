// Validation of fused ALiBi attention parameters, shared by every device's kernel so that each
// rejects the same calls with the same message. Templates over the params struct: the CPU
// backend's AlibiAttentionParams (engine/backend.h) and the CUDA kernel family's AttentionParams
// (kernels/cuda/attention.h) carry the same field names, with storage-typed pointers on CUDA.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace engine {

// Shape, query_begin range, required pointers and scale, checked in that order; errors start
// with `op`.
template <typename Params>
absl::Status check_attention_params(const Params& p, const char* op) {
  if (p.batch < 0 || p.seq < 0 || p.heads <= 0 || p.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": bad shape batch=", p.batch, " seq=",
                                                   p.seq, " heads=", p.heads,
                                                   " head_dim=", p.head_dim));
  }
  if (p.query_begin < 0 || p.query_begin > p.seq) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": query_begin ", p.query_begin, " outside [0, ", p.seq, "]"));
  }
  if (p.qkv == nullptr || p.slopes == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": qkv, slopes and out are required"));
  }
  if (!(p.scale > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": scale must be positive, got ", p.scale));
  }
  return absl::OkStatus();
}

// What the backward needs besides check_attention_params: every query row, and lse, dout, dqkv.
template <typename Params>
absl::Status check_attention_backward_params(const Params& p, const char* op) {
  if (p.query_begin != 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": query_begin must be 0"));
  }
  if (p.lse == nullptr || p.dout == nullptr || p.dqkv == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": lse, out, dout and dqkv are required"));
  }
  return absl::OkStatus();
}

}  // namespace engine
