// Tensor-core ALiBi flash attention for bf16 / fp16 storage (fp32 accumulation and softmax):
// forward, and backward as two kernels (dQ query-major; dK, dV key-major) that recompute the
// probabilities from the saved lse, so neither needs atomics and results are deterministic.
// Semantics are those of attention.cu's fp32 kernels and the CPU kernel; see attention.h.
//
// Structure (FlashAttention-2 style, kept simple so it is right by construction):
//   - a block is 4 warps; each warp owns 16 rows of the "M" side of every product;
//   - tiles of the other side are staged in shared memory with 16-byte vector loads, rows
//     padded by kPad elements so the fragment reads below hit distinct banks;
//   - fragments are read from shared memory with plain 32-bit loads (no ldmatrix, no cp.async
//     pipelining: the next steps for speed, once this is measured on hardware);
//   - the accumulator layout of one product is reused as the A operand of the next (P V,
//     P^T dO, dS^T Q, dS K), which is why the backward's dK/dV kernel puts keys on the M side.
// mma.sync.m16n8k16 fragment layout (PTX ISA), g = lane / 4, t = lane % 4:
//   A (16 x 16, row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16 x 8, k x n):      b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16 x 8, fp32):       c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// Masked entries are -inf scores / zero probabilities, selected explicitly (never inf - inf).
// Instantiated for {bf16, fp16} x head_dim {64, 80, 96, 128}: 24 kernels per architecture.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_internal.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/storage.cuh"

namespace engine::cuda::attention_detail {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpsPerBlock * kWarpSize;
constexpr int kMmaM = 16, kMmaN = 8, kMmaK = 16;
constexpr int kBlockRows = kWarpsPerBlock * kMmaM;  // 64 rows on the M side per block
constexpr int kForwardKeys = 64;                     // keys per tile, forward
constexpr int kBackwardTile = 32;                    // keys (dQ) / queries (dK, dV) per tile
constexpr int kPad = 8;                              // elements of padding per shared row
constexpr int kVecElems = 8;                         // 16-byte vector of 16-bit elements
constexpr size_t kDefaultSharedBytes = 48 * 1024;

template <typename Elem>
__device__ __forceinline__ uint32_t bits16(Elem v);
template <>
__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 v) {
  return __bfloat16_as_ushort(v);
}
template <>
__device__ __forceinline__ uint32_t bits16(__half v) {
  return __half_as_ushort(v);
}

// Two elements in one register, the lower column in the lower half (the fragment order).
template <typename Elem>
__device__ __forceinline__ uint32_t pack_raw(Elem lo, Elem hi) {
  return bits16(lo) | (bits16(hi) << 16);
}
template <typename Elem>
__device__ __forceinline__ uint32_t pack_floats(float lo, float hi) {
  return pack_raw(from_float<Elem>(lo), from_float<Elem>(hi));
}

__device__ __forceinline__ uint32_t load32(const void* p) {
  return *static_cast<const uint32_t*>(p);
}

// A fragment of the 16 x 16 block at (row0, k0) of a row-major shared tile.
template <int kStride, typename Elem>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const Elem* s, int row0, int k0) {
  const int g = (threadIdx.x % kWarpSize) / 4, t = threadIdx.x % 4;
  const Elem* p0 = s + (row0 + g) * kStride + k0 + 2 * t;
  const Elem* p1 = p0 + 8 * kStride;
  a[0] = load32(p0);
  a[1] = load32(p1);
  a[2] = load32(p0 + 8);
  a[3] = load32(p1 + 8);
}

// B fragment with B[k][n] = S[n0 + n][k0 + k]: the tile's rows are B's columns (Q K^T: K rows).
template <int kStride, typename Elem>
__device__ __forceinline__ void load_b_transposed(uint32_t (&b)[2], const Elem* s, int n0,
                                                  int k0) {
  const int g = (threadIdx.x % kWarpSize) / 4, t = threadIdx.x % 4;
  const Elem* p = s + (n0 + g) * kStride + k0 + 2 * t;
  b[0] = load32(p);
  b[1] = load32(p + 8);
}

// B fragment with B[k][n] = S[k0 + k][n0 + n]: the tile's rows are B's rows (P V: V rows).
template <int kStride, typename Elem>
__device__ __forceinline__ void load_b(uint32_t (&b)[2], const Elem* s, int k0, int n0) {
  const int g = (threadIdx.x % kWarpSize) / 4, t = threadIdx.x % 4;
  const Elem* p = s + (k0 + 2 * t) * kStride + n0 + g;
  b[0] = pack_raw(p[0], p[kStride]);
  b[1] = pack_raw(p[8 * kStride], p[9 * kStride]);
}

// The accumulator of a 16 x 16 block (C tiles n and n + 1), rounded, as an A fragment.
template <typename Elem>
__device__ __forceinline__ void accumulator_as_a(uint32_t (&a)[4], const float (&lo)[4],
                                                 const float (&hi)[4]) {
  a[0] = pack_floats<Elem>(lo[0], lo[1]);
  a[1] = pack_floats<Elem>(lo[2], lo[3]);
  a[2] = pack_floats<Elem>(hi[0], hi[1]);
  a[3] = pack_floats<Elem>(hi[2], hi[3]);
}

// Copies `rows` rows of kD elements (row i at src + i * src_stride) to a padded shared tile;
// rows at or beyond `limit` (relative to the tile) are zero.
template <int kD, typename Elem>
__device__ void stage_rows(Elem* dst, const Elem* src, int64_t src_stride, int rows,
                           int64_t limit) {
  constexpr int kStride = kD + kPad;
  constexpr int kChunks = kD / kVecElems;
  for (int e = threadIdx.x; e < rows * kChunks; e += blockDim.x) {
    const int r = e / kChunks, c = e % kChunks;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < limit) v = *reinterpret_cast<const uint4*>(src + r * src_stride + c * kVecElems);
    *reinterpret_cast<uint4*>(dst + r * kStride + c * kVecElems) = v;
  }
}

// bias[c] = slope * pos for real keys j0 + c < T, -inf otherwise.
__device__ void stage_key_bias(float* bias, const KernelArgs& a, int64_t b, float slope,
                               int64_t j0, int count) {
  for (int c = threadIdx.x; c < count; c += blockDim.x) {
    const int64_t j = j0 + c;
    bias[c] = j < a.seq && key_is_real(a, b, j) ? slope * key_position(a, b, j) : kNegInf;
  }
}

// Sum over the 4 lanes of a quad (the lanes sharing g, i.e. one accumulator row).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(kFullWarp, v, 1);
  v += __shfl_xor_sync(kFullWarp, v, 2);
  return v;
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, 1));
  v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, 2));
  return v;
}

// ---- forward ---------------------------------------------------------------------------------
// Grid (ceil(q_rows / 64), H, B). Shared: Q (64 rows), K and V (kForwardKeys rows), key bias.
template <typename Elem, int kD>
__global__ void __launch_bounds__(kThreads) mma_forward_kernel(KernelArgs a) {
  constexpr int kStride = kD + kPad;
  constexpr int kKeyTiles = kForwardKeys / kMmaN;  // C tiles across a key tile
  constexpr int kDimTiles = kD / kMmaN;            // C tiles across the head dim
  Elem* sq = dynamic_shared<Elem>();
  Elem* sk = sq + kBlockRows * kStride;
  Elem* sv = sk + kForwardKeys * kStride;
  float* sbias = reinterpret_cast<float*>(sv + kForwardKeys * kStride);

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, T = a.seq, H = a.heads, ts = token_stride(a);
  const int64_t q0 = a.query_begin + blockIdx.x * static_cast<int64_t>(kBlockRows);
  const int64_t first = first_real_key(a, b);
  const Elem* base = static_cast<const Elem*>(a.qkv) + b * T * ts + h * 3 * kD;
  const float slope = a.slopes[h];
  // This thread's two accumulator rows: [0] = row g, [1] = row g + 8 of the warp's 16.
  int64_t row[2];
  row[0] = q0 + warp * kMmaM + g;
  row[1] = row[0] + 8;

  stage_rows<kD>(sq, base + q0 * ts, ts, kBlockRows, T - q0);

  float o[kDimTiles][4];
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
  }
  // Running max, and this thread's partial sums (over its columns) of e and e * (s - max).
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f}, ps[2] = {0.0f, 0.0f};

  const int64_t key_end = min(q0 + kBlockRows, T);
  for (int64_t j0 = first; j0 < key_end; j0 += kForwardKeys) {
    __syncthreads();  // the previous tile (and, first time round, nothing) is no longer read
    stage_rows<kD>(sk, base + j0 * ts + kD, ts, kForwardKeys, T - j0);
    stage_rows<kD>(sv, base + j0 * ts + 2 * kD, ts, kForwardKeys, T - j0);
    stage_key_bias(sbias, a, b, slope, j0, kForwardKeys);
    __syncthreads();

    float s[kKeyTiles][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kD / kMmaK; ++k) {
      uint32_t qa[4];
      load_a<kStride>(qa, sq, warp * kMmaM, k * kMmaK);
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
        uint32_t kb[2];
        load_b_transposed<kStride>(kb, sk, n * kMmaN, k * kMmaK);
        mma_m16n8k16<Elem>(s[n], qa, kb);
      }
    }

    float tile_max[2] = {kNegInf, kNegInf};
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const int c = n * kMmaN + 2 * t + (e % 2);
        const int64_t i = row[r], j = j0 + c;
        const float bias = sbias[c];
        const bool live = i < T && j <= i && bias != kNegInf;
        s[n][e] = live ? s[n][e] * a.scale + bias : kNegInf;
        tile_max[r] = fmaxf(tile_max[r], s[n][e]);
      }
    }
    float alpha[2], m_new[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m_new[r] = fmaxf(m[r], quad_max(tile_max[r]));
      // With m[r] = -inf nothing has been accumulated (l = ps = o = 0): any finite alpha works.
      alpha[r] = m[r] == kNegInf ? 0.0f : __expf(m[r] - m_new[r]);
      const float shift = m[r] == kNegInf ? 0.0f : m[r] - m_new[r];
      ps[r] = alpha[r] * (ps[r] + shift * l[r]);
      l[r] = alpha[r] * l[r];
      m[r] = m_new[r];
    }
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const bool live = s[n][e] != kNegInf;
        const float rel = live ? s[n][e] - m_new[r] : 0.0f;
        const float p = live ? __expf(rel) : 0.0f;
        l[r] += p;
        ps[r] += p * rel;
        s[n][e] = p;
      }
    }
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] *= alpha[e / 2];
    }
#pragma unroll
    for (int k = 0; k < kForwardKeys / kMmaK; ++k) {
      uint32_t pa[4];
      accumulator_as_a<Elem>(pa, s[2 * k], s[2 * k + 1]);
#pragma unroll
      for (int n = 0; n < kDimTiles; ++n) {
        uint32_t vb[2];
        load_b<kStride>(vb, sv, k * kMmaK, n * kMmaN);
        mma_m16n8k16<Elem>(o[n], pa, vb);
      }
    }
  }

  const int64_t q_rows = T - a.query_begin;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(l[r]);
    const float sum_ps = quad_sum(ps[r]);
    const int64_t i = row[r];
    // Rows before the first real key are padded_rows_kernel's (there sum = 0).
    if (i >= T || i < first) continue;
    const float inv = 1.0f / sum;
    Elem* out = static_cast<Elem*>(a.out) + (b * q_rows + i - a.query_begin) * H * kD + h * kD;
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
      *reinterpret_cast<uint32_t*>(out + n * kMmaN + 2 * t) =
          pack_floats<Elem>(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    }
    if (t == 0) {
      a.lse[(b * H + h) * T + i] = m[r] + logf(sum);
      if (a.row_entropy != nullptr) a.row_entropy[(b * H + h) * T + i] = logf(sum) - sum_ps * inv;
    }
  }
}

// ---- backward: dQ ----------------------------------------------------------------------------
// Grid (ceil(T / 64), H, B); queries on the M side. Shared: Q and dO (64 rows), K and V
// (kBackwardTile rows), key bias.
template <typename Elem, int kD>
__global__ void __launch_bounds__(kThreads) mma_dq_kernel(KernelArgs a) {
  constexpr int kStride = kD + kPad;
  constexpr int kKeyTiles = kBackwardTile / kMmaN;
  constexpr int kDimTiles = kD / kMmaN;
  Elem* sq = dynamic_shared<Elem>();
  Elem* sg = sq + kBlockRows * kStride;
  Elem* sk = sg + kBlockRows * kStride;
  Elem* sv = sk + kBackwardTile * kStride;
  float* sbias = reinterpret_cast<float*>(sv + kBackwardTile * kStride);

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, T = a.seq, H = a.heads, ts = token_stride(a);
  const int64_t bh = b * H + h;
  const int64_t q0 = blockIdx.x * static_cast<int64_t>(kBlockRows);
  const int64_t first = first_real_key(a, b);
  const Elem* base = static_cast<const Elem*>(a.qkv) + b * T * ts + h * 3 * kD;
  const Elem* dout = static_cast<const Elem*>(a.dout) + b * T * H * kD + h * kD;
  const float slope = a.slopes[h];
  int64_t row[2];
  row[0] = q0 + warp * kMmaM + g;
  row[1] = row[0] + 8;
  float lse[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool live = row[r] < T && row[r] >= first;
    lse[r] = live ? a.lse[bh * T + row[r]] : 0.0f;
    delta[r] = live ? a.delta[bh * T + row[r]] : 0.0f;
  }

  stage_rows<kD>(sq, base + q0 * ts, ts, kBlockRows, T - q0);
  stage_rows<kD>(sg, dout + q0 * H * kD, H * kD, kBlockRows, T - q0);

  float dq[kDimTiles][4];
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[n][e] = 0.0f;
  }

  const int64_t key_end = min(q0 + kBlockRows, T);
  for (int64_t j0 = first; j0 < key_end; j0 += kBackwardTile) {
    __syncthreads();
    stage_rows<kD>(sk, base + j0 * ts + kD, ts, kBackwardTile, T - j0);
    stage_rows<kD>(sv, base + j0 * ts + 2 * kD, ts, kBackwardTile, T - j0);
    stage_key_bias(sbias, a, b, slope, j0, kBackwardTile);
    __syncthreads();

    float s[kKeyTiles][4], dp[kKeyTiles][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kD / kMmaK; ++k) {
      uint32_t qa[4], ga[4];
      load_a<kStride>(qa, sq, warp * kMmaM, k * kMmaK);
      load_a<kStride>(ga, sg, warp * kMmaM, k * kMmaK);
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
        uint32_t kb[2], vb[2];
        load_b_transposed<kStride>(kb, sk, n * kMmaN, k * kMmaK);
        load_b_transposed<kStride>(vb, sv, n * kMmaN, k * kMmaK);
        mma_m16n8k16<Elem>(s[n], qa, kb);   // Q K^T
        mma_m16n8k16<Elem>(dp[n], ga, vb);  // dO V^T
      }
    }
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const int c = n * kMmaN + 2 * t + (e % 2);
        const int64_t i = row[r], j = j0 + c;
        const float bias = sbias[c];
        const bool live = i < T && i >= first && j <= i && bias != kNegInf;
        const float p = live ? __expf(s[n][e] * a.scale + bias - lse[r]) : 0.0f;
        s[n][e] = p * (dp[n][e] - delta[r]) * a.scale;  // dS * scale
        if (live) s[n][e] += sink_first_key(a, b, h, i, j, first);
      }
    }
#pragma unroll
    for (int k = 0; k < kBackwardTile / kMmaK; ++k) {
      uint32_t da[4];
      accumulator_as_a<Elem>(da, s[2 * k], s[2 * k + 1]);
#pragma unroll
      for (int n = 0; n < kDimTiles; ++n) {
        uint32_t kb[2];
        load_b<kStride>(kb, sk, k * kMmaK, n * kMmaN);
        mma_m16n8k16<Elem>(dq[n], da, kb);  // dS K
      }
    }
  }

  Elem* dst = static_cast<Elem*>(a.dqkv) + b * T * ts + h * 3 * kD;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= T) continue;
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {  // zero for fully padded rows
      *reinterpret_cast<uint32_t*>(dst + row[r] * ts + n * kMmaN + 2 * t) =
          pack_floats<Elem>(dq[n][2 * r], dq[n][2 * r + 1]);
    }
  }
}

// ---- backward: dK, dV ------------------------------------------------------------------------
// Grid (ceil(T / 64), H, B); keys on the M side, so S^T = K Q^T and dP^T = V dO^T come out in the
// accumulator layout that dV += P^T dO and dK += dS^T Q take as their A operand. Shared: K and V
// (64 rows), Q and dO (kBackwardTile rows) with their lse and delta, key bias.
template <typename Elem, int kD>
__global__ void __launch_bounds__(kThreads) mma_dkdv_kernel(KernelArgs a) {
  constexpr int kStride = kD + kPad;
  constexpr int kQueryTiles = kBackwardTile / kMmaN;
  constexpr int kDimTiles = kD / kMmaN;
  Elem* sk = dynamic_shared<Elem>();
  Elem* sv = sk + kBlockRows * kStride;
  Elem* sq = sv + kBlockRows * kStride;
  Elem* sg = sq + kBackwardTile * kStride;
  float* sbias = reinterpret_cast<float*>(sg + kBackwardTile * kStride);  // (kBlockRows)
  float* slse = sbias + kBlockRows;                                       // (kBackwardTile)
  float* sdelta = slse + kBackwardTile;                                   // (kBackwardTile)

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, T = a.seq, H = a.heads, ts = token_stride(a);
  const int64_t bh = b * H + h;
  const int64_t j0 = blockIdx.x * static_cast<int64_t>(kBlockRows);
  const Elem* base = static_cast<const Elem*>(a.qkv) + b * T * ts + h * 3 * kD;
  const Elem* dout = static_cast<const Elem*>(a.dout) + b * T * H * kD + h * kD;
  int key_local[2];  // this thread's two accumulator rows, as indices into the key tile
  key_local[0] = warp * kMmaM + g;
  key_local[1] = key_local[0] + 8;

  stage_rows<kD>(sk, base + j0 * ts + kD, ts, kBlockRows, T - j0);
  stage_rows<kD>(sv, base + j0 * ts + 2 * kD, ts, kBlockRows, T - j0);
  stage_key_bias(sbias, a, b, a.slopes[h], j0, kBlockRows);

  float dk[kDimTiles][4], dv[kDimTiles][4];
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int d = n * kMmaN + 2 * t + (e % 2);
      dk[n][e] = 0.0f;
      dv[n][e] = a.uniform_dv != nullptr ? a.uniform_dv[bh * kD + d] : 0.0f;
    }
  }

  const int64_t first = first_real_key(a, b);
  for (int64_t i0 = max(j0, first); i0 < T; i0 += kBackwardTile) {
    __syncthreads();  // also orders the key tile's staging before its first use
    stage_rows<kD>(sq, base + i0 * ts, ts, kBackwardTile, T - i0);
    stage_rows<kD>(sg, dout + i0 * H * kD, H * kD, kBackwardTile, T - i0);
    for (int c = threadIdx.x; c < kBackwardTile; c += blockDim.x) {
      const bool in_range = i0 + c < T;
      slse[c] = in_range ? a.lse[bh * T + i0 + c] : 0.0f;
      sdelta[c] = in_range ? a.delta[bh * T + i0 + c] : 0.0f;
    }
    __syncthreads();

    float st[kQueryTiles][4], dpt[kQueryTiles][4];
#pragma unroll
    for (int n = 0; n < kQueryTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kD / kMmaK; ++k) {
      uint32_t ka[4], va[4];
      load_a<kStride>(ka, sk, warp * kMmaM, k * kMmaK);
      load_a<kStride>(va, sv, warp * kMmaM, k * kMmaK);
#pragma unroll
      for (int n = 0; n < kQueryTiles; ++n) {
        uint32_t qb[2], gb[2];
        load_b_transposed<kStride>(qb, sq, n * kMmaN, k * kMmaK);
        load_b_transposed<kStride>(gb, sg, n * kMmaN, k * kMmaK);
        mma_m16n8k16<Elem>(st[n], ka, qb);   // K Q^T
        mma_m16n8k16<Elem>(dpt[n], va, gb);  // V dO^T
      }
    }
#pragma unroll
    for (int n = 0; n < kQueryTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int kr = key_local[e / 2];
        const int c = n * kMmaN + 2 * t + (e % 2);
        const int64_t i = i0 + c, j = j0 + kr;
        const float bias = sbias[kr];
        const bool live = i < T && i >= j && bias != kNegInf;
        const float p = live ? __expf(st[n][e] * a.scale + bias - slse[c]) : 0.0f;
        st[n][e] = p;                                          // P^T
        dpt[n][e] = p * (dpt[n][e] - sdelta[c]) * a.scale;     // dS^T * scale
        if (live) dpt[n][e] += sink_first_key(a, b, h, i, j, first);
      }
    }
#pragma unroll
    for (int k = 0; k < kBackwardTile / kMmaK; ++k) {
      uint32_t pa[4], da[4];
      accumulator_as_a<Elem>(pa, st[2 * k], st[2 * k + 1]);
      accumulator_as_a<Elem>(da, dpt[2 * k], dpt[2 * k + 1]);
#pragma unroll
      for (int n = 0; n < kDimTiles; ++n) {
        uint32_t gb[2], qb[2];
        load_b<kStride>(gb, sg, k * kMmaK, n * kMmaN);
        load_b<kStride>(qb, sq, k * kMmaK, n * kMmaN);
        mma_m16n8k16<Elem>(dv[n], pa, gb);  // P^T dO
        mma_m16n8k16<Elem>(dk[n], da, qb);  // dS^T Q
      }
    }
  }

  Elem* dst = static_cast<Elem*>(a.dqkv) + b * T * ts + h * 3 * kD;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = j0 + key_local[r];
    if (j >= T) continue;
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
      const int64_t col = n * kMmaN + 2 * t;
      *reinterpret_cast<uint32_t*>(dst + j * ts + kD + col) =
          pack_floats<Elem>(dk[n][2 * r], dk[n][2 * r + 1]);
      *reinterpret_cast<uint32_t*>(dst + j * ts + 2 * kD + col) =
          pack_floats<Elem>(dv[n][2 * r], dv[n][2 * r + 1]);
    }
  }
}

// ---- launchers -------------------------------------------------------------------------------

template <auto Kernel>
absl::Status launch(dim3 grid, size_t shared, cudaStream_t stream, const KernelArgs& a) {
  if (shared > kDefaultSharedBytes) {
    ENGINE_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared)));
  }
  launch_kernel<Kernel>(grid, kThreads, shared, stream, a);
  ENGINE_CUDA_LAUNCH_CHECK(mma_attention_kernel);
  return absl::OkStatus();
}

template <typename Elem>
constexpr size_t tile_bytes(int rows, int d) {
  return static_cast<size_t>(rows) * (d + kPad) * sizeof(Elem);
}

dim3 grid_for(int64_t rows, const KernelArgs& a) {
  return dim3(static_cast<unsigned>((rows + kBlockRows - 1) / kBlockRows),
              static_cast<unsigned>(a.heads), static_cast<unsigned>(a.batch));
}

template <typename Elem, int kD>
absl::Status forward_for(const KernelArgs& a, cudaStream_t stream) {
  const size_t shared = tile_bytes<Elem>(kBlockRows + 2 * kForwardKeys, kD) +
                        kForwardKeys * sizeof(float);
  return launch<mma_forward_kernel<Elem, kD>>(grid_for(a.seq - a.query_begin, a), shared, stream,
                                              a);
}

template <typename Elem, int kD>
absl::Status backward_for(const KernelArgs& a, cudaStream_t stream) {
  const size_t tiles = tile_bytes<Elem>(2 * kBlockRows + 2 * kBackwardTile, kD);
  const size_t dq_shared = tiles + kBackwardTile * sizeof(float);
  if (absl::Status s = launch<mma_dq_kernel<Elem, kD>>(grid_for(a.seq, a), dq_shared, stream, a);
      !s.ok()) {
    return s;
  }
  const size_t kv_shared = tiles + (kBlockRows + 2 * kBackwardTile) * sizeof(float);
  return launch<mma_dkdv_kernel<Elem, kD>>(grid_for(a.seq, a), kv_shared, stream, a);
}

template <typename Elem>
absl::Status forward_for_dim(const KernelArgs& a, cudaStream_t stream) {
  switch (a.head_dim) {
    case 64: return forward_for<Elem, 64>(a, stream);
    case 80: return forward_for<Elem, 80>(a, stream);
    case 96: return forward_for<Elem, 96>(a, stream);
    case 128: return forward_for<Elem, 128>(a, stream);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cuda attention: no tensor-core kernel for head_dim ", a.head_dim));
}

template <typename Elem>
absl::Status backward_for_dim(const KernelArgs& a, cudaStream_t stream) {
  switch (a.head_dim) {
    case 64: return backward_for<Elem, 64>(a, stream);
    case 80: return backward_for<Elem, 80>(a, stream);
    case 96: return backward_for<Elem, 96>(a, stream);
    case 128: return backward_for<Elem, 128>(a, stream);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cuda attention: no tensor-core kernel for head_dim ", a.head_dim));
}

}  // namespace

absl::Status launch_mma_forward(const KernelArgs& a, StorageType storage, cudaStream_t stream) {
  if (storage == StorageType::kBF16) return forward_for_dim<__nv_bfloat16>(a, stream);
  if (storage == StorageType::kF16) return forward_for_dim<__half>(a, stream);
  return absl::InvalidArgumentError("cuda attention: tensor-core kernels take bf16 or fp16");
}

absl::Status launch_mma_backward(const KernelArgs& a, StorageType storage, cudaStream_t stream) {
  if (storage == StorageType::kBF16) return backward_for_dim<__nv_bfloat16>(a, stream);
  if (storage == StorageType::kF16) return backward_for_dim<__half>(a, stream);
  return absl::InvalidArgumentError("cuda attention: tensor-core kernels take bf16 or fp16");
}

}  // namespace engine::cuda::attention_detail
