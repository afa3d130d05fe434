// Tied LM head + log-softmax + next-token cross-entropy, computed in vocabulary chunks.
// Contract: logits = hidden . embedding^T (rows, V); row_loss[r] = logsumexp(logits[r]) -
// logits[r, targets[r]] for scored rows (target >= 0), 0 otherwise. The (rows, V) logits are never
// held unless the caller passes `logits`: rows are processed in blocks of kRowBlock against
// vocabulary chunks of vocab_chunk columns with an online (running max, running sum) log-sum-exp.
// Gradients, when asked for, are those of loss_scale * sum of scored row losses:
//   dlogits = loss_scale * (softmax - onehot(target)) for scored rows, 0 for unscored rows,
//   dhidden = dlogits . embedding (overwritten), dembedding += dlogits^T . hidden;
// dembedding needs the final log-sum-exp of every row before any chunk's dlogits is known, so it
// takes a second pass over the chunks that recomputes the logits (or reads `logits`). dhidden
// alone does not: softmax . embedding is accumulated during the first pass like the output of
// flash attention (acc = sum_v exp(z_v - running max) e_v, rescaled when the running max grows,
// divided by the running sum at the end), so loss and dhidden cost two GEMMs, not three.
// Storage: this per-instruction-set kernel takes hidden and dhidden in fp32 and the embedding in
// p.storage. The 16-bit twin (kernels/cpu/storage.h) widens the activations before calling it but
// not the (V, W) table, which it would otherwise copy whole on every call: the table's rows are
// widened here one vocabulary chunk at a time (EmbeddingRows).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/dtype.h"
#include "kernels/cpu/isa_kernels.h"
#include "kernels/cpu/isa_region.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vector_math.h"

ENGINE_CPU_KERNELS_BEGIN
namespace {

// Rows per block: bounds the chunk buffer at kRowBlock * vocab_chunk floats (8 MiB at the default
// chunk) while keeping each GEMM large enough to run near peak.
constexpr int64_t kRowBlock = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// fp32 rows of the embedding table: pointers into it when it is fp32, else rows widened into a
// buffer that holds the last range asked for (a chunk is asked for by two GEMMs in a row).
class EmbeddingRows {
 public:
  explicit EmbeddingRows(const ClassifierParams& p) : p_(p) {}
  const float* rows(int64_t v0, int64_t count) {
    if (p_.storage == DType::kF32) return static_cast<const float*>(p_.embedding) + v0 * p_.width;
    if (v0 != v0_ || count != count_) {
      buffer_.resize(static_cast<size_t>(count * p_.width));
      convert_to_f32(p_.storage,
                     static_cast<const char*>(p_.embedding) +
                         v0 * p_.width * static_cast<int64_t>(dtype_size(p_.storage)),
                     buffer_.data(), buffer_.size());
      v0_ = v0, count_ = count;
    }
    return buffer_.data();
  }

 private:
  const ClassifierParams& p_;
  std::vector<float> buffer_;
  int64_t v0_ = -1, count_ = 0;
};

// Row t of the embedding table in fp32: a pointer into an fp32 table, else widened into *buffer.
const float* embedding_row(const ClassifierParams& p, int32_t t, std::vector<float>* buffer) {
  const int64_t W = p.width;
  if (p.storage == DType::kF32) return static_cast<const float*>(p.embedding) + t * W;
  buffer->resize(static_cast<size_t>(W));
  convert_to_f32(p.storage,
                 static_cast<const char*>(p.embedding) +
                     t * W * static_cast<int64_t>(dtype_size(p.storage)),
                 buffer->data(), buffer->size());
  return buffer->data();
}

absl::Status check(const ClassifierParams& p) {
  if (p.rows < 0 || p.width <= 0 || p.vocab <= 0 || p.vocab_chunk <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("classifier_cross_entropy: bad shape rows=", p.rows, " width=", p.width,
                     " vocab=", p.vocab, " vocab_chunk=", p.vocab_chunk));
  }
  if (p.hidden == nullptr || p.embedding == nullptr) {
    return absl::InvalidArgumentError(
        "classifier_cross_entropy: hidden and embedding are required");
  }
  if (p.targets != nullptr) {
    for (int64_t r = 0; r < p.rows; ++r) {
      if (p.targets[r] < -1 || p.targets[r] >= p.vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("classifier_cross_entropy: target ", p.targets[r], " at row ", r,
                         " is outside the vocabulary [0, ", p.vocab, ") and is not -1"));
      }
    }
  }
  return absl::OkStatus();
}

// Loss and dhidden in one pass over the vocabulary (no dembedding, no logits output).
absl::Status loss_and_dhidden_one_pass(const ClassifierParams& p) {
  const int64_t W = p.width, V = p.vocab;
  const int64_t chunk = std::min(p.vocab_chunk, V);
  std::vector<float> z(static_cast<size_t>(kRowBlock * chunk));  // logits, then exp(z - max)
  std::vector<float> row_max(kRowBlock), target_logit(kRowBlock), rescale(kRowBlock);
  std::vector<double> row_sum(kRowBlock);
  EmbeddingRows table(p);
  for (int64_t r0 = 0; r0 < p.rows; r0 += kRowBlock) {
    const int64_t nr = std::min(kRowBlock, p.rows - r0);
    float* acc = static_cast<float*>(p.dhidden) + r0 * W;  // (nr, W): sum_v exp(z_v - row_max) e_v so far
    std::fill_n(row_max.begin(), nr, kNegInf);
    std::fill_n(row_sum.begin(), nr, 0.0);
    std::fill_n(target_logit.begin(), nr, 0.0f);
    for (int64_t v0 = 0; v0 < V; v0 += chunk) {
      const int64_t nc = std::min(chunk, V - v0);
      GemmParams g;  // (nr, W) . (nc, W)^T -> (nr, nc)
      g.transpose_b = true;
      g.m = nr, g.n = nc, g.k = W;
      g.a = static_cast<const float*>(p.hidden) + r0 * W, g.lda = W;
      g.b = table.rows(v0, nc), g.ldb = W;
      g.c = z.data(), g.ldc = nc;
      if (absl::Status s = gemm(g); !s.ok()) return s;
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < nr; ++r) {
        float* zr = z.data() + r * nc;
        const int32_t t = p.targets != nullptr ? p.targets[r0 + r] : -1;
        if (t >= v0 && t < v0 + nc) target_logit[r] = zr[t - v0];
        float m = kNegInf;
#pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < nc; ++c) m = std::max(m, zr[c]);
        const float new_max = std::max(row_max[r], m);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < nc; ++c) {
          zr[c] = exp_approx(zr[c] - new_max);
          sum += zr[c];
        }
        // The first chunk finds acc unset: scale 0 with beta 0 below; later chunks rescale the
        // accumulated rows to the new maximum before adding this chunk's share.
        rescale[r] = v0 == 0 ? 0.0f : std::exp(row_max[r] - new_max);
        row_sum[r] = row_sum[r] * static_cast<double>(rescale[r]) + static_cast<double>(sum);
        row_max[r] = new_max;
        if (v0 > 0 && rescale[r] != 1.0f) {
          float* ar = acc + r * W;
          for (int64_t c = 0; c < W; ++c) ar[c] *= rescale[r];
        }
      }
      GemmParams a;  // acc (nr, W) += exp(z - max) (nr, nc) . embedding chunk (nc, W)
      a.m = nr, a.n = W, a.k = nc;
      a.a = z.data(), a.lda = nc;
      a.b = table.rows(v0, nc), a.ldb = W;
      a.c = acc, a.ldc = W;
      a.beta = v0 == 0 ? 0.0f : 1.0f;
      if (absl::Status s = gemm(a); !s.ok()) return s;
    }
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nr; ++r) {
      const int32_t t = p.targets != nullptr ? p.targets[r0 + r] : -1;
      const float lse = static_cast<float>(row_max[r] + std::log(row_sum[r]));
      if (p.row_loss != nullptr) p.row_loss[r0 + r] = t >= 0 ? lse - target_logit[r] : 0.0f;
      float* ar = acc + r * W;
      if (t < 0) {
        std::fill_n(ar, W, 0.0f);
        continue;
      }
      // dhidden = loss_scale * (softmax . embedding - embedding[target]).
      const float inv = static_cast<float>(p.loss_scale / row_sum[r]);
      std::vector<float> widened;  // the target's row of a 16-bit table
      const float* et = embedding_row(p, t, &widened);
      for (int64_t c = 0; c < W; ++c) ar[c] = ar[c] * inv - p.loss_scale * et[c];
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status classifier_cross_entropy(const ClassifierParams& p) {
  if (absl::Status s = check(p); !s.ok()) return s;
  if (p.dhidden != nullptr && p.dembedding == nullptr && p.logits == nullptr) {
    return loss_and_dhidden_one_pass(p);
  }
  const int64_t W = p.width, V = p.vocab;
  const int64_t chunk = std::min(p.vocab_chunk, V);
  const bool want_grad = p.dhidden != nullptr || p.dembedding != nullptr;
  // Logits of the current (row block, chunk) go straight into the caller's buffer when there is
  // one, otherwise into this scratch.
  std::vector<float> scratch(p.logits == nullptr ? static_cast<size_t>(kRowBlock * chunk) : 0);
  std::vector<float> dlogits(want_grad ? static_cast<size_t>(kRowBlock * chunk) : 0);
  std::vector<float> row_max(kRowBlock), row_lse(kRowBlock), target_logit(kRowBlock);
  std::vector<double> row_sum(kRowBlock);
  EmbeddingRows table(p);

  // Points *z at the (nr, nc) logits of rows r0.. and vocabulary v0.., row stride *ld.
  auto chunk_logits = [&](int64_t r0, int64_t nr, int64_t v0, int64_t nc, const float** z,
                          int64_t* ld) -> absl::Status {
    float* dst = p.logits != nullptr ? p.logits + r0 * V + v0 : scratch.data();
    *ld = p.logits != nullptr ? V : nc;
    *z = dst;
    GemmParams g;
    g.transpose_b = true;
    g.m = nr, g.n = nc, g.k = W;
    g.a = static_cast<const float*>(p.hidden) + r0 * W, g.lda = W;
    g.b = table.rows(v0, nc), g.ldb = W;
    g.c = dst, g.ldc = *ld;
    return gemm(g);
  };

  for (int64_t r0 = 0; r0 < p.rows; r0 += kRowBlock) {
    const int64_t nr = std::min(kRowBlock, p.rows - r0);
    std::fill_n(row_max.begin(), nr, kNegInf);
    std::fill_n(row_sum.begin(), nr, 0.0);
    std::fill_n(target_logit.begin(), nr, 0.0f);
    for (int64_t v0 = 0; v0 < V; v0 += chunk) {
      const int64_t nc = std::min(chunk, V - v0);
      int64_t ld = 0;
      const float* z = nullptr;
      if (absl::Status s = chunk_logits(r0, nr, v0, nc, &z, &ld); !s.ok()) return s;
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < nr; ++r) {
        const float* zr = z + r * ld;
        float m = kNegInf;
#pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < nc; ++c) m = std::max(m, zr[c]);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < nc; ++c) sum += exp_approx(zr[c] - m);
        const float new_max = std::max(row_max[r], m);
        row_sum[r] = row_sum[r] * std::exp(static_cast<double>(row_max[r]) - new_max) +
                     static_cast<double>(sum) * std::exp(static_cast<double>(m) - new_max);
        row_max[r] = new_max;
        const int32_t t = p.targets != nullptr ? p.targets[r0 + r] : -1;
        if (t >= v0 && t < v0 + nc) target_logit[r] = zr[t - v0];
      }
    }
    for (int64_t r = 0; r < nr; ++r) {
      row_lse[r] = static_cast<float>(row_max[r] + std::log(row_sum[r]));
      const int32_t t = p.targets != nullptr ? p.targets[r0 + r] : -1;
      if (p.row_loss != nullptr) p.row_loss[r0 + r] = t >= 0 ? row_lse[r] - target_logit[r] : 0.0f;
    }
    if (!want_grad) continue;

    for (int64_t v0 = 0; v0 < V; v0 += chunk) {
      const int64_t nc = std::min(chunk, V - v0);
      int64_t ld = V;
      const float* z = nullptr;
      if (p.logits != nullptr) {
        z = p.logits + r0 * V + v0;  // already computed by the first pass
      } else if (absl::Status s = chunk_logits(r0, nr, v0, nc, &z, &ld); !s.ok()) {
        return s;
      }
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < nr; ++r) {
        const float* zr = z + r * ld;
        float* dz = dlogits.data() + r * nc;
        const int32_t t = p.targets != nullptr ? p.targets[r0 + r] : -1;
        if (t < 0) {
          std::fill_n(dz, nc, 0.0f);
          continue;
        }
        const float lse = row_lse[r];
#pragma omp simd
        for (int64_t c = 0; c < nc; ++c) dz[c] = p.loss_scale * exp_approx(zr[c] - lse);
        if (t >= v0 && t < v0 + nc) dz[t - v0] -= p.loss_scale;
      }
      if (p.dhidden != nullptr) {
        GemmParams g;  // (nr, nc) . (nc, W) -> (nr, W)
        g.m = nr, g.n = W, g.k = nc;
        g.a = dlogits.data(), g.lda = nc;
        g.b = table.rows(v0, nc), g.ldb = W;
        g.c = static_cast<float*>(p.dhidden) + r0 * W, g.ldc = W;
        g.beta = v0 == 0 ? 0.0f : 1.0f;
        if (absl::Status s = gemm(g); !s.ok()) return s;
      }
      if (p.dembedding != nullptr) {
        GemmParams g;  // (nc, nr) . (nr, W) -> (nc, W), accumulated
        g.transpose_a = true;
        g.m = nc, g.n = W, g.k = nr;
        g.a = dlogits.data(), g.lda = nc;
        g.b = static_cast<const float*>(p.hidden) + r0 * W, g.ldb = W;
        g.c = p.dembedding + v0 * W, g.ldc = W;
        g.beta = 1.0f;
        if (absl::Status s = gemm(g); !s.ok()) return s;
      }
    }
  }
  return absl::OkStatus();
}

ENGINE_CPU_KERNELS_END
