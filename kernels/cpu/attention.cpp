// Fused causal ALiBi attention over BLOOM's fused QKV activation, flash-style, fp32.
// Contract (forward): for every batch row b, head h and query row i in [query_begin, T):
//   s[i, j] = (q_i . k_j) * scale + slope_h * pos_j   for keys j <= i with mask[j] = 1,
//   out_i = sum_j softmax_j(s[i, .]) v_j, lse[b, h, i] = log sum_j exp(s[i, j]).
// The (T, T) score matrix is never held: queries are processed in tiles of kQueryTile rows
// against tiles of kKeyTile keys with an online softmax (running max, running sum). Memory is
// O(tile) per thread beyond the inputs and outputs.
// Optional statistics (METHOD.md section 2) are accumulated, in double, over valid query rows:
// bos_mass (mass on the first real key of the sequence), entropy (-sum A ln A, via
// lse - sum p s with sum p s kept relative to the running max), local_mass (mass on the real keys
// whose positions are pos_i - 2 .. pos_i). With every statistics pointer null nothing extra runs.
// Note [fully padded query rows]: a query row with no real key at or before it (the padding at the
// start of a left-padded sequence) has nothing to attend to. transformers adds the dtype minimum
// to every masked score, which, after rounding, leaves all T scores equal, so its softmax is
// uniform over all T keys of the sequence. We reproduce that (out_i = mean of v over all T keys,
// lse = log T) so logits at padded positions match too; such rows are never in the statistics and
// their output is independent of q and k, so the backward gives them no dQ/dK contribution.
// Contract (backward): recomputes probabilities from q, k and the saved lse; writes (overwrites)
// dQ, dK, dV into dqkv in the same fused (B, T, H, 3, D) layout, with zeros for padded keys.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vector_math.h"

namespace engine::cpu {
namespace {

// 64 x 64 tiles keep the per-thread working set (Q tile, transposed K tile, V tile, accumulator)
// at 4 * 64 * D floats: 128 KiB at D = 128, inside a typical L2.
constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Positions and mask of one batch row, plus the first real key.
struct RowLayout {
  const uint8_t* mask;      // (T) or null when every token is real
  const int32_t* pos;       // (T)
  int64_t first_real;       // first j with mask[j] = 1; T when the row is all padding
  bool real(int64_t j) const { return mask == nullptr || mask[j] != 0; }
};

absl::Status check(const AlibiAttentionParams& p, const char* op) {
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

float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Per-thread scratch for one (batch row, head, query tile) task of the forward pass.
struct ForwardScratch {
  std::vector<float> q, kt, v, acc, s, p, row_max, row_sum, row_ps;
  std::vector<float> bias;  // (kKeyTile) slope * pos, or -inf for padding keys
  explicit ForwardScratch(int64_t d)
      : q(kQueryTile * d), kt(d * kKeyTile), v(kKeyTile * d), acc(kQueryTile * d),
        s(kKeyTile), p(kKeyTile), row_max(kQueryTile), row_sum(kQueryTile),
        row_ps(kQueryTile), bias(kKeyTile) {}
};

}  // namespace

absl::Status alibi_attention_forward(const AlibiAttentionParams& p) {
  if (absl::Status s = check(p, "alibi_attention_forward"); !s.ok()) return s;
  const int64_t B = p.batch, T = p.seq, H = p.heads, D = p.head_dim;
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

#pragma omp parallel
  {
    ForwardScratch sc(D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      // Later query tiles carry more keys; handing them out first balances the causal triangle.
      const int64_t qt = q_tiles - 1 - task % q_tiles;
      const int64_t bh = task / q_tiles;
      const int64_t b = bh / H, h = bh % H;
      const RowLayout& row = layout[b];
      const float slope = p.slopes[h];
      const float* base = p.qkv + b * T * token_stride + h * 3 * D;  // q of token 0
      const int64_t i0 = p.query_begin + qt * kQueryTile;
      const int64_t i1 = std::min(i0 + kQueryTile, T);
      const int64_t n = i1 - i0;

      for (int64_t r = 0; r < n; ++r) {
        std::copy_n(base + (i0 + r) * token_stride, D, sc.q.data() + r * D);
        sc.row_max[r] = kNegInf;
        sc.row_sum[r] = 0.0f;
        sc.row_ps[r] = 0.0f;
      }
      std::fill_n(sc.acc.data(), n * D, 0.0f);

      for (int64_t j0 = row.first_real; j0 < i1; j0 += kKeyTile) {
        const int64_t j1 = std::min(j0 + kKeyTile, i1);
        const int64_t nk = j1 - j0;
        for (int64_t c = 0; c < nk; ++c) {
          const float* k = base + (j0 + c) * token_stride + D;
          for (int64_t d = 0; d < D; ++d) sc.kt[d * kKeyTile + c] = k[d];
          std::copy_n(k + D, D, sc.v.data() + c * D);
          sc.bias[c] = row.real(j0 + c) ? slope * static_cast<float>(row.pos[j0 + c]) : kNegInf;
        }
        for (int64_t r = std::max<int64_t>(0, j0 - i0); r < n; ++r) {
          const int64_t i = i0 + r;
          const int64_t visible = std::min(j1, i + 1) - j0;  // keys of this tile at or before i
          float* s = sc.s.data();
          std::fill_n(s, kKeyTile, 0.0f);
          const float* q = sc.q.data() + r * D;
          for (int64_t d = 0; d < D; ++d) {
            const float qd = q[d];
            const float* kt = sc.kt.data() + d * kKeyTile;
#pragma omp simd
            for (int64_t c = 0; c < kKeyTile; ++c) s[c] += qd * kt[c];
          }
          float tile_max = kNegInf;
#pragma omp simd reduction(max : tile_max)
          for (int64_t c = 0; c < kKeyTile; ++c) {
            const float v = c < visible ? s[c] * p.scale + sc.bias[c] : kNegInf;
            s[c] = v;
            tile_max = std::max(tile_max, v);
          }
          if (tile_max == kNegInf) continue;
          const float old_max = sc.row_max[r];
          const float new_max = std::max(old_max, tile_max);
          const float alpha = old_max == kNegInf ? 0.0f : exp_approx(old_max - new_max);
          float* pr = sc.p.data();
          float tile_sum = 0.0f, tile_ps = 0.0f;
#pragma omp simd reduction(+ : tile_sum, tile_ps)
          for (int64_t c = 0; c < kKeyTile; ++c) {
            const bool live = s[c] != kNegInf;
            const float rel = live ? s[c] - new_max : 0.0f;
            const float e = live ? exp_approx(rel) : 0.0f;
            pr[c] = e;
            tile_sum += e;
            tile_ps += e * rel;
          }
          if (want_entropy) {
            // sum p (s - m) re-expressed against the new max: p scales by alpha, and each
            // (s - m_old) gains (m_old - m_new).
            const float shift = old_max == kNegInf ? 0.0f : old_max - new_max;
            sc.row_ps[r] = alpha * (sc.row_ps[r] + shift * sc.row_sum[r]) + tile_ps;
          }
          sc.row_sum[r] = alpha * sc.row_sum[r] + tile_sum;
          sc.row_max[r] = new_max;
          float* acc = sc.acc.data() + r * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) acc[d] *= alpha;
          for (int64_t c = 0; c < nk; ++c) {
            const float pc = pr[c];
            if (pc == 0.0f) continue;
            const float* v = sc.v.data() + c * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) acc[d] += pc * v[d];
          }
        }
      }

      double bos = 0.0, entropy = 0.0, local = 0.0;
      for (int64_t r = 0; r < n; ++r) {
        const int64_t i = i0 + r;
        float* out = p.out + ((b * q_rows) + (i - p.query_begin)) * out_stride + h * D;
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
        const float* acc = sc.acc.data() + r * D;
        for (int64_t d = 0; d < D; ++d) out[d] = acc[d] * inv;
        const float lse = sc.row_max[r] + std::log(sum);
        if (p.lse != nullptr) p.lse[(b * H + h) * T + i] = lse;
        if (!want_stats || !row.real(i)) continue;
        const float* q = sc.q.data() + r * D;
        auto score = [&](int64_t j) {
          const float* k = base + j * token_stride + D;
          return dot(q, k, D) * p.scale + slope * static_cast<float>(row.pos[j]);
        };
        if (want_bos) bos += std::exp(static_cast<double>(score(row.first_real)) - lse);
        if (want_entropy) {
          entropy += std::log(static_cast<double>(sum)) -
                     static_cast<double>(sc.row_ps[r]) / static_cast<double>(sum);
        }
        if (want_local) {
          // The real keys with pos_j >= pos_i - 2 are the last (at most three) real keys <= i.
          constexpr int32_t kLocalWindow = 2;
          for (int64_t j = i; j >= row.first_real; --j) {
            if (!row.real(j)) continue;
            if (row.pos[j] < row.pos[i] - kLocalWindow) break;
            local += std::exp(static_cast<double>(score(j)) - lse);
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
  if (absl::Status s = check(p, "alibi_attention_backward"); !s.ok()) return s;
  if (p.query_begin != 0) {
    return absl::InvalidArgumentError("alibi_attention_backward: query_begin must be 0");
  }
  if (p.lse == nullptr || p.dout == nullptr || p.dqkv == nullptr) {
    return absl::InvalidArgumentError(
        "alibi_attention_backward: lse, out, dout and dqkv are required");
  }
  const int64_t B = p.batch, T = p.seq, H = p.heads, D = p.head_dim;
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

  // One task per (batch row, head): each owns its dQ rows and its dK/dV key tiles, so no two
  // threads write the same element.
#pragma omp parallel
  {
    std::vector<float> dq(T * D), delta(T), kt(D * kKeyTile), vt(D * kKeyTile), k(kKeyTile * D),
        dk(kKeyTile * D), dv(kKeyTile * D), uniform_dv(D), s(kKeyTile), dp(kKeyTile),
        bias(kKeyTile);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const RowLayout& row = layout[b];
      const float slope = p.slopes[h];
      const float* base = p.qkv + b * T * token_stride + h * 3 * D;
      float* dbase = p.dqkv + b * T * token_stride + h * 3 * D;
      const float* lse = p.lse + bh * T;
      auto dout_row = [&](int64_t i) { return p.dout + (b * T + i) * out_stride + h * D; };

      // delta_i = dout_i . out_i = sum_j P_ij (dout_i . v_j), the softmax backward's row term.
      for (int64_t i = 0; i < T; ++i) {
        delta[i] = dot(dout_row(i), p.out + (b * T + i) * out_stride + h * D, D);
      }
      std::fill(dq.begin(), dq.end(), 0.0f);
      // Rows before the first real key attend uniformly to all T keys (Note [fully padded query
      // rows]): each key's dV receives the mean of those rows' dout.
      std::fill(uniform_dv.begin(), uniform_dv.end(), 0.0f);
      for (int64_t i = 0; i < row.first_real; ++i) {
        const float* g = dout_row(i);
        for (int64_t d = 0; d < D; ++d) uniform_dv[d] += g[d];
      }
      const float inv_t = 1.0f / static_cast<float>(T);
      for (int64_t d = 0; d < D; ++d) uniform_dv[d] *= inv_t;

      for (int64_t j0 = 0; j0 < T; j0 += kKeyTile) {
        const int64_t j1 = std::min(j0 + kKeyTile, T);
        const int64_t nk = j1 - j0;
        for (int64_t c = 0; c < kKeyTile; ++c) {
          const bool in_range = c < nk;
          const float* kr = base + (j0 + c) * token_stride + D;
          for (int64_t d = 0; d < D; ++d) {
            const float kv = in_range ? kr[d] : 0.0f;
            const float vv = in_range ? kr[D + d] : 0.0f;
            kt[d * kKeyTile + c] = kv;
            vt[d * kKeyTile + c] = vv;
            k[c * D + d] = kv;
          }
          bias[c] = in_range && row.real(j0 + c)
                        ? slope * static_cast<float>(row.pos[j0 + c]) : kNegInf;
        }
        std::fill(dk.begin(), dk.end(), 0.0f);
        for (int64_t c = 0; c < nk; ++c) std::copy_n(uniform_dv.data(), D, dv.data() + c * D);

        const int64_t first_query = std::max(j0, row.first_real);
        for (int64_t i = first_query; i < T; ++i) {
          const float* q = base + i * token_stride;
          const float* g = dout_row(i);
          const int64_t visible = std::min(j1, i + 1) - j0;
          std::fill(s.begin(), s.end(), 0.0f);
          std::fill(dp.begin(), dp.end(), 0.0f);
          for (int64_t d = 0; d < D; ++d) {
            const float qd = q[d], gd = g[d];
            const float* ktd = kt.data() + d * kKeyTile;
            const float* vtd = vt.data() + d * kKeyTile;
#pragma omp simd
            for (int64_t c = 0; c < kKeyTile; ++c) {
              s[c] += qd * ktd[c];
              dp[c] += gd * vtd[c];
            }
          }
          const float li = lse[i], di = delta[i];
          bool any = false;
          for (int64_t c = 0; c < kKeyTile; ++c) {
            const bool live = c < visible && bias[c] != kNegInf;
            const float prob = live ? exp_approx(s[c] * p.scale + bias[c] - li) : 0.0f;
            s[c] = prob;                          // now P_ij
            dp[c] = prob * (dp[c] - di) * p.scale;  // now dS_ij * scale
            any = any || live;
          }
          if (!any) continue;
          float* dqi = dq.data() + i * D;
          for (int64_t c = 0; c < nk; ++c) {
            const float pc = s[c], dsc = dp[c];
            if (pc == 0.0f && dsc == 0.0f) continue;
            const float* kc = k.data() + c * D;
            float* dkc = dk.data() + c * D;
            float* dvc = dv.data() + c * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) {
              dqi[d] += dsc * kc[d];
              dkc[d] += dsc * q[d];
              dvc[d] += pc * g[d];
            }
          }
        }
        for (int64_t c = 0; c < nk; ++c) {
          float* dst = dbase + (j0 + c) * token_stride;
          std::copy_n(dk.data() + c * D, D, dst + D);
          std::copy_n(dv.data() + c * D, D, dst + 2 * D);
        }
      }
      for (int64_t i = 0; i < T; ++i) std::copy_n(dq.data() + i * D, D, dbase + i * token_stride);
    }
  }
  return absl::OkStatus();
}

}  // namespace engine::cpu
