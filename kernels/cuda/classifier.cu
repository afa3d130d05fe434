// CUDA tied LM head + log-softmax + next-token cross-entropy in vocabulary chunks.
// Contract: kernels/cpu/classifier.cpp's, on device pointers. The (rows, V) logits are never held
// unless the caller passes `logits`: rows go in blocks of kRowBlock against chunks of vocab_chunk
// columns; per chunk one cuBLAS GEMM makes the logits and one block per row merges the chunk's
// max and sum of exponentials into the row's running (max, sum) (sum in double, as on the CPU).
// Gradients (loss_scale * sum of scored row losses) take a second pass that recomputes each
// chunk's logits (or reads `logits`), turns them into dlogits in place of a scratch chunk, and
// runs the two GEMMs dhidden (+)= dlogits E and dembedding += dlogits^T hidden.
// Storage (hidden, embedding, dhidden: F32, BF16 or F16): the logits GEMM reads the storage type
// and writes fp32; the gradient GEMMs multiply the fp32 dlogits by the storage-typed embedding or
// hidden (cublasGemmEx, fp32 compute). A 16-bit dhidden is accumulated over the chunks in an
// fp32 buffer and rounded once at the end of its row block; logits, row_loss and dembedding are
// fp32 always.
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/scratch.h"
#include "kernels/cuda/storage.cuh"

namespace engine::cuda {
namespace {

// Rows per block: the chunk buffer is kRowBlock * vocab_chunk floats (32 MiB at the default
// chunk), and each GEMM is large enough to keep a GPU busy.
constexpr int64_t kRowBlock = 1024;
constexpr int kThreads = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct RowState {
  float* max;         // (kRowBlock)
  double* sum;        // (kRowBlock) sum of exp(logit - max)
  float* target;      // (kRowBlock) the target's logit
  float* lse;         // (kRowBlock)
};

__device__ float block_reduce(float v, float* scratch, bool take_max) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const float other = scratch[threadIdx.x + stride];
      scratch[threadIdx.x] = take_max ? fmaxf(scratch[threadIdx.x], other)
                                      : scratch[threadIdx.x] + other;
    }
    __syncthreads();
  }
  const float total = scratch[0];
  __syncthreads();
  return total;
}

__global__ void init_rows_kernel(int64_t rows, RowState st) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  st.max[r] = kNegInf;
  st.sum[r] = 0.0;
  st.target[r] = 0.0f;
}

// One block per row of the block: merge the chunk (nc logits at z + r * ld) into the row state.
__global__ void __launch_bounds__(kThreads) chunk_merge_kernel(const float* z, int64_t ld,
                                                               int64_t nc, int64_t v0,
                                                               const int32_t* targets,
                                                               RowState st) {
  __shared__ float scratch[kThreads];
  const int64_t r = blockIdx.x;
  const float* zr = z + r * ld;
  float m = kNegInf;
  for (int64_t c = threadIdx.x; c < nc; c += kThreads) m = fmaxf(m, zr[c]);
  m = block_reduce(m, scratch, true);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < nc; c += kThreads) sum += expf(zr[c] - m);
  sum = block_reduce(sum, scratch, false);
  if (threadIdx.x == 0) {
    const float new_max = fmaxf(st.max[r], m);
    st.sum[r] = st.sum[r] * exp(static_cast<double>(st.max[r]) - new_max) +
                static_cast<double>(sum) * exp(static_cast<double>(m) - new_max);
    st.max[r] = new_max;
    const int32_t t = targets != nullptr ? targets[r] : -1;
    if (t >= v0 && t < v0 + nc) st.target[r] = zr[t - v0];
  }
}

__global__ void finish_rows_kernel(int64_t rows, const int32_t* targets, RowState st,
                                   float* row_loss) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  st.lse[r] = static_cast<float>(st.max[r] + log(st.sum[r]));
  const int32_t t = targets != nullptr ? targets[r] : -1;
  if (row_loss != nullptr) row_loss[r] = t >= 0 ? st.lse[r] - st.target[r] : 0.0f;
}

// dz[r, c] = loss_scale * (softmax - onehot(target)) for scored rows, 0 otherwise.
// Grid (ceil(nc / kThreads), rows).
__global__ void dlogits_kernel(const float* z, int64_t ld, int64_t nc, int64_t v0,
                               const int32_t* targets, const float* lse, float loss_scale,
                               float* dz) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  const int64_t r = blockIdx.y;
  if (c >= nc) return;
  const int32_t t = targets != nullptr ? targets[r] : -1;
  float g = 0.0f;
  if (t >= 0) {
    g = loss_scale * expf(z[r * ld + c] - lse[r]);
    if (t - v0 == c) g -= loss_scale;
  }
  dz[r * nc + c] = g;
}

// The element `elements` places after base, in storage type t.
const void* advance(const void* base, int64_t elements, DType t) {
  return static_cast<const char*>(base) + elements * static_cast<int64_t>(dtype_size(t));
}
void* advance(void* base, int64_t elements, DType t) {
  return static_cast<char*>(base) + elements * static_cast<int64_t>(dtype_size(t));
}

absl::Status check(const ClassifierParams& p) {
  const auto type_ok = [](auto) { return absl::OkStatus(); };
  if (absl::Status s = with_storage(p.storage, "cuda classifier_cross_entropy", type_ok);
      !s.ok()) {
    return s;
  }
  if (p.rows < 0 || p.width <= 0 || p.vocab <= 0 || p.vocab_chunk <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda classifier_cross_entropy: bad shape rows=", p.rows, " width=", p.width,
                     " vocab=", p.vocab, " vocab_chunk=", p.vocab_chunk));
  }
  if (p.hidden == nullptr || p.embedding == nullptr) {
    return absl::InvalidArgumentError(
        "cuda classifier_cross_entropy: hidden and embedding are required");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status classifier_cross_entropy(const ClassifierParams& p, cublasHandle_t handle,
                                      cudaStream_t stream) {
  if (absl::Status s = check(p); !s.ok()) return s;
  if (p.targets != nullptr) {
    if (absl::Status s = check_targets(p.targets, p.rows, p.vocab, stream); !s.ok()) return s;
  }
  if (p.rows == 0) return absl::OkStatus();
  const int64_t W = p.width, V = p.vocab;
  const int64_t chunk = std::min(p.vocab_chunk, V);
  const int64_t block_rows = std::min(kRowBlock, p.rows);
  const bool want_grad = p.dhidden != nullptr || p.dembedding != nullptr;

  StreamScratch scratch(stream);
  float* chunk_buffer = nullptr;  // logits of one (row block, chunk) when the caller keeps none
  float* dlogits = nullptr;
  float* dhidden32 = nullptr;  // a 16-bit dhidden's fp32 accumulator, (block_rows, W)
  const bool f32 = p.storage == StorageType::kF32;
  RowState st{};
  if (p.logits == nullptr) {
    if (absl::Status s = scratch.allocate(&chunk_buffer, block_rows * chunk); !s.ok()) return s;
  }
  if (want_grad) {
    if (absl::Status s = scratch.allocate(&dlogits, block_rows * chunk); !s.ok()) return s;
  }
  if (!f32 && p.dhidden != nullptr) {
    if (absl::Status s = scratch.allocate(&dhidden32, block_rows * W); !s.ok()) return s;
  }
  if (absl::Status s = scratch.allocate(&st.max, block_rows); !s.ok()) return s;
  if (absl::Status s = scratch.allocate(&st.sum, block_rows); !s.ok()) return s;
  if (absl::Status s = scratch.allocate(&st.target, block_rows); !s.ok()) return s;
  if (absl::Status s = scratch.allocate(&st.lse, block_rows); !s.ok()) return s;

  // Makes the (nr, nc) logits of rows r0.. and vocabulary v0..; *z, *ld say where they are.
  auto chunk_logits = [&](int64_t r0, int64_t nr, int64_t v0, int64_t nc, const float** z,
                          int64_t* ld) -> absl::Status {
    float* dst = p.logits != nullptr ? p.logits + r0 * V + v0 : chunk_buffer;
    *ld = p.logits != nullptr ? V : nc;
    *z = dst;
    GemmParams g;
    g.input_type = p.storage;
    g.transpose_b = true;
    g.m = nr, g.n = nc, g.k = W;
    g.a = advance(p.hidden, r0 * W, p.storage), g.lda = W;
    g.b = advance(p.embedding, v0 * W, p.storage), g.ldb = W;
    g.c = dst, g.ldc = *ld;
    return gemm(handle, g);
  };
  const unsigned row_threads_blocks = static_cast<unsigned>((block_rows + kThreads - 1) / kThreads);

  for (int64_t r0 = 0; r0 < p.rows; r0 += kRowBlock) {
    const int64_t nr = std::min(kRowBlock, p.rows - r0);
    const int32_t* targets = p.targets != nullptr ? p.targets + r0 : nullptr;
    launch_kernel<init_rows_kernel>(row_threads_blocks, kThreads, 0, stream, nr, st);
    ENGINE_CUDA_LAUNCH_CHECK(init_rows_kernel);
    for (int64_t v0 = 0; v0 < V; v0 += chunk) {
      const int64_t nc = std::min(chunk, V - v0);
      int64_t ld = 0;
      const float* z = nullptr;
      if (absl::Status s = chunk_logits(r0, nr, v0, nc, &z, &ld); !s.ok()) return s;
      launch_kernel<chunk_merge_kernel>(static_cast<unsigned>(nr), kThreads, 0, stream, z, ld, nc,
                                        v0, targets, st);
      ENGINE_CUDA_LAUNCH_CHECK(chunk_merge_kernel);
    }
    launch_kernel<finish_rows_kernel>(row_threads_blocks, kThreads, 0, stream, nr, targets, st,
                                      p.row_loss != nullptr ? p.row_loss + r0 : nullptr);
    ENGINE_CUDA_LAUNCH_CHECK(finish_rows_kernel);
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
      const dim3 grid(static_cast<unsigned>((nc + kThreads - 1) / kThreads),
                      static_cast<unsigned>(nr));
      launch_kernel<dlogits_kernel>(grid, kThreads, 0, stream, z, ld, nc, v0, targets, st.lse,
                                    p.loss_scale, dlogits);
      ENGINE_CUDA_LAUNCH_CHECK(dlogits_kernel);
      if (p.dhidden != nullptr && f32) {
        GemmParams g;  // (nr, nc) . (nc, W) -> (nr, W)
        g.m = nr, g.n = W, g.k = nc;
        g.a = dlogits, g.lda = nc;
        g.b = static_cast<const float*>(p.embedding) + v0 * W, g.ldb = W;
        g.c = static_cast<float*>(p.dhidden) + r0 * W, g.ldc = W;
        g.beta = v0 == 0 ? 0.0f : 1.0f;
        if (absl::Status s = gemm(handle, g); !s.ok()) return s;
      } else if (p.dhidden != nullptr) {
        MixedGemmParams g;  // (nr, nc) fp32 . (nc, W) storage -> (nr, W) fp32
        g.m = nr, g.n = W, g.k = nc;
        g.a_type = StorageType::kF32, g.b_type = p.storage, g.c_type = StorageType::kF32;
        g.a = dlogits, g.lda = nc;
        g.b = advance(p.embedding, v0 * W, p.storage), g.ldb = W;
        g.c = dhidden32, g.ldc = W;
        g.beta = v0 == 0 ? 0.0f : 1.0f;
        if (absl::Status s = gemm_mixed(handle, g); !s.ok()) return s;
      }
      if (p.dembedding != nullptr && f32) {
        GemmParams g;  // (nc, nr) . (nr, W) -> (nc, W), accumulated
        g.transpose_a = true;
        g.m = nc, g.n = W, g.k = nr;
        g.a = dlogits, g.lda = nc;
        g.b = static_cast<const float*>(p.hidden) + r0 * W, g.ldb = W;
        g.c = p.dembedding + v0 * W, g.ldc = W;
        g.beta = 1.0f;
        if (absl::Status s = gemm(handle, g); !s.ok()) return s;
      } else if (p.dembedding != nullptr) {
        MixedGemmParams g;  // (nc, nr) fp32 . (nr, W) storage -> (nc, W) fp32, accumulated
        g.transpose_a = true;
        g.m = nc, g.n = W, g.k = nr;
        g.a_type = StorageType::kF32, g.b_type = p.storage, g.c_type = StorageType::kF32;
        g.a = dlogits, g.lda = nc;
        g.b = advance(p.hidden, r0 * W, p.storage), g.ldb = W;
        g.c = p.dembedding + v0 * W, g.ldc = W;
        g.beta = 1.0f;
        if (absl::Status s = gemm_mixed(handle, g); !s.ok()) return s;
      }
    }
    if (dhidden32 != nullptr) {
      if (absl::Status s = store_rounded(p.storage, nr, W, dhidden32, W,
                                         advance(p.dhidden, r0 * W, p.storage), W, stream);
          !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace engine::cuda
