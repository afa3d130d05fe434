// Attention dispatch (kernels/cuda/attention.h), the fp32 kernels, and the kernels every storage
// type shares: row layout (first real key, derived positions, real-row counts), fully padded
// rows, the backward's delta and uniform-dV terms, and the per-head statistics reduction.
//
// The fp32 kernels are deliberately plain, to be right by construction: one warp per query row
// (forward, dQ) or per key (dK, dV); the other side streams through shared memory in tiles of
// kTile rows; each lane owns the head-dim elements d = lane + 32 s; dot products are warp sums.
// Per tile a lane holds the score of one key (or query), so the online softmax rescales once per
// tile, as in the CPU kernel. Every quantity is the CPU kernel's (kernels/cpu/attention.cpp):
//   s = q.k * scale + slope * pos_j for real keys j <= i; rows before the first real key are the
//   Note [fully padded query rows] case (uniform over all T keys, lse = log T, no dQ/dK).
// The statistics kernel recomputes, per real query row, the few scores the statistics need (the
// first real key and the local window) from q, k and the saved lse instead of capturing them in
// the main loop; entropy comes from the main loop's running sum of p (s - m), as on the CPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/attention_checks.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_internal.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/scratch.h"
#include "kernels/cuda/storage.cuh"

namespace engine::cuda {
namespace {

using attention_detail::first_real_key;
using attention_detail::key_is_real;
using attention_detail::key_position;
using attention_detail::sink_first_key;
using attention_detail::KernelArgs;
using attention_detail::token_stride;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// fp32 kernels: 8 warps per block, one row each; tiles of 32 rows of the other side, so a lane
// holds exactly one score of the tile.
constexpr int kWarps = 8;
constexpr int kBlockThreads = kWarps * kWarpSize;
constexpr int kTile = kWarpSize;
// Each lane owns up to kMaxSlots head-dim elements: head_dim <= 256 for the fp32 variant.
constexpr int kMaxSlots = 8;
constexpr int64_t kMaxF32HeadDim = kMaxSlots * kWarpSize;
// local_mass window (METHOD.md section 2): keys whose position is pos_i - 2 .. pos_i.
constexpr int32_t kLocalWindow = 2;
constexpr int kStatCount = 3;
constexpr size_t kDefaultSharedBytes = 48 * 1024;

// ---- shared kernels ------------------------------------------------------------------------

// One thread per batch row (a sequential scan over T: cheap next to the attention itself, and
// exact). Writes the first real key, derived positions (cumsum(mask) - 1, 0 for padding) when
// asked, and adds the number of real query rows in [query_begin, T) to rows_acc.
__global__ void row_layout_kernel(int64_t batch, int64_t seq, int64_t query_begin,
                                  const uint8_t* mask, int32_t* first_real, int32_t* positions,
                                  int64_t* rows_acc) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  int32_t count = 0;
  int64_t first = seq;
  int64_t real_rows = 0;
  for (int64_t j = 0; j < seq; ++j) {
    const bool real = mask == nullptr || mask[b * seq + j] != 0;
    if (real && first == seq) first = j;
    count += real ? 1 : 0;
    if (positions != nullptr) positions[b * seq + j] = real ? count - 1 : 0;
    if (real && j >= query_begin) ++real_rows;
  }
  if (first_real != nullptr) first_real[b] = static_cast<int32_t>(first);
  if (rows_acc != nullptr) rows_acc[b] += real_rows;
}

// Fully padded query rows [query_begin, first real key): out = mean of V over all T keys,
// lse = log T. One block per (b, h).
template <typename Elem>
__global__ void padded_rows_kernel(KernelArgs a) {
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t T = a.seq, D = a.head_dim, ts = token_stride(a);
  const int64_t end = min(first_real_key(a, b), T);
  if (end <= a.query_begin) return;
  const Elem* v = static_cast<const Elem*>(a.qkv) + b * T * ts + h * 3 * D + 2 * D;
  Elem* out = static_cast<Elem*>(a.out);
  const int64_t q_rows = T - a.query_begin;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float sum = 0.0f;
    for (int64_t j = 0; j < T; ++j) sum += to_float(v[j * ts + d]);
    const Elem mean = from_float<Elem>(sum / static_cast<float>(T));
    for (int64_t i = a.query_begin; i < end; ++i) {
      out[(b * q_rows + i - a.query_begin) * a.heads * D + h * D + d] = mean;
    }
  }
  if (threadIdx.x == 0) {
    for (int64_t i = a.query_begin; i < end; ++i) a.lse[bh * T + i] = logf(static_cast<float>(T));
  }
}

// delta[b, h, i] = dout_i . out_i (the softmax backward's row term). One warp per (b, i, h).
template <typename Elem>
__global__ void delta_kernel(KernelArgs a, float* delta) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t H = a.heads, T = a.seq, D = a.head_dim;
  if (warp >= a.batch * T * H) return;
  const int64_t h = warp % H, bi = warp / H, b = bi / T, i = bi % T;
  const Elem* o = static_cast<const Elem*>(a.out) + bi * H * D + h * D;
  const Elem* g = static_cast<const Elem*>(a.dout) + bi * H * D + h * D;
  float part = 0.0f;
  for (int64_t d = lane; d < D; d += kWarpSize) part += to_float(o[d]) * to_float(g[d]);
  float total = warp_sum(part);
  // The sink loss's w_h P[i, j] for real query rows (KernelArgs::sink_weight).
  if (a.sink_weight != nullptr && key_is_real(a, b, i)) total -= a.sink_weight[h];
  if (lane == 0) delta[(b * H + h) * T + i] = total;
}

// uniform_dv[b, h, :] = (1/T) sum over fully padded rows i of dout_i: those rows attend
// uniformly to every key, so every key's dV receives this. One block per (b, h).
template <typename Elem>
__global__ void uniform_dv_kernel(KernelArgs a, float* uniform_dv) {
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t T = a.seq, D = a.head_dim;
  const int64_t end = min(first_real_key(a, b), T);
  const Elem* g = static_cast<const Elem*>(a.dout) + b * T * a.heads * D + h * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float sum = 0.0f;
    for (int64_t i = 0; i < end; ++i) sum += to_float(g[i * a.heads * D + d]);
    uniform_dv[bh * D + d] = sum / static_cast<float>(T);
  }
}

// Score s[i, j] recomputed by one warp (every lane gets it).
template <typename Elem>
__device__ float warp_score(const KernelArgs& a, const Elem* base, int64_t b, int64_t i,
                            int64_t j, float slope) {
  const int64_t ts = token_stride(a), D = a.head_dim;
  const Elem* q = base + i * ts;
  const Elem* k = base + j * ts + D;
  float part = 0.0f;
  for (int64_t d = threadIdx.x % kWarpSize; d < D; d += kWarpSize) {
    part += to_float(q[d]) * to_float(k[d]);
  }
  return warp_sum(part) * a.scale + slope * key_position(a, b, j);
}

// Per-(b, h) statistics over the real query rows of [query_begin, T), added to the accumulator.
// One block per (b, h); warp w takes rows query_begin + w, + kWarps, ...; the warps' partial
// sums are combined in warp order, so the result does not depend on scheduling.
template <typename Elem>
__global__ void __launch_bounds__(kBlockThreads) stats_kernel(KernelArgs a,
                                                              HeadStatsAccumulator acc) {
  __shared__ double partial[kWarps][kStatCount];
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t T = a.seq, ts = token_stride(a);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const Elem* base = static_cast<const Elem*>(a.qkv) + b * T * ts + h * 3 * a.head_dim;
  const float slope = a.slopes[h];
  const int64_t first = first_real_key(a, b);
  double bos = 0.0, entropy = 0.0, local = 0.0;
  for (int64_t i = a.query_begin + warp; i < T; i += kWarps) {
    if (!key_is_real(a, b, i)) continue;  // warp-uniform
    const float lse = a.lse[bh * T + i];
    if (acc.bos_mass_sum != nullptr) {
      bos += expf(warp_score(a, base, b, i, first, slope) - lse);
    }
    if (acc.entropy_sum != nullptr) entropy += a.row_entropy[bh * T + i];
    if (acc.local_mass_sum != nullptr) {
      // The real keys with pos_j >= pos_i - kLocalWindow are the last few real keys <= i.
      const float lowest = key_position(a, b, i) - static_cast<float>(kLocalWindow);
      for (int64_t j = i; j >= first; --j) {
        if (!key_is_real(a, b, j)) continue;
        if (key_position(a, b, j) < lowest) break;
        local += expf(warp_score(a, base, b, i, j, slope) - lse);
      }
    }
  }
  if (lane == 0) {
    partial[warp][0] = bos;
    partial[warp][1] = entropy;
    partial[warp][2] = local;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double sums[kStatCount] = {0.0, 0.0, 0.0};
    for (int w = 0; w < kWarps; ++w) {
      for (int s = 0; s < kStatCount; ++s) sums[s] += partial[w][s];
    }
    if (acc.bos_mass_sum != nullptr) acc.bos_mass_sum[bh] += sums[0];
    if (acc.entropy_sum != nullptr) acc.entropy_sum[bh] += sums[1];
    if (acc.local_mass_sum != nullptr) acc.local_mass_sum[bh] += sums[2];
  }
}

// ---- fp32 kernels ----------------------------------------------------------------------------

// Grid (ceil(q_rows / kWarps), H, B). Dynamic shared memory: K and V tiles, (kTile, D) each.
__global__ void __launch_bounds__(kBlockThreads) f32_forward_kernel(KernelArgs a) {
  float* shared = dynamic_shared<float>();
  const int64_t D = a.head_dim, T = a.seq, H = a.heads, ts = token_stride(a);
  float* sk = shared;
  float* sv = shared + kTile * D;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t row_begin = a.query_begin + blockIdx.x * static_cast<int64_t>(kWarps);
  const int64_t i = row_begin + warp;
  const int64_t first = first_real_key(a, b);
  const bool row_live = i < T && i >= first;
  const float* base = static_cast<const float*>(a.qkv) + b * T * ts + h * 3 * D;
  const float slope = a.slopes[h];

  float q[kMaxSlots], acc[kMaxSlots];
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    const int64_t d = lane + kWarpSize * s;
    q[s] = row_live && d < D ? base[i * ts + d] : 0.0f;
    acc[s] = 0.0f;
  }
  float m = kNegInf, l = 0.0f, ps = 0.0f;  // running max, sum of e, sum of e * (s - m)
  const int64_t key_end = min(row_begin + kWarps, T);
  for (int64_t j0 = first; j0 < key_end; j0 += kTile) {
    const int64_t nk = min(static_cast<int64_t>(kTile), key_end - j0);
    __syncthreads();  // the previous tile is no longer read
    for (int64_t e = threadIdx.x; e < nk * D; e += blockDim.x) {
      const int64_t c = e / D, d = e % D;
      const float* kr = base + (j0 + c) * ts + D;
      sk[c * D + d] = kr[d];
      sv[c * D + d] = kr[D + d];
    }
    __syncthreads();
    float score = kNegInf;  // lane c: score of key j0 + c
    for (int c = 0; c < nk; ++c) {
      float part = 0.0f;
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) {
        const int64_t d = lane + kWarpSize * s;
        if (d < D) part += q[s] * sk[c * D + d];
      }
      const float dot = warp_sum(part);
      const int64_t j = j0 + c;
      if (lane == c && row_live && j <= i && key_is_real(a, b, j)) {
        score = dot * a.scale + slope * key_position(a, b, j);
      }
    }
    const float tile_max = warp_max(score);
    if (tile_max == kNegInf) continue;  // nothing visible to this row here (warp-uniform)
    const float m_new = fmaxf(m, tile_max);
    const float alpha = m == kNegInf ? 0.0f : expf(m - m_new);
    const float shift = m == kNegInf ? 0.0f : m - m_new;
    const bool live = score != kNegInf;
    const float rel = live ? score - m_new : 0.0f;
    const float e = live ? expf(rel) : 0.0f;
    const float tile_sum = warp_sum(e);
    const float tile_ps = warp_sum(e * rel);
    // sum e (s - m) re-expressed against the new max: e scales by alpha and each (s - m_old)
    // gains (m_old - m_new).
    ps = alpha * (ps + shift * l) + tile_ps;
    l = alpha * l + tile_sum;
    m = m_new;
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) acc[s] *= alpha;
    for (int c = 0; c < nk; ++c) {
      const float ec = __shfl_sync(kFullWarp, e, c);
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) {
        const int64_t d = lane + kWarpSize * s;
        if (d < D) acc[s] += ec * sv[c * D + d];
      }
    }
  }
  if (!row_live) return;  // rows before the first real key: padded_rows_kernel
  float* out = static_cast<float*>(a.out) + (b * (T - a.query_begin) + i - a.query_begin) * H * D +
               h * D;
  const float inv = 1.0f / l;
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    const int64_t d = lane + kWarpSize * s;
    if (d < D) out[d] = acc[s] * inv;
  }
  if (lane == 0) {
    a.lse[(b * H + h) * T + i] = m + logf(l);
    if (a.row_entropy != nullptr) a.row_entropy[(b * H + h) * T + i] = logf(l) - ps * inv;
  }
}

// dQ, one warp per query row. Grid (ceil(T / kWarps), H, B); shared K and V tiles.
__global__ void __launch_bounds__(kBlockThreads) f32_dq_kernel(KernelArgs a) {
  float* shared = dynamic_shared<float>();
  const int64_t D = a.head_dim, T = a.seq, H = a.heads, ts = token_stride(a);
  float* sk = shared;
  float* sv = shared + kTile * D;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t row_begin = blockIdx.x * static_cast<int64_t>(kWarps);
  const int64_t i = row_begin + warp;
  const int64_t first = first_real_key(a, b);
  const bool row_live = i < T && i >= first;
  const float* base = static_cast<const float*>(a.qkv) + b * T * ts + h * 3 * D;
  const float* dout = static_cast<const float*>(a.dout) + (b * T + i) * H * D + h * D;
  const float slope = a.slopes[h];
  const float lse = row_live ? a.lse[(b * H + h) * T + i] : 0.0f;
  const float delta = row_live ? a.delta[(b * H + h) * T + i] : 0.0f;

  float q[kMaxSlots], g[kMaxSlots], dq[kMaxSlots];
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    const int64_t d = lane + kWarpSize * s;
    q[s] = row_live && d < D ? base[i * ts + d] : 0.0f;
    g[s] = row_live && d < D ? dout[d] : 0.0f;
    dq[s] = 0.0f;
  }
  const int64_t key_end = min(row_begin + kWarps, T);
  for (int64_t j0 = first; j0 < key_end; j0 += kTile) {
    const int64_t nk = min(static_cast<int64_t>(kTile), key_end - j0);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < nk * D; e += blockDim.x) {
      const int64_t c = e / D, d = e % D;
      const float* kr = base + (j0 + c) * ts + D;
      sk[c * D + d] = kr[d];
      sv[c * D + d] = kr[D + d];
    }
    __syncthreads();
    float ds = 0.0f;  // lane c: dS[i, j0 + c] * scale
    for (int c = 0; c < nk; ++c) {
      float part_s = 0.0f, part_p = 0.0f;
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) {
        const int64_t d = lane + kWarpSize * s;
        if (d < D) {
          part_s += q[s] * sk[c * D + d];
          part_p += g[s] * sv[c * D + d];
        }
      }
      const float dot_s = warp_sum(part_s), dot_p = warp_sum(part_p);
      const int64_t j = j0 + c;
      if (lane == c && row_live && j <= i && key_is_real(a, b, j)) {
        const float prob = expf(dot_s * a.scale + slope * key_position(a, b, j) - lse);
        ds = prob * (dot_p - delta) * a.scale + sink_first_key(a, b, h, i, j, first);
      }
    }
    for (int c = 0; c < nk; ++c) {
      const float dsc = __shfl_sync(kFullWarp, ds, c);
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) {
        const int64_t d = lane + kWarpSize * s;
        if (d < D) dq[s] += dsc * sk[c * D + d];
      }
    }
  }
  if (i >= T) return;
  float* dst = static_cast<float*>(a.dqkv) + b * T * ts + h * 3 * D + i * ts;
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    const int64_t d = lane + kWarpSize * s;
    if (d < D) dst[d] = dq[s];  // zero for fully padded rows
  }
}

// dK and dV, one warp per key. Grid (ceil(T / kWarps), H, B); shared tiles of Q and dO rows
// with their lse and delta.
__global__ void __launch_bounds__(kBlockThreads) f32_dkdv_kernel(KernelArgs a) {
  float* shared = dynamic_shared<float>();
  const int64_t D = a.head_dim, T = a.seq, H = a.heads, ts = token_stride(a);
  float* sq = shared;                 // (kTile, D)
  float* sg = shared + kTile * D;     // (kTile, D)
  float* slse = sg + kTile * D;       // (kTile)
  float* sdelta = slse + kTile;       // (kTile)
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t b = blockIdx.z, h = blockIdx.y, bh = b * H + h;
  const int64_t key_begin = blockIdx.x * static_cast<int64_t>(kWarps);
  const int64_t j = key_begin + warp;
  const bool key_live = j < T && key_is_real(a, b, j);
  const float* base = static_cast<const float*>(a.qkv) + b * T * ts + h * 3 * D;
  const float* dout = static_cast<const float*>(a.dout) + b * T * H * D + h * D;
  const float bias = key_live ? a.slopes[h] * key_position(a, b, j) : 0.0f;

  float k[kMaxSlots], v[kMaxSlots], dk[kMaxSlots], dv[kMaxSlots];
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    const int64_t d = lane + kWarpSize * s;
    k[s] = key_live && d < D ? base[j * ts + D + d] : 0.0f;
    v[s] = key_live && d < D ? base[j * ts + 2 * D + d] : 0.0f;
    dk[s] = 0.0f;
    dv[s] = a.uniform_dv != nullptr && d < D ? a.uniform_dv[bh * D + d] : 0.0f;
  }
  const int64_t first = first_real_key(a, b);
  for (int64_t i0 = max(key_begin, first); i0 < T; i0 += kTile) {
    const int64_t nq = min(static_cast<int64_t>(kTile), T - i0);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < nq * D; e += blockDim.x) {
      const int64_t c = e / D, d = e % D;
      sq[c * D + d] = base[(i0 + c) * ts + d];
      sg[c * D + d] = dout[(i0 + c) * H * D + d];
    }
    for (int64_t c = threadIdx.x; c < nq; c += blockDim.x) {
      slse[c] = a.lse[bh * T + i0 + c];
      sdelta[c] = a.delta[bh * T + i0 + c];
    }
    __syncthreads();
    float prob = 0.0f, ds = 0.0f;  // lane c: P[i0 + c, j] and dS[i0 + c, j] * scale
    for (int c = 0; c < nq; ++c) {
      float part_s = 0.0f, part_p = 0.0f;
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) {
        const int64_t d = lane + kWarpSize * s;
        if (d < D) {
          part_s += sq[c * D + d] * k[s];
          part_p += sg[c * D + d] * v[s];
        }
      }
      const float dot_s = warp_sum(part_s), dot_p = warp_sum(part_p);
      if (lane == c && key_live && i0 + c >= j) {
        prob = expf(dot_s * a.scale + bias - slse[c]);
        ds = prob * (dot_p - sdelta[c]) * a.scale + sink_first_key(a, b, h, i0 + c, j, first);
      }
    }
    for (int c = 0; c < nq; ++c) {
      const float pc = __shfl_sync(kFullWarp, prob, c);
      const float dsc = __shfl_sync(kFullWarp, ds, c);
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) {
        const int64_t d = lane + kWarpSize * s;
        if (d < D) {
          dv[s] += pc * sg[c * D + d];
          dk[s] += dsc * sq[c * D + d];
        }
      }
    }
  }
  if (j >= T) return;
  float* dst = static_cast<float*>(a.dqkv) + b * T * ts + h * 3 * D + j * ts;
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    const int64_t d = lane + kWarpSize * s;
    if (d < D) {
      dst[D + d] = dk[s];
      dst[2 * D + d] = dv[s];
    }
  }
}

// ---- host side -------------------------------------------------------------------------------

int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

template <typename Kernel>
absl::Status allow_shared_bytes(Kernel kernel, size_t bytes) {
  if (bytes <= kDefaultSharedBytes) return absl::OkStatus();
  ENGINE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
  return absl::OkStatus();
}

absl::Status check(const AttentionParams& p, const char* op, bool backward) {
  if (!storage_supported(p.storage)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": storage must be F32, BF16 or F16, got ", dtype_name(p.storage)));
  }
  if (absl::Status s = check_attention_params(p, op); !s.ok()) return s;
  if (p.storage == StorageType::kF32) {
    if (p.head_dim > kMaxF32HeadDim) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": fp32 head_dim ", p.head_dim,
                                                     " above the supported ", kMaxF32HeadDim));
    }
  } else {
    if (!tensor_core_head_dim_supported(p.head_dim)) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": 16-bit attention supports head_dim 64, 80, 96 and 128, got ", p.head_dim));
    }
    // The tensor-core kernels move 16-byte vectors.
    constexpr uintptr_t kAlign = 16;
    for (const void* ptr : {p.qkv, static_cast<const void*>(p.out), p.dout,
                            static_cast<const void*>(p.dqkv)}) {
      if (reinterpret_cast<uintptr_t>(ptr) % kAlign != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(op, ": 16-bit qkv/out/dout/dqkv must be 16-byte aligned"));
      }
    }
  }
  if (backward) return check_attention_backward_params(p, op);
  return absl::OkStatus();
}

KernelArgs kernel_args(const AttentionParams& p) {
  KernelArgs a{};
  a.batch = p.batch, a.seq = p.seq, a.heads = p.heads, a.head_dim = p.head_dim;
  a.query_begin = p.query_begin, a.scale = p.scale;
  a.qkv = p.qkv, a.slopes = p.slopes, a.positions = p.positions, a.mask = p.mask;
  a.out = p.out, a.lse = p.lse, a.dout = p.dout, a.dqkv = p.dqkv;
  a.sink_weight = p.sink_loss_weight;
  return a;
}

// Fills a.first_real (and a.positions when derived) for masked inputs, and counts real rows.
absl::Status prepare_rows(const AttentionParams& p, int64_t* rows_acc, StreamScratch& scratch,
                          KernelArgs& a) {
  if (p.mask == nullptr && rows_acc == nullptr) return absl::OkStatus();
  int32_t* first_real = nullptr;
  int32_t* positions = nullptr;
  if (p.mask != nullptr) {
    if (absl::Status s = scratch.allocate(&first_real, p.batch); !s.ok()) return s;
    if (p.positions == nullptr) {
      if (absl::Status s = scratch.allocate(&positions, p.batch * p.seq); !s.ok()) return s;
    }
  }
  constexpr int kThreads = 128;
  launch_kernel<row_layout_kernel>(static_cast<unsigned>(ceil_div(p.batch, kThreads)), kThreads, 0,
                                   p.stream, p.batch, p.seq, p.query_begin, p.mask, first_real,
                                   positions, rows_acc);
  ENGINE_CUDA_LAUNCH_CHECK(row_layout_kernel);
  if (first_real != nullptr) a.first_real = first_real;
  if (positions != nullptr) a.positions = positions;
  return absl::OkStatus();
}

template <typename Elem>
absl::Status shared_forward_tail(const AttentionParams& p, const KernelArgs& a) {
  const unsigned bh_blocks = static_cast<unsigned>(p.batch * p.heads);
  if (p.mask != nullptr) {
    launch_kernel<padded_rows_kernel<Elem>>(bh_blocks, kBlockThreads, 0, p.stream, a);
    ENGINE_CUDA_LAUNCH_CHECK(padded_rows_kernel);
  }
  const HeadStatsAccumulator& st = p.stats;
  if (st.bos_mass_sum != nullptr || st.entropy_sum != nullptr || st.local_mass_sum != nullptr) {
    launch_kernel<stats_kernel<Elem>>(bh_blocks, kBlockThreads, 0, p.stream, a, st);
    ENGINE_CUDA_LAUNCH_CHECK(stats_kernel);
  }
  return absl::OkStatus();
}

absl::Status f32_forward(const KernelArgs& a, cudaStream_t stream) {
  const size_t shared = 2 * kTile * a.head_dim * sizeof(float);
  if (absl::Status s = allow_shared_bytes(f32_forward_kernel, shared); !s.ok()) return s;
  const dim3 grid(static_cast<unsigned>(ceil_div(a.seq - a.query_begin, kWarps)),
                  static_cast<unsigned>(a.heads), static_cast<unsigned>(a.batch));
  launch_kernel<f32_forward_kernel>(grid, kBlockThreads, shared, stream, a);
  ENGINE_CUDA_LAUNCH_CHECK(f32_forward_kernel);
  return absl::OkStatus();
}

absl::Status f32_backward(const KernelArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(a.seq, kWarps)), static_cast<unsigned>(a.heads),
                  static_cast<unsigned>(a.batch));
  const size_t dq_shared = 2 * kTile * a.head_dim * sizeof(float);
  if (absl::Status s = allow_shared_bytes(f32_dq_kernel, dq_shared); !s.ok()) return s;
  launch_kernel<f32_dq_kernel>(grid, kBlockThreads, dq_shared, stream, a);
  ENGINE_CUDA_LAUNCH_CHECK(f32_dq_kernel);
  const size_t kv_shared = (2 * kTile * a.head_dim + 2 * kTile) * sizeof(float);
  if (absl::Status s = allow_shared_bytes(f32_dkdv_kernel, kv_shared); !s.ok()) return s;
  launch_kernel<f32_dkdv_kernel>(grid, kBlockThreads, kv_shared, stream, a);
  ENGINE_CUDA_LAUNCH_CHECK(f32_dkdv_kernel);
  return absl::OkStatus();
}

template <typename Elem>
absl::Status backward_prologue(const AttentionParams& p, const KernelArgs& a, float* delta,
                               float* uniform_dv) {
  const int64_t warps = p.batch * p.seq * p.heads;
  launch_kernel<delta_kernel<Elem>>(static_cast<unsigned>(ceil_div(warps, kWarps)), kBlockThreads,
                                    0, p.stream, a, delta);
  ENGINE_CUDA_LAUNCH_CHECK(delta_kernel);
  if (uniform_dv != nullptr) {
    launch_kernel<uniform_dv_kernel<Elem>>(static_cast<unsigned>(p.batch * p.heads), kBlockThreads,
                                           0, p.stream, a, uniform_dv);
    ENGINE_CUDA_LAUNCH_CHECK(uniform_dv_kernel);
  }
  return absl::OkStatus();
}

}  // namespace

bool tensor_core_head_dim_supported(int64_t head_dim) {
  return head_dim == 64 || head_dim == 80 || head_dim == 96 || head_dim == 128;
}

absl::Status attention_forward(const AttentionParams& p) {
  if (absl::Status s = check(p, "cuda attention_forward", false); !s.ok()) return s;
  if (p.batch == 0 || p.seq == p.query_begin) return absl::OkStatus();
  StreamScratch scratch(p.stream);
  KernelArgs a = kernel_args(p);
  if (absl::Status s = prepare_rows(p, p.stats.rows, scratch, a); !s.ok()) return s;
  const int64_t rows = p.batch * p.heads * p.seq;
  if (a.lse == nullptr) {  // the statistics and padded rows need it even when the caller doesn't
    if (absl::Status s = scratch.allocate(&a.lse, rows); !s.ok()) return s;
  }
  if (p.stats.entropy_sum != nullptr) {
    if (absl::Status s = scratch.allocate(&a.row_entropy, rows); !s.ok()) return s;
  }
  switch (p.storage) {
    case StorageType::kF32:
      if (absl::Status s = f32_forward(a, p.stream); !s.ok()) return s;
      return shared_forward_tail<float>(p, a);
    case StorageType::kBF16:
      if (absl::Status s = attention_detail::launch_mma_forward(a, p.storage, p.stream); !s.ok()) {
        return s;
      }
      return shared_forward_tail<__nv_bfloat16>(p, a);
    case StorageType::kF16:
      if (absl::Status s = attention_detail::launch_mma_forward(a, p.storage, p.stream); !s.ok()) {
        return s;
      }
      return shared_forward_tail<__half>(p, a);
    default:
      break;  // check() rejects the integer types
  }
  return absl::InvalidArgumentError("cuda attention_forward: unknown storage type");
}

absl::Status attention_backward(const AttentionParams& p) {
  if (absl::Status s = check(p, "cuda attention_backward", true); !s.ok()) return s;
  if (p.batch == 0 || p.seq == 0) return absl::OkStatus();
  StreamScratch scratch(p.stream);
  KernelArgs a = kernel_args(p);
  if (absl::Status s = prepare_rows(p, nullptr, scratch, a); !s.ok()) return s;
  float* delta = nullptr;
  float* uniform_dv = nullptr;
  if (absl::Status s = scratch.allocate(&delta, p.batch * p.heads * p.seq); !s.ok()) return s;
  if (p.mask != nullptr) {
    if (absl::Status s = scratch.allocate(&uniform_dv, p.batch * p.heads * p.head_dim); !s.ok()) {
      return s;
    }
  }
  a.delta = delta;
  a.uniform_dv = uniform_dv;
  switch (p.storage) {
    case StorageType::kF32:
      if (absl::Status s = backward_prologue<float>(p, a, delta, uniform_dv); !s.ok()) return s;
      return f32_backward(a, p.stream);
    case StorageType::kBF16:
      if (absl::Status s = backward_prologue<__nv_bfloat16>(p, a, delta, uniform_dv); !s.ok()) {
        return s;
      }
      return attention_detail::launch_mma_backward(a, p.storage, p.stream);
    case StorageType::kF16:
      if (absl::Status s = backward_prologue<__half>(p, a, delta, uniform_dv); !s.ok()) return s;
      return attention_detail::launch_mma_backward(a, p.storage, p.stream);
    default:
      break;  // check() rejects the integer types
  }
  return absl::InvalidArgumentError("cuda attention_backward: unknown storage type");
}

}  // namespace engine::cuda
