// Fused causal ALiBi attention over BLOOM's fused QKV activation, flash-style, fp32.
// Contract (forward): for every batch row b, head h and query row i in [query_begin, T):
//   s[i, j] = (q_i . k_j) * scale + slope_h * pos_j   for keys j <= i with mask[j] = 1,
//   out_i = sum_j softmax_j(s[i, .]) v_j, lse[b, h, i] = log sum_j exp(s[i, j]).
// The (T, T) score matrix is never held: queries are processed in tiles of kQueryTile rows
// against tiles of kKeyTile keys with an online softmax (running max, running sum). Memory is
// O(tile) per thread beyond the inputs and outputs. Per tile pair, S = Q K^T and the
// accumulator update P V are register-blocked tile products (see tile_product), the softmax
// runs on 8-lane vectors, and on diagonal tiles only the causally visible part is computed.
// OpenMP tasks are (batch row, head, query tile), largest first, dynamically scheduled.
// Optional statistics (METHOD.md section 2) are accumulated, in double, over valid query rows:
// bos_mass (mass on the first real key of the sequence), entropy (-sum A ln A, via
// lse - sum p s with sum p s kept relative to the running max), local_mass (mass on the real keys
// whose positions are pos_i - 2 .. pos_i). The scores they need are those the softmax used, kept
// from the score tiles. With every statistics pointer null nothing extra runs.
// Note [fully padded query rows]: a query row with no real key at or before it (the padding at the
// start of a left-padded sequence) has nothing to attend to. transformers adds the dtype minimum
// to every masked score, which, after rounding, leaves all T scores equal, so its softmax is
// uniform over all T keys of the sequence. We reproduce that (out_i = mean of v over all T keys,
// lse = log T) so logits at padded positions match too; such rows are never in the statistics and
// their output is independent of q and k, so the backward gives them no dQ/dK contribution.
// Contract (backward): recomputes probabilities from q, k and the saved lse; writes (overwrites)
// dQ, dK, dV into dqkv in the same fused (B, T, H, 3, D) layout, with zeros for padded keys.
// With sink_loss_weight set, head h's score gradient of every real query row t also receives
// w_h * (P[t, j] - [j = first real key]), the gradient of w_h * -log P[t, first]: the auxiliary
// loss of controlled collapse, added per tile so no (T, T) matrix is held.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/attention_checks.h"
#include "engine/dtype.h"
#include "engine/large_pages.h"
#include "kernels/cpu/isa_kernels.h"
#include "kernels/cpu/isa_region.h"
#include "kernels/cpu/vector_math.h"

ENGINE_CPU_KERNELS_BEGIN
namespace {

// 64 x 64 tiles keep the per-thread working set (Q tile, transposed K tile, V tile, accumulator)
// at 4 * 64 * D floats: 128 KiB at D = 128, inside a typical L2.
constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this many multiply-adds (Q K^T plus P V over the causal triangle, about 1 ms of one core
// at the kernel's ~30 GFLOP/s) the kernels run on the calling thread: waking an OpenMP team costs
// microseconds on an idle machine but a whole scheduler time slice on a busy one, which made
// small shapes (short prompts, one-token decoding steps) slower on two threads than on one.
constexpr double kParallelMinMacs = 16e6;

// Multiply-adds of one causal attention pass: rows x visible keys x (Q K^T + P V).
double causal_macs(int64_t batch_heads, int64_t q_rows, int64_t keys, int64_t head_dim) {
  const double visible = static_cast<double>(keys) - 0.5 * static_cast<double>(q_rows);
  return static_cast<double>(batch_heads) * static_cast<double>(q_rows) * visible * 2.0 *
         static_cast<double>(head_dim);
}

// Positions and mask of one batch row, plus the first real key.
struct RowLayout {
  const uint8_t* mask;      // (T) or null when every token is real
  const int32_t* pos;       // (T)
  int64_t first_real;       // first j with mask[j] = 1; T when the row is all padding
  bool real(int64_t j) const { return mask == nullptr || mask[j] != 0; }
};

// The per-instruction-set kernel computes on fp32 storage; 16-bit storage is widened around it
// (kernels/cpu/storage.h), so it only ever sees F32 here. Also checks bf16_bias_divisor.
absl::Status check_f32_storage(const AlibiAttentionParams& p, const char* op) {
  if (!(p.bf16_bias_divisor >= 0.0f) || std::isinf(p.bf16_bias_divisor)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": bf16_bias_divisor must be 0 (off) or positive and finite, got ",
        p.bf16_bias_divisor));
  }
  if (p.storage == DType::kF32) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, ": the CPU kernel takes F32 storage, got ",
                                                 dtype_name(p.storage)));
}

// The ALiBi term of one real key: slope * pos in fp32, or with p.bf16_bias_divisor set (Falcon)
// bf16(slope * bf16(pos)) / divisor, as transformers' Falcon builds it (engine/backend.h): torch
// multiplies its bfloat16 slopes by the integer positions in bfloat16, so a position past 256 is
// rounded to 8 significant bits first, then the product. The BLOOM/MPT expression is kept
// textually the same at every call site so their results stay bit-identical.
float rounded_key_bias(float slope, int32_t pos, float divisor) {
  const float bf16_pos = bf16_to_f32(f32_to_bf16(static_cast<float>(pos)));
  return bf16_to_f32(f32_to_bf16(slope * bf16_pos)) / divisor;
}

// Positions from the mask when the caller gave none: pos_j = cumsum(mask)_j - 1 for real tokens
// and 0 for padding, as transformers builds its ALiBi tensor.
std::vector<int32_t> derive_positions(const AlibiAttentionParams& p) {
  std::vector<int32_t> pos(static_cast<size_t>(p.batch * p.seq));
  for (int64_t b = 0; b < p.batch; ++b) {
    int32_t count = 0;
    for (int64_t j = 0; j < p.seq; ++j) {
      const bool real = p.mask == nullptr || p.mask[b * p.seq + j] != 0;
      count += real ? 1 : 0;
      pos[b * p.seq + j] = real ? count - 1 : 0;
    }
  }
  return pos;
}

std::vector<RowLayout> row_layouts(const AlibiAttentionParams& p, const int32_t* pos) {
  std::vector<RowLayout> rows(static_cast<size_t>(p.batch));
  for (int64_t b = 0; b < p.batch; ++b) {
    RowLayout& r = rows[b];
    r.mask = p.mask == nullptr ? nullptr : p.mask + b * p.seq;
    r.pos = pos + b * p.seq;
    r.first_real = p.seq;
    for (int64_t j = 0; j < p.seq; ++j) {
      if (r.real(j)) {
        r.first_real = j;
        break;
      }
    }
  }
  return rows;
}

// ---- Register-blocked tile product --------------------------------------------------------
// Every matrix product in this file (Q K^T, P V and the four backward products) is a small
// C (m, n) (+)= A (m, k) B (k, n) with n a multiple of kLanes and B row-major. The block below
// keeps a kRows x (kVecs * kLanes) piece of C in registers for the whole k loop: per step it
// loads kVecs vectors of B and broadcasts kRows scalars of A for kRows * kVecs multiply-adds,
// so the loop is bound by the multiply-add units rather than by loads (a one-row loop, as a
// plain vectorised dot product gives, issues one load per multiply-add and runs at a fraction of
// that). A's strides are free, so A^T products (backward) need no transposed copy.
// FloatVec (vector_math.h) is one vector register: 8 lanes in the AVX2 build, 16 in the AVX-512
// build (Note [one source, one build per instruction set], isa_region.h); a + b * c on it becomes
// a fused multiply-add under -ffp-contract=fast (set for the library).
using Vec = FloatVec;
constexpr int64_t kLanes = kVecLanes;
static_assert(sizeof(IntVec) / sizeof(int32_t) == kLanes);
#if ENGINE_CPU_VECTOR_BYTES == 32
constexpr IntVec kLaneIndex = {0, 1, 2, 3, 4, 5, 6, 7};  // lane l holds l
// AVX2, 16 vector registers. 5 rows x 2 vectors = 10 accumulators + 2 B vectors + 1 broadcast =
// 13 of the 16. Six rows (15 registers) is the textbook shape, but GCC 12 kept one of its twelve
// accumulators on the stack (a store and a reload in every step of the reduction, a loop-carried
// dependency through memory): the attention ran at 30 GFLOP/s on one core at T = 2048, against
// 50 with five rows (bench/attention_bench; check the loop with objdump after changing this).
constexpr int kBlockRows = 5;
constexpr int kBlockVecs = 2;
#else
constexpr IntVec kLaneIndex = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
// AVX-512, 32 vector registers of 16 lanes. 8 rows x 2 vectors = 16 accumulators + 2 B vectors
// + 1 broadcast = 19 of the 32 (AVX-512 FMAs can also broadcast A's scalar from memory). Two
// vectors are 32 columns, so a 64-key tile or D = 64 is two blocks wide; eight rows keep the
// ratio of multiply-adds to loads at 16 / 10, against 10 / 7 in the AVX2 build.
constexpr int kBlockRows = 8;
constexpr int kBlockVecs = 2;
#endif

Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void store(float* p, const Vec& v) { std::memcpy(p, &v, sizeof v); }

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

float lane_max(const Vec& v) {
  float m = v[0];
  for (int64_t l = 1; l < kLanes; ++l) m = std::max(m, v[l]);
  return m;
}
float lane_sum(const Vec& v) {
  float sum = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) sum += v[l];
  return sum;
}

float dot(const float* a, const float* b, int64_t n) {
  Vec lanes{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) lanes += load(a + i) * load(b + i);
  float sum = lane_sum(lanes);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

enum class Accumulate {
  kOverwrite,  // C = A B
  kAdd,        // C += A B
  kScaleRows,  // C = diag(row_scale) C + A B (the online softmax's rescale of the accumulator)
};

struct TileProduct {
  int64_t m = 0, n = 0, k = 0;  // C is (m, n); n is a multiple of kLanes
  const float* a = nullptr;     // A[r, x] = a[r * a_row + x * a_col]
  int64_t a_row = 0, a_col = 0;
  const float* b = nullptr;     // B[x, c] = b[x * ldb + c]
  int64_t ldb = 0;
  float* c = nullptr;           // C[r, c] = c[r * ldc + c]
  int64_t ldc = 0;
  Accumulate mode = Accumulate::kOverwrite;
  const float* row_scale = nullptr;  // (m), kScaleRows only
  // Causal structure of a diagonal tile: row r needs only the first r + causal_offset columns
  // (kColumns: scores) or reduction steps (kDepth: probabilities times values); the rest are
  // masked scores or zero probabilities. Columns skipped are left as they were.
  enum class Causal { kNone, kColumns, kDepth } causal = Causal::kNone;
  int64_t causal_offset = 0;
};

template <int kRows, int kVecs>
void product_block(const TileProduct& g, int64_t r0, int64_t c0, int64_t depth) {
  Vec acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r) {
    const float* c = g.c + (r0 + r) * g.ldc + c0;
    for (int v = 0; v < kVecs; ++v) {
      acc[r][v] = Vec{};
      if (g.mode == Accumulate::kAdd) acc[r][v] = load(c + v * kLanes);
      if (g.mode == Accumulate::kScaleRows) {
        acc[r][v] = load(c + v * kLanes) * g.row_scale[r0 + r];
      }
    }
  }
  const float* a = g.a + r0 * g.a_row;
  const float* b = g.b + c0;
  for (int64_t x = 0; x < depth; ++x) {
    Vec bx[kVecs];
    for (int v = 0; v < kVecs; ++v) bx[v] = load(b + x * g.ldb + v * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const float ar = a[r * g.a_row + x * g.a_col];
      for (int v = 0; v < kVecs; ++v) acc[r][v] += ar * bx[v];
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) store(g.c + (r0 + r) * g.ldc + c0 + v * kLanes, acc[r][v]);
  }
}

template <int kVecs, int... kRows>
void product_rows(const TileProduct& g, int64_t r0, int64_t rows, int64_t c0, int64_t depth,
                  std::integer_sequence<int, kRows...>) {
  // Dispatch the run-time row count (1 .. kBlockRows) to the block instantiated for it.
  ((rows == kRows + 1 ? product_block<kRows + 1, kVecs>(g, r0, c0, depth) : void()), ...);
}

void tile_product(const TileProduct& g) {
  const auto row_counts = std::make_integer_sequence<int, kBlockRows>();
  for (int64_t r0 = 0; r0 < g.m; r0 += kBlockRows) {
    const int64_t rows = std::min<int64_t>(kBlockRows, g.m - r0);
    const int64_t needed = r0 + rows - 1 + g.causal_offset;  // for the block's last row
    int64_t n = g.n, depth = g.k;
    if (g.causal == TileProduct::Causal::kColumns) n = std::min(n, round_up(needed, kLanes));
    if (g.causal == TileProduct::Causal::kDepth) depth = std::min(depth, needed);
    int64_t c0 = 0;
    for (; c0 + kBlockVecs * kLanes <= n; c0 += kBlockVecs * kLanes) {
      product_rows<kBlockVecs>(g, r0, rows, c0, depth, row_counts);
    }
    for (; c0 < n; c0 += kLanes) product_rows<1>(g, r0, rows, c0, depth, row_counts);
  }
}

// local_mass covers the real keys with pos_j >= pos_i - kLocalWindow (METHOD.md section 2);
// without padding between them those are keys i - kLocalWindow .. i.
constexpr int32_t kLocalWindow = 2;
constexpr int64_t kNearKeys = kLocalWindow + 1;

// Per-thread scratch for one (batch row, head, query tile) task of the forward pass. Rows of V
// and of the accumulator are padded to a multiple of kLanes (padding stays zero).
struct ForwardScratch {
  std::vector<float> kt;    // (D, kKeyTile) the key tile, transposed
  std::vector<float> v;     // (kKeyTile, Dp)
  std::vector<float> acc;   // (kQueryTile, Dp) unnormalised output rows
  std::vector<float> s;     // (kQueryTile, kKeyTile) scores, then probabilities
  std::vector<float> bias;  // (kKeyTile) slope * pos, or -inf for padding keys
  std::vector<float> row_max, row_sum, row_ps, alpha;  // (kQueryTile)
  // Statistics only: the score of each row's first real key, and of keys i, i - 1, i - 2.
  std::vector<float> first_score;  // (kQueryTile)
  std::vector<float> near_score;   // (kQueryTile, kNearKeys)
  ForwardScratch(int64_t d, int64_t dp)
      : kt(d * kKeyTile), v(kKeyTile * dp), acc(kQueryTile * dp), s(kQueryTile * kKeyTile),
        bias(kKeyTile), row_max(kQueryTile), row_sum(kQueryTile), row_ps(kQueryTile),
        alpha(kQueryTile), first_score(kQueryTile), near_score(kQueryTile * kNearKeys) {}
};

}  // namespace

absl::Status alibi_attention_forward(const AlibiAttentionParams& p) {
  if (absl::Status s = check_attention_params(p, "alibi_attention_forward"); !s.ok()) return s;
  if (absl::Status s = check_f32_storage(p, "alibi_attention_forward"); !s.ok()) return s;
  const int64_t B = p.batch, T = p.seq, H = p.heads, D = p.head_dim;
  const int64_t Dp = round_up(D, kLanes);
  const int64_t token_stride = 3 * H * D;  // one token's fused QKV row
  const int64_t out_stride = H * D;
  const int64_t q_rows = T - p.query_begin;
  if (B == 0 || q_rows == 0) return absl::OkStatus();

  std::vector<int32_t> derived;
  const int32_t* pos = p.positions;
  if (pos == nullptr) {
    derived = derive_positions(p);
    pos = derived.data();
  }
  const std::vector<RowLayout> layout = row_layouts(p, pos);
  const bool rounded_bias = p.bf16_bias_divisor != 0.0f;

  const HeadStatsAccumulator& st = p.stats;
  const bool want_bos = st.bos_mass_sum != nullptr;
  const bool want_entropy = st.entropy_sum != nullptr;
  const bool want_local = st.local_mass_sum != nullptr;
  const bool want_stats = want_bos || want_entropy || want_local;

  const int64_t q_tiles = (q_rows + kQueryTile - 1) / kQueryTile;
  const int64_t tasks = B * H * q_tiles;
  // Statistics are summed per task and reduced afterwards in task order, so results do not
  // depend on the thread count or schedule.
  constexpr int kStatCount = 3;
  std::vector<double> task_stats(want_stats ? static_cast<size_t>(tasks) * kStatCount : 0, 0.0);
  const bool parallel = causal_macs(B * H, q_rows, T, D) >= kParallelMinMacs;

  // Keys and values of each (batch row, head), packed once in the key tiles the loop visits
  // (starting at the row's first real key): K^T tiles (D, kKeyTile) and V tiles (kKeyTile, Dp),
  // zero-padded. Every query tile of the head then reads them in place; gathering them from the
  // strided QKV rows per query tile re-read each key T / kQueryTile times and took about a sixth
  // of the forward at T = 2048. With a single query tile (decoding) there is nothing to share,
  // and the tile loop gathers into its scratch as before.
  const bool pack = q_tiles > 1;
  const int64_t key_tiles = (T + kKeyTile - 1) / kKeyTile;
  const int64_t kt_size = D * kKeyTile, v_size = kKeyTile * Dp;
  // On huge pages (engine/large_pages.h): 4 KiB pages made every layer's fresh 16 MiB (T = 2048,
  // 16 heads of 64) fault in page by page.
  std::vector<float, LargePageAllocator<float>> packed_kt(
      pack ? static_cast<size_t>(B * H * key_tiles * kt_size) : 0);
  std::vector<float, LargePageAllocator<float>> packed_v(
      pack ? static_cast<size_t>(B * H * key_tiles * v_size) : 0);
  // Gathers keys [j0, j0 + nk) of (b, h) into kt (D, kKeyTile) and v (kKeyTile, Dp).
  auto gather_keys = [&](int64_t b, int64_t h, int64_t j0, int64_t nk, float* kt, float* v) {
    const float* base = static_cast<const float*>(p.qkv) + b * T * token_stride + h * 3 * D;
    for (int64_t c = 0; c < nk; ++c) {
      const float* k = base + (j0 + c) * token_stride + D;
      for (int64_t d = 0; d < D; ++d) kt[d * kKeyTile + c] = k[d];
      std::copy_n(k + D, D, v + c * Dp);
    }
  };
  if (pack) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      int64_t t = 0;
      for (int64_t j0 = layout[b].first_real; j0 < T; j0 += kKeyTile, ++t) {
        gather_keys(b, h, j0, std::min(kKeyTile, T - j0),
                    packed_kt.data() + (bh * key_tiles + t) * kt_size,
                    packed_v.data() + (bh * key_tiles + t) * v_size);
      }
    }
  }

#pragma omp parallel if (parallel)
  {
    ForwardScratch sc(D, Dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      // Later query tiles carry more keys; handing them out first balances the causal triangle.
      const int64_t qt = q_tiles - 1 - task % q_tiles;
      const int64_t bh = task / q_tiles;
      const int64_t b = bh / H, h = bh % H;
      const RowLayout& row = layout[b];
      const float slope = p.slopes[h];
      // q of token 0
      const float* base = static_cast<const float*>(p.qkv) + b * T * token_stride + h * 3 * D;
      const int64_t i0 = p.query_begin + qt * kQueryTile;
      const int64_t i1 = std::min(i0 + kQueryTile, T);
      const int64_t n = i1 - i0;

      std::fill_n(sc.row_max.data(), n, kNegInf);
      std::fill_n(sc.row_sum.data(), n, 0.0f);
      std::fill_n(sc.row_ps.data(), n, 0.0f);
      std::fill_n(sc.acc.data(), n * Dp, 0.0f);

      int64_t key_tile = 0;
      for (int64_t j0 = row.first_real; j0 < i1; j0 += kKeyTile, ++key_tile) {
        const int64_t j1 = std::min(j0 + kKeyTile, i1);
        const int64_t nk = j1 - j0;
        const float* kt = sc.kt.data();
        const float* vt = sc.v.data();
        if (pack) {
          kt = packed_kt.data() + (bh * key_tiles + key_tile) * kt_size;
          vt = packed_v.data() + (bh * key_tiles + key_tile) * v_size;
        } else {
          gather_keys(b, h, j0, nk, sc.kt.data(), sc.v.data());
        }
        if (rounded_bias) {
          for (int64_t c = 0; c < nk; ++c) {
            sc.bias[c] = row.real(j0 + c)
                             ? rounded_key_bias(slope, row.pos[j0 + c], p.bf16_bias_divisor)
                             : kNegInf;
          }
        } else {
          for (int64_t c = 0; c < nk; ++c) {
            sc.bias[c] = row.real(j0 + c) ? slope * static_cast<float>(row.pos[j0 + c]) : kNegInf;
          }
        }
        // Query rows before j0 (only when a key tile starts inside the query tile) see none of
        // these keys and are left untouched.
        const int64_t r_lo = std::max<int64_t>(0, j0 - i0);
        TileProduct qk;  // raw scores: s = Q K^T, (n - r_lo, keys)
        qk.m = n - r_lo, qk.n = round_up(nk, kLanes), qk.k = D;
        qk.a = base + (i0 + r_lo) * token_stride, qk.a_row = token_stride, qk.a_col = 1;
        qk.b = kt, qk.ldb = kKeyTile;
        qk.c = sc.s.data() + r_lo * kKeyTile, qk.ldc = kKeyTile;
        // Row r_lo + r sees the keys of this tile below i0 + r_lo + r + 1 - j0.
        const int64_t causal_offset = i0 + r_lo + 1 - j0;
        qk.causal = TileProduct::Causal::kColumns, qk.causal_offset = causal_offset;
        tile_product(qk);

        for (int64_t r = r_lo; r < n; ++r) {
          const int64_t i = i0 + r;
          const int64_t visible = std::min(j1, i + 1) - j0;  // keys of this tile at or before i
          float* s = sc.s.data() + r * kKeyTile;
          const Vec neg_inf = Vec{} + kNegInf;
          Vec lane_tile_max = neg_inf;
          for (int64_t c = 0; c < kKeyTile; c += kLanes) {
            const IntVec live = kLaneIndex + static_cast<int32_t>(c) < static_cast<int32_t>(visible);
            const Vec v = live ? load(s + c) * p.scale + load(sc.bias.data() + c) : neg_inf;
            store(s + c, v);
            lane_tile_max = v > lane_tile_max ? v : lane_tile_max;
          }
          if (want_stats) {
            // Keep the scores the statistics need, exactly as the softmax saw them, instead of
            // recomputing dot products at the end.
            if (j0 == row.first_real) sc.first_score[r] = s[0];
            for (int64_t k = 0; k < kNearKeys; ++k) {
              const int64_t c = i - k - j0;
              if (c >= 0 && c < nk) sc.near_score[r * kNearKeys + k] = s[c];
            }
          }
          const float tile_max = lane_max(lane_tile_max);
          if (tile_max == kNegInf) {
            // Only padding keys here: probabilities zero, accumulator unchanged.
            std::fill_n(s, kKeyTile, 0.0f);
            sc.alpha[r] = 1.0f;
            continue;
          }
          const float old_max = sc.row_max[r];
          const float new_max = std::max(old_max, tile_max);
          const float alpha = old_max == kNegInf ? 0.0f : exp_approx(old_max - new_max);
          Vec lane_sum_e{}, lane_sum_ps{};
          for (int64_t c = 0; c < kKeyTile; c += kLanes) {
            const Vec v = load(s + c);
            const IntVec live = v != neg_inf;
            const Vec rel = live ? v - new_max : Vec{};
            const Vec e = live ? exp_approx(rel) : Vec{};
            store(s + c, e);
            lane_sum_e += e;
            lane_sum_ps += e * rel;
          }
          const float tile_sum = lane_sum(lane_sum_e), tile_ps = lane_sum(lane_sum_ps);
          if (want_entropy) {
            // sum p (s - m) re-expressed against the new max: p scales by alpha, and each
            // (s - m_old) gains (m_old - m_new).
            const float shift = old_max == kNegInf ? 0.0f : old_max - new_max;
            sc.row_ps[r] = alpha * (sc.row_ps[r] + shift * sc.row_sum[r]) + tile_ps;
          }
          sc.row_sum[r] = alpha * sc.row_sum[r] + tile_sum;
          sc.row_max[r] = new_max;
          sc.alpha[r] = alpha;
        }

        TileProduct pv;  // acc = diag(alpha) acc + P V, (n - r_lo, Dp)
        pv.m = n - r_lo, pv.n = Dp, pv.k = nk;
        pv.a = sc.s.data() + r_lo * kKeyTile, pv.a_row = kKeyTile, pv.a_col = 1;
        pv.b = vt, pv.ldb = Dp;
        pv.c = sc.acc.data() + r_lo * Dp, pv.ldc = Dp;
        pv.mode = Accumulate::kScaleRows, pv.row_scale = sc.alpha.data() + r_lo;
        pv.causal = TileProduct::Causal::kDepth, pv.causal_offset = causal_offset;
        tile_product(pv);
      }

      double bos = 0.0, entropy = 0.0, local = 0.0;
      for (int64_t r = 0; r < n; ++r) {
        const int64_t i = i0 + r;
        float* out = static_cast<float*>(p.out) + ((b * q_rows) + (i - p.query_begin)) * out_stride +
                     h * D;
        const float sum = sc.row_sum[r];
        if (sum == 0.0f) {
          // See Note [fully padded query rows].
          std::fill_n(out, D, 0.0f);
          for (int64_t j = 0; j < T; ++j) {
            const float* v = base + j * token_stride + 2 * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) out[d] += v[d];
          }
          const float inv_t = 1.0f / static_cast<float>(T);
          for (int64_t d = 0; d < D; ++d) out[d] *= inv_t;
          if (p.lse != nullptr) p.lse[(b * H + h) * T + i] = std::log(static_cast<float>(T));
          continue;
        }
        const float inv = 1.0f / sum;
        const float* acc = sc.acc.data() + r * Dp;
        for (int64_t d = 0; d < D; ++d) out[d] = acc[d] * inv;
        const float lse = sc.row_max[r] + std::log(sum);
        if (p.lse != nullptr) p.lse[(b * H + h) * T + i] = lse;
        if (!want_stats || !row.real(i)) continue;
        // Scores of keys further back than the captured ones (only reachable when padding sits
        // between real tokens) are recomputed.
        auto score = [&](int64_t j) {
          if (i - j < kNearKeys) return sc.near_score[r * kNearKeys + (i - j)];
          const float* q = base + i * token_stride;
          const float* k = base + j * token_stride + D;
          if (rounded_bias) {
            return dot(q, k, D) * p.scale +
                   rounded_key_bias(slope, row.pos[j], p.bf16_bias_divisor);
          }
          return dot(q, k, D) * p.scale + slope * static_cast<float>(row.pos[j]);
        };
        // exp in float: score - lse is what the softmax itself exponentiated.
        if (want_bos) bos += exp_approx(sc.first_score[r] - lse);
        if (want_entropy) {
          entropy += std::log(static_cast<double>(sum)) -
                     static_cast<double>(sc.row_ps[r]) / static_cast<double>(sum);
        }
        if (want_local) {
          // The real keys with pos_j >= pos_i - kLocalWindow are the last (at most
          // kLocalWindow + 1) real keys <= i.
          for (int64_t j = i; j >= row.first_real; --j) {
            if (!row.real(j)) continue;
            if (row.pos[j] < row.pos[i] - kLocalWindow) break;
            local += exp_approx(score(j) - lse);
          }
        }
      }
      if (want_stats) {
        double* ts = task_stats.data() + ((b * H + h) * q_tiles + qt) * kStatCount;
        ts[0] = bos;
        ts[1] = entropy;
        ts[2] = local;
      }
    }
  }

  if (want_stats) {
    for (int64_t bh = 0; bh < B * H; ++bh) {
      for (int64_t qt = 0; qt < q_tiles; ++qt) {
        const double* ts = task_stats.data() + (bh * q_tiles + qt) * kStatCount;
        if (want_bos) st.bos_mass_sum[bh] += ts[0];
        if (want_entropy) st.entropy_sum[bh] += ts[1];
        if (want_local) st.local_mass_sum[bh] += ts[2];
      }
    }
  }
  if (st.rows != nullptr) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = p.query_begin; i < T; ++i) st.rows[b] += layout[b].real(i) ? 1 : 0;
    }
  }
  return absl::OkStatus();
}

absl::Status alibi_attention_backward(const AlibiAttentionParams& p) {
  if (absl::Status s = check_attention_params(p, "alibi_attention_backward"); !s.ok()) return s;
  if (absl::Status s = check_f32_storage(p, "alibi_attention_backward"); !s.ok()) return s;
  if (absl::Status s = check_attention_backward_params(p, "alibi_attention_backward"); !s.ok()) {
    return s;
  }
  const int64_t B = p.batch, T = p.seq, H = p.heads, D = p.head_dim;
  const int64_t Dp = round_up(D, kLanes);
  const int64_t token_stride = 3 * H * D;
  const int64_t out_stride = H * D;
  if (B == 0 || T == 0) return absl::OkStatus();

  std::vector<int32_t> derived;
  const int32_t* pos = p.positions;
  if (pos == nullptr) {
    derived = derive_positions(p);
    pos = derived.data();
  }
  const std::vector<RowLayout> layout = row_layouts(p, pos);
  const bool rounded_bias = p.bf16_bias_divisor != 0.0f;

  // One task per (batch row, head): each owns its dQ rows and its dK/dV key tiles, so no two
  // threads write the same element. Per key tile, query tiles of kQueryTile rows go through
  // S = Q K^T and dP = dO V^T, then dV += P^T dO, dK += dS^T Q, dQ += dS K, all as register-
  // blocked tile products; row-major copies are padded to Dp columns (padding stays zero).
  // The backward does about 2.5x the forward's work, so the same cut-off is on the safe side.
  const bool parallel = causal_macs(B * H, T, T, D) >= kParallelMinMacs;
#pragma omp parallel if (parallel)
  {
    std::vector<float> dq(T * Dp), delta(T), kt(D * kKeyTile), vt(D * kKeyTile),
        k(kKeyTile * Dp), dk(kKeyTile * Dp), dv(kKeyTile * Dp), q(kQueryTile * Dp),
        g(kQueryTile * Dp), uniform_dv(Dp), s(kQueryTile * kKeyTile), dp(kQueryTile * kKeyTile),
        bias(kKeyTile);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const RowLayout& row = layout[b];
      const float slope = p.slopes[h];
      const float sink_weight = p.sink_loss_weight == nullptr ? 0.0f : p.sink_loss_weight[h];
      const float* base = static_cast<const float*>(p.qkv) + b * T * token_stride + h * 3 * D;
      float* dbase = static_cast<float*>(p.dqkv) + b * T * token_stride + h * 3 * D;
      const float* lse = p.lse + bh * T;
      auto dout_row = [&](int64_t i) {
        return static_cast<const float*>(p.dout) + (b * T + i) * out_stride + h * D;
      };

      // delta_i = dout_i . out_i = sum_j P_ij (dout_i . v_j), the softmax backward's row term.
      for (int64_t i = 0; i < T; ++i) {
        const float* out_row = static_cast<const float*>(p.out) + (b * T + i) * out_stride + h * D;
        delta[i] = dot(dout_row(i), out_row, D);
      }
      std::fill(dq.begin(), dq.end(), 0.0f);
      // Rows before the first real key attend uniformly to all T keys (Note [fully padded query
      // rows]): each key's dV receives the mean of those rows' dout.
      std::fill(uniform_dv.begin(), uniform_dv.end(), 0.0f);
      for (int64_t i = 0; i < row.first_real; ++i) {
        const float* gi = dout_row(i);
        for (int64_t d = 0; d < D; ++d) uniform_dv[d] += gi[d];
      }
      const float inv_t = 1.0f / static_cast<float>(T);
      for (int64_t d = 0; d < D; ++d) uniform_dv[d] *= inv_t;

      for (int64_t j0 = 0; j0 < T; j0 += kKeyTile) {
        const int64_t j1 = std::min(j0 + kKeyTile, T);
        const int64_t nk = j1 - j0;
        const int64_t key_cols = round_up(nk, kLanes);
        for (int64_t c = 0; c < nk; ++c) {
          const float* kr = base + (j0 + c) * token_stride + D;
          for (int64_t d = 0; d < D; ++d) {
            kt[d * kKeyTile + c] = kr[d];
            vt[d * kKeyTile + c] = kr[D + d];
          }
          std::copy_n(kr, D, k.data() + c * Dp);
          if (rounded_bias) {
            bias[c] = row.real(j0 + c)
                          ? rounded_key_bias(slope, row.pos[j0 + c], p.bf16_bias_divisor)
                          : kNegInf;
          } else {
            bias[c] = row.real(j0 + c) ? slope * static_cast<float>(row.pos[j0 + c]) : kNegInf;
          }
        }
        std::fill_n(dk.data(), nk * Dp, 0.0f);
        for (int64_t c = 0; c < nk; ++c) std::copy_n(uniform_dv.data(), Dp, dv.data() + c * Dp);

        for (int64_t i0 = std::max(j0, row.first_real); i0 < T; i0 += kQueryTile) {
          const int64_t n = std::min(kQueryTile, T - i0);
          for (int64_t r = 0; r < n; ++r) {
            std::copy_n(base + (i0 + r) * token_stride, D, q.data() + r * Dp);
            std::copy_n(dout_row(i0 + r), D, g.data() + r * Dp);
          }
          TileProduct score;  // s = Q K^T, (n, keys)
          score.m = n, score.n = key_cols, score.k = D;
          score.a = q.data(), score.a_row = Dp, score.a_col = 1;
          score.b = kt.data(), score.ldb = kKeyTile;
          score.c = s.data(), score.ldc = kKeyTile;
          // Query row i0 + r sees the keys of this tile below i0 + r + 1 - j0.
          score.causal = TileProduct::Causal::kColumns, score.causal_offset = i0 + 1 - j0;
          tile_product(score);
          TileProduct dprob = score;  // dp = dO V^T, (n, keys)
          dprob.a = g.data(), dprob.b = vt.data(), dprob.c = dp.data();
          tile_product(dprob);

          for (int64_t r = 0; r < n; ++r) {
            const int64_t i = i0 + r;
            const int64_t visible = std::min(j1, i + 1) - j0;
            const float li = lse[i], di = delta[i];
            // The sink loss's w * P_ij joins the softmax term; its -w at the first real key
            // follows the loop. Padding query rows carry no sink loss.
            const float wi = row.real(i) ? sink_weight : 0.0f;
            float* sr = s.data() + r * kKeyTile;
            float* dpr = dp.data() + r * kKeyTile;
            for (int64_t c = 0; c < kKeyTile; c += kLanes) {
              const Vec b = load(bias.data() + c);
              const IntVec live = (kLaneIndex + static_cast<int32_t>(c) <
                                 static_cast<int32_t>(visible)) & (b != kNegInf);
              const Vec prob = live ? exp_approx(load(sr + c) * p.scale + b - li) : Vec{};
              store(sr + c, prob);                                        // now P_ij
              store(dpr + c, prob * (load(dpr + c) - di + wi) * p.scale);  // now dS_ij * scale
            }
            const int64_t first_col = row.first_real - j0;
            if (wi != 0.0f && first_col >= 0 && first_col < visible) dpr[first_col] -= wi * p.scale;
          }

          TileProduct grad_v;  // dV += P^T dO, (keys, Dp)
          grad_v.m = nk, grad_v.n = Dp, grad_v.k = n;
          grad_v.a = s.data(), grad_v.a_row = 1, grad_v.a_col = kKeyTile;
          grad_v.b = g.data(), grad_v.ldb = Dp;
          grad_v.c = dv.data(), grad_v.ldc = Dp;
          grad_v.mode = Accumulate::kAdd;
          tile_product(grad_v);
          TileProduct grad_k = grad_v;  // dK += dS^T Q, (keys, Dp)
          grad_k.a = dp.data(), grad_k.b = q.data(), grad_k.c = dk.data();
          tile_product(grad_k);
          TileProduct grad_q;  // dQ += dS K, (n, Dp)
          grad_q.m = n, grad_q.n = Dp, grad_q.k = nk;
          grad_q.a = dp.data(), grad_q.a_row = kKeyTile, grad_q.a_col = 1;
          grad_q.b = k.data(), grad_q.ldb = Dp;
          grad_q.c = dq.data() + i0 * Dp, grad_q.ldc = Dp;
          grad_q.mode = Accumulate::kAdd;
          grad_q.causal = TileProduct::Causal::kDepth, grad_q.causal_offset = i0 + 1 - j0;
          tile_product(grad_q);
        }
        for (int64_t c = 0; c < nk; ++c) {
          float* dst = dbase + (j0 + c) * token_stride;
          std::copy_n(dk.data() + c * Dp, D, dst + D);
          std::copy_n(dv.data() + c * Dp, D, dst + 2 * D);
        }
      }
      for (int64_t i = 0; i < T; ++i) std::copy_n(dq.data() + i * Dp, D, dbase + i * token_stride);
    }
  }
  return absl::OkStatus();
}

ENGINE_CPU_KERNELS_END
