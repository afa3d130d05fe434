// The CUDA kernels against the CPU reference ops (and, for 16-bit attention, against a naive bf16
// implementation written here), on random inputs at each supported shape class. Compiled only in
// CUDA builds; every test skips itself when no CUDA device is visible. Bounds are in
// docs/TOLERANCES.md ("CUDA backend").
#ifdef ENGINE_HAVE_CUDA

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/device.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/ops.h"
#include "tests/cuda_device_buffer.h"

namespace engine {
namespace {

using cuda::StorageType;

template <typename T>
using Device = test_support::DeviceBuffer<T>;

std::vector<float> random_vector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Round to nearest even bf16, and back (finite inputs only).
uint16_t to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }
float round_bf16(float f) { return from_bf16(to_bf16(f)); }
uint16_t to_f16(float f) { return __half_as_ushort(__float2half_rn(f)); }
float from_f16(uint16_t h) { return __half2float(__ushort_as_half(h)); }

uint16_t to_storage(float f, StorageType t) { return t == StorageType::kBF16 ? to_bf16(f) : to_f16(f); }
float from_storage(uint16_t h, StorageType t) {
  return t == StorageType::kBF16 ? from_bf16(h) : from_f16(h);
}

// fp32 unit roundoff.
constexpr double kUnitRoundoff = 1.0 / (1 << 24);

float max_abs(const std::vector<float>& v) {
  float m = 0.0f;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}
float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Mixed bound of docs/TOLERANCES.md: |got - want| <= rel * |want| + abs_of_max * max|want|.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, float rel,
                  float abs_of_max, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const float scale = max_abs(want);
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - want[i]), rel * std::fabs(want[i]) + abs_of_max * scale)
        << what << " element " << i << " got " << got[i] << " want " << want[i];
  }
}

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible: GPU test skipped";
    auto g = make_backend("cuda");
    ASSERT_TRUE(g.ok()) << g.status();
    gpu_ = std::move(*g);
  }
  std::unique_ptr<Backend> gpu_;
};

// Falcon's bf16-rounded ALiBi bias (AlibiAttentionParams::bf16_bias_divisor) is CPU only: the
// CUDA backend refuses it, in one line naming the op, before it reads any buffer.
TEST_F(CudaKernels, RefusesTheRoundedFalconBias) {
  AlibiAttentionParams p;
  p.batch = 1, p.seq = 4, p.heads = 2, p.head_dim = 8, p.scale = 0.35f;
  p.bf16_bias_divisor = 2.0f;
  for (bool backward : {false, true}) {
    const absl::Status s =
        backward ? gpu_->alibi_attention_backward(p) : gpu_->alibi_attention_forward(p);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
    EXPECT_NE(std::string(s.message()).find("CPU only"), std::string::npos) << s;
  }
}

TEST_F(CudaKernels, LayerNormForwardBackwardMatchCpu) {
  for (int64_t width : {64, 1000, 2048}) {
    const int64_t rows = 37;
    auto x = random_vector(rows * width, 1, 3.0f);
    for (float& v : x) v += 5.0f;  // an offset the two-pass moments must survive
    auto w = random_vector(width, 2), bias = random_vector(width, 3);
    auto dy = random_vector(rows * width, 4);
    std::vector<float> y(rows * width), mean(rows), rstd(rows), dx(rows * width, 0.5f),
        dw(width, 0.25f), db(width, 0.25f);
    LayerNormParams p;
    p.rows = rows, p.width = width, p.x = x.data(), p.weight = w.data(), p.bias = bias.data();
    p.y = y.data(), p.mean = mean.data(), p.rstd = rstd.data();
    ASSERT_TRUE(cpu::layernorm_forward(p).ok());
    p.dy = dy.data(), p.dx = dx.data(), p.accumulate_dx = true;
    p.dweight = dw.data(), p.dbias = db.data();
    p.mean = p.rstd = nullptr;  // the GPU recomputes them below too
    ASSERT_TRUE(cpu::layernorm_backward(p).ok());

    Device<float> dx_(x), dw_(w), dbias(bias), ddy(dy), dyo(rows * width), dmean(rows),
        drstd(rows), ddx(std::vector<float>(rows * width, 0.5f)),
        ddw(std::vector<float>(width, 0.25f)), ddb(std::vector<float>(width, 0.25f));
    LayerNormParams g;
    g.rows = rows, g.width = width, g.x = dx_.ptr, g.weight = dw_.ptr, g.bias = dbias.ptr;
    g.y = dyo.ptr, g.mean = dmean.ptr, g.rstd = drstd.ptr;
    ASSERT_TRUE(gpu_->layernorm_forward(g).ok());
    g.dy = ddy.ptr, g.dx = ddx.ptr, g.accumulate_dx = true, g.dweight = ddw.ptr, g.dbias = ddb.ptr;
    g.mean = g.rstd = nullptr;
    ASSERT_TRUE(gpu_->layernorm_backward(g).ok());
    expect_close(dyo.read(), y, 1e-5f, 1e-6f, "layernorm y");
    expect_close(dmean.read(), mean, 1e-6f, 1e-7f, "layernorm mean");
    expect_close(drstd.read(), rstd, 1e-5f, 0.0f, "layernorm rstd");
    expect_close(ddx.read(), dx, 1e-4f, 1e-5f, "layernorm dx");
    expect_close(ddw.read(), dw, 1e-4f, 1e-5f, "layernorm dweight");
    expect_close(ddb.read(), db, 1e-4f, 1e-5f, "layernorm dbias");
  }
}

TEST_F(CudaKernels, GeluForwardBackwardMatchCpu) {
  const int64_t n = 4099;
  auto x = random_vector(n, 5, 3.0f), dy = random_vector(n, 6);
  std::vector<float> y(n), dx(n);
  GeluParams p;
  p.n = n, p.x = x.data(), p.y = y.data(), p.dy = dy.data(), p.dx = dx.data();
  ASSERT_TRUE(cpu::gelu_forward(p).ok());
  ASSERT_TRUE(cpu::gelu_backward(p).ok());
  Device<float> dxin(x), dyout(n), ddy(dy), ddx(n);
  GeluParams g;
  g.n = n, g.x = dxin.ptr, g.y = dyout.ptr, g.dy = ddy.ptr, g.dx = ddx.ptr;
  ASSERT_TRUE(gpu_->gelu_forward(g).ok());
  ASSERT_TRUE(gpu_->gelu_backward(g).ok());
  expect_close(dyout.read(), y, 1e-5f, 1e-6f, "gelu y");
  expect_close(ddx.read(), dx, 1e-5f, 1e-6f, "gelu dx");
}

TEST_F(CudaKernels, EmbeddingMatchesCpuWithDuplicateIdsAndRejectsBadIds) {
  const int64_t rows = 50, width = 96, vocab = 20;
  std::vector<int32_t> ids(rows);
  for (int64_t r = 0; r < rows; ++r) ids[r] = static_cast<int32_t>((r * 7) % vocab);  // repeats
  auto table = random_vector(vocab * width, 7), dout = random_vector(rows * width, 8);
  std::vector<float> out(rows * width), dtable(vocab * width, 1.0f);
  EmbeddingParams p;
  p.rows = rows, p.width = width, p.vocab = vocab, p.ids = ids.data(), p.table = table.data();
  p.out = out.data(), p.dout = dout.data(), p.dtable = dtable.data();
  ASSERT_TRUE(cpu::embedding_forward(p).ok());
  ASSERT_TRUE(cpu::embedding_backward(p).ok());
  Device<int32_t> dids(ids);
  Device<float> dtab(table), dout_(rows * width), ddout(dout),
      ddtable(std::vector<float>(vocab * width, 1.0f));
  EmbeddingParams g = p;
  g.ids = dids.ptr, g.table = dtab.ptr, g.out = dout_.ptr, g.dout = ddout.ptr, g.dtable = ddtable.ptr;
  ASSERT_TRUE(gpu_->embedding_forward(g).ok());
  ASSERT_TRUE(gpu_->embedding_backward(g).ok());
  EXPECT_EQ(dout_.read(), out);  // a copy: bit-identical
  expect_close(ddtable.read(), dtable, 1e-6f, 0.0f, "embedding dtable");

  ids[13] = static_cast<int32_t>(vocab);
  Device<int32_t> bad(ids);
  g.ids = bad.ptr;
  const absl::Status s = gpu_->embedding_forward(g);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("at row 13"), std::string::npos) << s;
}

TEST_F(CudaKernels, ClassifierCrossEntropyMatchesCpuOverChunks) {
  const int64_t rows = 70, width = 64, vocab = 1000;
  auto hidden = random_vector(rows * width, 9), emb = random_vector(vocab * width, 10, 0.2f);
  std::vector<int32_t> targets(rows);
  for (int64_t r = 0; r < rows; ++r) targets[r] = r % 9 == 4 ? -1 : static_cast<int32_t>((r * 37) % vocab);
  std::vector<float> loss(rows), dhidden(rows * width), demb(vocab * width, 0.5f);
  ClassifierParams p;
  p.rows = rows, p.width = width, p.vocab = vocab, p.vocab_chunk = 300;  // 3 full chunks + 100
  p.hidden = hidden.data(), p.embedding = emb.data(), p.targets = targets.data();
  p.row_loss = loss.data(), p.dhidden = dhidden.data(), p.dembedding = demb.data();
  p.loss_scale = 0.25f;
  ASSERT_TRUE(cpu::classifier_cross_entropy(p).ok());
  Device<float> dh(hidden), de(emb), dloss(rows), ddh(rows * width),
      dde(std::vector<float>(vocab * width, 0.5f));
  Device<int32_t> dt(targets);
  ClassifierParams g = p;
  g.hidden = dh.ptr, g.embedding = de.ptr, g.targets = dt.ptr, g.row_loss = dloss.ptr;
  g.dhidden = ddh.ptr, g.dembedding = dde.ptr;
  ASSERT_TRUE(gpu_->classifier_cross_entropy(g).ok());
  expect_close(dloss.read(), loss, 1e-5f, 1e-6f, "classifier row_loss");
  expect_close(ddh.read(), dhidden, 1e-4f, 1e-5f, "classifier dhidden");
  expect_close(dde.read(), demb, 1e-4f, 1e-5f, "classifier dembedding");
}

TEST_F(CudaKernels, MaskedAdamWMatchesCpuAndLeavesFrozenElementsAlone) {
  const int64_t arena = 500, n = 120;
  std::vector<int64_t> index(n);
  for (int64_t i = 0; i < n; ++i) index[i] = i * 4 + 1;  // every fourth of the first 4n
  auto trainable = [&](int64_t e) { return e % 4 == 1 && e < 4 * n; };
  auto params = random_vector(arena, 11), grad = random_vector(n, 12);
  auto m = random_vector(n, 13, 0.1f), v = random_vector(n, 14, 0.1f);
  for (float& x : v) x = std::fabs(x);
  std::vector<float> master(n);
  for (int64_t i = 0; i < n; ++i) master[i] = params[index[i]];
  MaskedAdamWParams p;
  p.n = n, p.index = index.data(), p.grad = grad.data(), p.lr = 1e-2f, p.weight_decay = 0.1f;
  p.grad_scale = 0.5f, p.step = 3;

  // fp32 arena, no masters.
  std::vector<float> cpu_params = params, cpu_m = m, cpu_v = v;
  p.params = cpu_params.data(), p.m = cpu_m.data(), p.v = cpu_v.data();
  ASSERT_TRUE(cpu::masked_adamw(p).ok());
  Device<int64_t> di(index);
  Device<float> dp(params), dg(grad), dm(m), dv(v);
  MaskedAdamWParams g = p;
  g.index = di.ptr, g.params = dp.ptr, g.grad = dg.ptr, g.m = dm.ptr, g.v = dv.ptr;
  ASSERT_TRUE(gpu_->masked_adamw(g).ok());
  const std::vector<float> got = dp.read();
  expect_close(got, cpu_params, 1e-6f, 1e-7f, "adamw params");
  for (int64_t e = 0; e < arena; ++e) {
    if (!trainable(e)) ASSERT_EQ(got[e], params[e]) << "frozen element " << e << " moved";
  }
  // m = b1 m + (1 - b1) g s: two products and a sum, each rounded once or (contracted into an
  // FMA) not at all, plus the rounding of g s: each side is within 4u of the exact value relative
  // to |b1 m| + |(1 - b1) g s|, so the two sides within 8u of that sum (docs/TOLERANCES.md).
  // Likewise v with b2 and (g s)^2. The sum has no cancellation bound of its own: m and g s may
  // have opposite signs.
  const std::vector<float> gm = dm.read(), gv = dv.read();
  for (int64_t i = 0; i < n; ++i) {
    const double gs = static_cast<double>(grad[i]) * p.grad_scale;
    const double m_terms = std::fabs(p.beta1 * m[i]) + std::fabs((1.0 - p.beta1) * gs);
    const double v_terms = std::fabs(p.beta2 * v[i]) + (1.0 - p.beta2) * gs * gs;
    EXPECT_LE(std::fabs(static_cast<double>(gm[i]) - cpu_m[i]), 8 * kUnitRoundoff * m_terms)
        << "m " << i;
    EXPECT_LE(std::fabs(static_cast<double>(gv[i]) - cpu_v[i]), 8 * kUnitRoundoff * v_terms)
        << "v " << i;
  }

  // bf16 arena with fp32 masters: masters follow the fp32 update, the arena is their rounding.
  std::vector<float> cpu_master = master;
  cpu_m = m, cpu_v = v, cpu_params = params;
  p.params = cpu_params.data(), p.master = cpu_master.data(), p.m = cpu_m.data(), p.v = cpu_v.data();
  ASSERT_TRUE(cpu::masked_adamw(p).ok());
  std::vector<uint16_t> arena16(arena);
  for (int64_t e = 0; e < arena; ++e) arena16[e] = to_bf16(params[e]);
  Device<uint16_t> d16(arena16);
  Device<float> dmaster(master), dm2(m), dv2(v);
  g.master = dmaster.ptr, g.m = dm2.ptr, g.v = dv2.ptr;
  g.storage = StorageType::kBF16, g.params = d16.ptr;
  ASSERT_TRUE(cuda::masked_adamw(g, nullptr).ok());
  const std::vector<float> got_master = dmaster.read();
  expect_close(got_master, cpu_master, 1e-6f, 1e-7f, "adamw master");
  const std::vector<uint16_t> got16 = d16.read();
  for (int64_t e = 0; e < arena; ++e) {
    if (trainable(e)) {
      ASSERT_EQ(got16[e], to_bf16(got_master[(e - 1) / 4])) << e;
    } else {
      ASSERT_EQ(got16[e], arena16[e]) << "frozen bf16 element " << e << " moved";
    }
  }
}

TEST_F(CudaKernels, GlobalGradNormMatchesDouble) {
  const int64_t n = 100003;
  auto grad = random_vector(n, 15);
  double sum = 0.0;
  for (float g : grad) sum += static_cast<double>(g) * g;
  Device<float> dg(grad);
  auto norm = cuda::global_grad_norm(dg.ptr, n, nullptr);
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_NEAR(*norm, std::sqrt(sum), 1e-9 * std::sqrt(sum));
}

// A trainable column block of a larger bf16 weight (strided leading dimension), bf16 in, fp32 out.
TEST_F(CudaKernels, MixedGemmOnSubBlockMatchesHost) {
  const int64_t rows = 48, full_cols = 96, col0 = 32, cols = 16, m = 24;
  auto w = random_vector(rows * full_cols, 16), x = random_vector(m * rows, 17);
  std::vector<uint16_t> w16(w.size()), x16(x.size());
  for (size_t i = 0; i < w.size(); ++i) w16[i] = to_bf16(w[i]);
  for (size_t i = 0; i < x.size(); ++i) x16[i] = to_bf16(x[i]);
  Device<uint16_t> dw(w16), dx(x16);
  Device<float> dc(m * cols);
  cublasHandle_t handle = nullptr;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  cuda::MixedGemmParams g;  // C (m, cols) = X (m, rows) . W[:, col0 : col0 + cols]
  g.m = m, g.n = cols, g.k = rows;
  g.a = dx.ptr, g.lda = rows;
  g.b = dw.ptr + col0, g.ldb = full_cols;
  g.c = dc.ptr, g.ldc = cols;
  const absl::Status s = cuda::gemm_mixed(handle, g);
  cublasDestroy(handle);
  ASSERT_TRUE(s.ok()) << s;
  std::vector<float> want(m * cols, 0.0f);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < rows; ++k) {
        acc += static_cast<double>(from_bf16(x16[i * rows + k])) * from_bf16(w16[k * full_cols + col0 + j]);
      }
      want[i * cols + j] = static_cast<float>(acc);
    }
  }
  expect_close(dc.read(), want, 1e-4f, 1e-5f, "mixed gemm");
}

// ---- attention -------------------------------------------------------------------------------

struct AttentionCase {
  int64_t batch, seq, heads, head_dim;
  bool padded;          // row 0 left-padded, row 1 padded in the middle and at the end
  int64_t query_begin;  // forward only
};

struct AttentionInputs {
  std::vector<float> qkv, slopes, dout;
  std::vector<uint8_t> mask;  // empty = no mask
  std::vector<float> sink;    // (H) sink-loss weights of the backward; empty = none
};

AttentionInputs make_inputs(const AttentionCase& c, uint32_t seed) {
  AttentionInputs in;
  in.qkv = random_vector(c.batch * c.seq * 3 * c.heads * c.head_dim, seed);
  in.dout = random_vector(c.batch * c.seq * c.heads * c.head_dim, seed + 1);
  for (int64_t h = 0; h < c.heads; ++h) {
    in.slopes.push_back(std::pow(2.0f, -8.0f * static_cast<float>(h + 1) / c.heads));
  }
  if (c.padded) {
    in.mask.assign(c.batch * c.seq, 1);
    for (int64_t j = 0; j < std::min<int64_t>(5, c.seq); ++j) in.mask[j] = 0;
    if (c.batch > 1) {
      for (int64_t j = 10; j < 13; ++j) in.mask[c.seq + j] = 0;
      for (int64_t j = c.seq - 3; j < c.seq; ++j) in.mask[c.seq + j] = 0;
    }
  }
  return in;
}

struct AttentionResult {
  std::vector<float> out, lse, dqkv;
  std::vector<double> bos, entropy, local;
  std::vector<int64_t> rows;
};

AlibiAttentionParams base_params(const AttentionCase& c, float scale_override = 0.0f) {
  AlibiAttentionParams p;
  p.batch = c.batch, p.seq = c.seq, p.heads = c.heads, p.head_dim = c.head_dim;
  p.scale = scale_override > 0.0f ? scale_override : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  return p;
}

// The CPU kernel on the given (already rounded, where the caller wants) inputs.
AttentionResult cpu_attention(const AttentionCase& c, const AttentionInputs& in, bool backward) {
  AttentionResult r;
  const int64_t bh = c.batch * c.heads;
  const int64_t q_rows = c.seq - c.query_begin;
  r.out.assign(c.batch * q_rows * c.heads * c.head_dim, 0.0f);
  r.lse.assign(bh * c.seq, 0.0f);
  r.bos.assign(bh, 0.0), r.entropy.assign(bh, 0.0), r.local.assign(bh, 0.0);
  r.rows.assign(c.batch, 0);
  AlibiAttentionParams p = base_params(c);
  p.query_begin = c.query_begin;
  p.qkv = in.qkv.data(), p.slopes = in.slopes.data();
  p.mask = in.mask.empty() ? nullptr : in.mask.data();
  p.out = r.out.data(), p.lse = r.lse.data();
  p.stats = {r.bos.data(), r.entropy.data(), r.local.data(), r.rows.data()};
  EXPECT_TRUE(cpu::alibi_attention_forward(p).ok());
  if (backward) {
    r.dqkv.assign(in.qkv.size(), 0.0f);
    p.stats = {};
    p.dout = in.dout.data(), p.dqkv = r.dqkv.data();
    p.sink_loss_weight = in.sink.empty() ? nullptr : in.sink.data();
    EXPECT_TRUE(cpu::alibi_attention_backward(p).ok());
  }
  return r;
}

// The CUDA kernels; 16-bit storage converts on the way in and out.
AttentionResult gpu_attention(const AttentionCase& c, const AttentionInputs& in, StorageType t,
                              bool backward) {
  AttentionResult r;
  const int64_t bh = c.batch * c.heads;
  const int64_t q_rows = c.seq - c.query_begin;
  const size_t out_n = c.batch * q_rows * c.heads * c.head_dim;
  Device<float> slopes(in.slopes), lse(bh * c.seq), sink(in.sink);
  Device<uint8_t> mask(in.mask);
  Device<double> bos(bh), entropy(bh), local(bh);
  Device<int64_t> rows(c.batch);
  cuda::AttentionParams p;
  p.storage = t;
  p.batch = c.batch, p.seq = c.seq, p.heads = c.heads, p.head_dim = c.head_dim;
  p.query_begin = c.query_begin;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  p.slopes = slopes.ptr, p.mask = in.mask.empty() ? nullptr : mask.ptr, p.lse = lse.ptr;
  p.stats = {bos.ptr, entropy.ptr, local.ptr, rows.ptr};
  p.sink_loss_weight = in.sink.empty() ? nullptr : sink.ptr;  // read by the backward only
  if (t == StorageType::kF32) {
    Device<float> qkv(in.qkv), out(out_n), dout(in.dout), dqkv(in.qkv.size());
    p.qkv = qkv.ptr, p.out = out.ptr;
    EXPECT_TRUE(cuda::attention_forward(p).ok());
    r.out = out.read();
    if (backward) {
      p.stats = {};
      p.dout = dout.ptr, p.dqkv = dqkv.ptr;
      const absl::Status s = cuda::attention_backward(p);
      EXPECT_TRUE(s.ok()) << s;
      r.dqkv = dqkv.read();
    }
  } else {
    auto pack = [&](const std::vector<float>& v) {
      std::vector<uint16_t> h(v.size());
      for (size_t i = 0; i < v.size(); ++i) h[i] = to_storage(v[i], t);
      return h;
    };
    auto unpack = [&](const std::vector<uint16_t>& h) {
      std::vector<float> v(h.size());
      for (size_t i = 0; i < h.size(); ++i) v[i] = from_storage(h[i], t);
      return v;
    };
    Device<uint16_t> qkv(pack(in.qkv)), out(out_n), dout(pack(in.dout)), dqkv(in.qkv.size());
    p.qkv = qkv.ptr, p.out = out.ptr;
    const absl::Status s = cuda::attention_forward(p);
    EXPECT_TRUE(s.ok()) << s;
    r.out = unpack(out.read());
    if (backward) {
      p.stats = {};
      p.dout = dout.ptr, p.dqkv = dqkv.ptr;
      const absl::Status sb = cuda::attention_backward(p);
      EXPECT_TRUE(sb.ok()) << sb;
      r.dqkv = unpack(dqkv.read());
    }
  }
  r.lse = lse.read();
  r.bos = bos.read(), r.entropy = entropy.read(), r.local = local.read(), r.rows = rows.read();
  return r;
}

void expect_stats_close(const AttentionResult& got, const AttentionResult& want, double per_row,
                        const char* what) {
  EXPECT_EQ(got.rows, want.rows) << what;
  for (size_t i = 0; i < want.bos.size(); ++i) {
    const double n = static_cast<double>(want.rows[i / (want.bos.size() / want.rows.size())]);
    EXPECT_NEAR(got.bos[i], want.bos[i], per_row * n) << what << " bos_mass " << i;
    EXPECT_NEAR(got.entropy[i], want.entropy[i], per_row * n) << what << " entropy " << i;
    EXPECT_NEAR(got.local[i], want.local[i], per_row * n) << what << " local_mass " << i;
  }
}

// lse of rows at or after query_begin (the only ones either side writes).
std::vector<float> lse_rows(const std::vector<float>& lse, const AttentionCase& c) {
  std::vector<float> v;
  for (int64_t r = 0; r < c.batch * c.heads; ++r) {
    for (int64_t i = c.query_begin; i < c.seq; ++i) v.push_back(lse[r * c.seq + i]);
  }
  return v;
}

TEST_F(CudaKernels, F32AttentionMatchesCpuForwardStatsBackward) {
  const AttentionCase cases[] = {
      {2, 77, 3, 32, false, 0}, {2, 77, 3, 32, true, 0},  {1, 130, 2, 80, true, 0},
      {2, 70, 2, 64, true, 50}, {1, 40, 1, 200, false, 0}, {2, 33, 4, 128, true, 0},
  };
  for (const AttentionCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "B=" << c.batch << " T=" << c.seq << " H=" << c.heads
                                    << " D=" << c.head_dim << " padded=" << c.padded
                                    << " query_begin=" << c.query_begin);
    const AttentionInputs in = make_inputs(c, 21);
    const bool backward = c.query_begin == 0;
    const AttentionResult want = cpu_attention(c, in, backward);
    const AttentionResult got = gpu_attention(c, in, StorageType::kF32, backward);
    expect_close(got.out, want.out, 1e-4f, 1e-5f, "f32 out");
    expect_close(lse_rows(got.lse, c), lse_rows(want.lse, c), 1e-5f, 1e-6f, "f32 lse");
    expect_stats_close(got, want, 1e-5, "f32");
    if (backward) expect_close(got.dqkv, want.dqkv, 1e-3f, 1e-5f, "f32 dqkv");
  }
}

// The controlled-collapse sink loss in the backward (sink_loss_weight): its term
// w_h (P[t, j] - [j = first real key]) enters dS of every real query row. Same cases and bounds
// as the backward without it, on every variant (fp32, and bf16 / fp16 on tensor cores), padded
// (left padding moves the first real key; padding in the middle gives padded query rows, which
// carry no sink loss) and not. The CPU kernel's term is checked against finite differences in
// attention_test.cpp; that the term matters here: the gradients with and without it differ by
// far more than the bound.
TEST_F(CudaKernels, AttentionBackwardWithSinkLossMatchesCpu) {
  struct SinkCase {
    AttentionCase c;
    StorageType t;
  };
  const SinkCase cases[] = {
      {{2, 77, 3, 32, false, 0}, StorageType::kF32}, {{2, 77, 3, 32, true, 0}, StorageType::kF32},
      {{2, 70, 2, 64, true, 0}, StorageType::kF32},  {{2, 150, 2, 64, true, 0}, StorageType::kBF16},
      {{2, 150, 2, 80, true, 0}, StorageType::kF16}, {{1, 96, 3, 128, false, 0}, StorageType::kBF16},
  };
  for (const SinkCase& k : cases) {
    const AttentionCase& c = k.c;
    SCOPED_TRACE(testing::Message() << "B=" << c.batch << " T=" << c.seq << " H=" << c.heads
                                    << " D=" << c.head_dim << " padded=" << c.padded << " storage="
                                    << static_cast<int>(k.t));
    AttentionInputs in = make_inputs(c, 41);
    // One head without the loss; the others' weights of the size the trainer gives them
    // (W x gradient scale / real rows is about 1/rows; larger here so the term is visible).
    in.sink.assign(static_cast<size_t>(c.heads), 0.0f);
    for (int64_t h = 1; h < c.heads; ++h) in.sink[h] = 0.05f * static_cast<float>(h);
    if (c.heads == 2) in.sink[0] = 0.08f;
    const bool f32 = k.t == StorageType::kF32;
    AttentionInputs rounded = in;
    if (!f32) {
      for (float& v : rounded.qkv) v = from_storage(to_storage(v, k.t), k.t);
      for (float& v : rounded.dout) v = from_storage(to_storage(v, k.t), k.t);
    }
    const AttentionResult want = cpu_attention(c, rounded, true);
    const AttentionResult got = gpu_attention(c, in, k.t, true);
    if (f32) {
      expect_close(got.dqkv, want.dqkv, 1e-3f, 1e-5f, "f32 dqkv with sink loss");
    } else {
      expect_close(got.dqkv, want.dqkv, 0.0f, 2e-2f, "16-bit dqkv with sink loss");
    }
    AttentionInputs without = rounded;
    without.sink.clear();
    const AttentionResult plain = cpu_attention(c, without, true);
    const float moved = max_abs_diff(plain.dqkv, want.dqkv);
    EXPECT_GT(moved, (f32 ? 1e-3f : 4e-2f) * max_abs(want.dqkv)) << "the sink term is too small to test";
  }
}

// The sink loss's value (Backend::attention_sink_sums, the per-head sums over real query rows of
// lse - scale q_t . k_first) on the device against the CPU op, through the backends, on the
// forward's own lse. Masks move the first real key per sequence: left padding of 5 and of 2 (the
// latter also padded in the middle), none, and a fully padded sequence (adds nothing). Both sum
// in double and each row's dot is the same bits (products of floats are exact in double); the
// row value may round once more (a fused multiply-add) and the rows are summed in another order,
// so per head |cuda - cpu| <= 2 (n + 1) u S, u = 2^-53, n the real rows, S the sum over them of
// |lse| + scale |q . k_first| (docs/TOLERANCES.md).
TEST_F(CudaKernels, AttentionSinkSumsMatchCpu) {
  struct SinkSumsCase {
    int64_t batch, seq, heads, head_dim;
    bool masked;
  };
  for (const SinkSumsCase& k : {SinkSumsCase{4, 70, 3, 32, true}, SinkSumsCase{4, 300, 2, 64, true},
                                SinkSumsCase{2, 33, 4, 16, false}}) {
    SCOPED_TRACE(testing::Message() << "B=" << k.batch << " T=" << k.seq << " H=" << k.heads
                                    << " D=" << k.head_dim << " masked=" << k.masked);
    const AttentionCase c{k.batch, k.seq, k.heads, k.head_dim, false, 0};
    AttentionInputs in = make_inputs(c, 51);
    const int64_t T = k.seq, H = k.heads, D = k.head_dim;
    if (k.masked) {
      in.mask.assign(k.batch * T, 1);
      for (int64_t j = 0; j < 5; ++j) in.mask[j] = 0;
      for (int64_t j = 0; j < 2; ++j) in.mask[T + j] = 0;
      for (int64_t j = 10; j < 13; ++j) in.mask[T + j] = 0;
      for (int64_t j = 0; j < T; ++j) in.mask[3 * T + j] = 0;
    }
    const std::vector<float> lse = cpu_attention(c, in, false).lse;
    AttentionSinkParams p;
    p.batch = k.batch, p.seq = T, p.heads = H, p.head_dim = D;
    p.qkv = in.qkv.data(), p.lse = lse.data();
    p.mask = in.mask.empty() ? nullptr : in.mask.data();
    absl::StatusOr<std::vector<double>> want = cpu::attention_sink_sums(p);
    ASSERT_TRUE(want.ok()) << want.status();
    Device<float> qkv(in.qkv), device_lse(lse);
    Device<uint8_t> mask(in.mask);
    p.qkv = qkv.ptr, p.lse = device_lse.ptr;
    p.mask = in.mask.empty() ? nullptr : mask.ptr;
    absl::StatusOr<std::vector<double>> got = gpu_->attention_sink_sums(p);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), static_cast<size_t>(H));
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    for (int64_t h = 0; h < H; ++h) {
      int64_t n = 0;
      double magnitude = 0.0;  // S
      for (int64_t b = 0; b < k.batch; ++b) {
        int64_t first = 0;
        while (first < T && !in.mask.empty() && in.mask[b * T + first] == 0) ++first;
        for (int64_t t = first; t < T; ++t) {
          if (!in.mask.empty() && in.mask[b * T + t] == 0) continue;
          const float* q = in.qkv.data() + (b * T + t) * 3 * H * D + h * 3 * D;
          const float* key = in.qkv.data() + (b * T + first) * 3 * H * D + h * 3 * D + D;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * key[d];
          magnitude += std::fabs(lse[(b * H + h) * T + t]) + scale * std::fabs(dot);
          ++n;
        }
      }
      const double bound = 2.0 * static_cast<double>(n + 1) * std::ldexp(1.0, -53) * magnitude;
      EXPECT_LE(std::abs((*got)[h] - (*want)[h]), bound)
          << "head " << h << " got " << (*got)[h] << " want " << (*want)[h];
    }
  }
  // Bad shapes and null inputs are one-line errors naming the value, before any launch.
  AttentionSinkParams bad;
  bad.batch = 1, bad.seq = 4, bad.heads = 2, bad.head_dim = 0;
  absl::StatusOr<std::vector<double>> refused = gpu_->attention_sink_sums(bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("D=0"), std::string::npos)
      << refused.status();
  bad.head_dim = 8;
  refused = gpu_->attention_sink_sums(bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("null qkv"), std::string::npos)
      << refused.status();
}

// The naive bf16 computation a framework does without a fused kernel: inputs in bf16, scores
// rounded to bf16, softmax in fp32, probabilities rounded to bf16, output rounded to bf16.
std::vector<float> naive_bf16_forward(const AttentionCase& c, const AttentionInputs& in) {
  const int64_t T = c.seq, H = c.heads, D = c.head_dim, ts = 3 * H * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<float> out(c.batch * T * H * D, 0.0f);
  for (int64_t b = 0; b < c.batch; ++b) {
    std::vector<int32_t> pos(T);
    std::vector<bool> real(T);
    int32_t count = 0;
    int64_t first = T;
    for (int64_t j = 0; j < T; ++j) {
      real[j] = in.mask.empty() || in.mask[b * T + j] != 0;
      if (real[j] && first == T) first = j;
      count += real[j] ? 1 : 0;
      pos[j] = real[j] ? count - 1 : 0;
    }
    for (int64_t h = 0; h < H; ++h) {
      const float* base = in.qkv.data() + b * T * ts + h * 3 * D;
      for (int64_t i = 0; i < T; ++i) {
        float* o = out.data() + (b * T + i) * H * D + h * D;
        std::vector<float> p(T, 0.0f);
        if (i < first) {
          for (int64_t j = 0; j < T; ++j) p[j] = round_bf16(1.0f / static_cast<float>(T));
        } else {
          std::vector<float> s(T, -std::numeric_limits<float>::infinity());
          float m = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j <= i; ++j) {
            if (!real[j]) continue;
            float dot = 0.0f;
            for (int64_t d = 0; d < D; ++d) dot += round_bf16(base[i * ts + d]) * round_bf16(base[j * ts + D + d]);
            s[j] = round_bf16(dot * scale + in.slopes[h] * static_cast<float>(pos[j]));
            m = std::max(m, s[j]);
          }
          float sum = 0.0f;
          for (int64_t j = 0; j <= i; ++j) {
            if (real[j]) sum += std::exp(s[j] - m);
          }
          for (int64_t j = 0; j <= i; ++j) {
            if (real[j]) p[j] = round_bf16(std::exp(s[j] - m) / sum);
          }
        }
        for (int64_t d = 0; d < D; ++d) {
          float acc = 0.0f;
          for (int64_t j = 0; j < T; ++j) acc += p[j] * round_bf16(base[j * ts + 2 * D + d]);
          o[d] = round_bf16(acc);
        }
      }
    }
  }
  return out;
}

TEST_F(CudaKernels, TensorCoreAttentionWithinTwiceNaiveBf16ErrorAndMatchesCpuBackward) {
  for (int64_t d : {64, 80, 96, 128}) {
    for (StorageType t : {StorageType::kBF16, StorageType::kF16}) {
      const AttentionCase c{2, 150, 2, d, true, 0};
      SCOPED_TRACE(testing::Message() << "D=" << d << (t == StorageType::kBF16 ? " bf16" : " fp16"));
      const AttentionInputs in = make_inputs(c, 31);
      // fp32 truth on the unrounded inputs; the CPU kernel on the rounded ones for lse, stats
      // and gradients (the 16-bit kernel cannot know the unrounded values).
      const AttentionResult truth = cpu_attention(c, in, false);
      AttentionInputs rounded = in;
      for (float& v : rounded.qkv) v = from_storage(to_storage(v, t), t);
      for (float& v : rounded.dout) v = from_storage(to_storage(v, t), t);
      const AttentionResult want = cpu_attention(c, rounded, true);
      const AttentionResult got = gpu_attention(c, in, t, true);

      const float err_kernel = max_abs_diff(got.out, truth.out);
      if (t == StorageType::kBF16) {
        const float err_naive = max_abs_diff(naive_bf16_forward(c, in), truth.out);
        EXPECT_LE(err_kernel, 2.0f * err_naive) << "kernel " << err_kernel << " naive " << err_naive;
      }
      expect_close(got.out, want.out, 0.0f, 1e-2f, "16-bit out");
      expect_close(lse_rows(got.lse, c), lse_rows(want.lse, c), 1e-4f, 1e-4f, "16-bit lse");
      expect_stats_close(got, want, 1e-3, "16-bit");
      expect_close(got.dqkv, want.dqkv, 0.0f, 2e-2f, "16-bit dqkv");
    }
  }
}

// Forward from a query_begin that is not a tile boundary (the diagnosis path: only the last rows
// are queried), padded, with at least two 64-row tiles on each side, for every head dim and
// 16-bit type; compared with the CPU kernel on the rounded inputs.
TEST_F(CudaKernels, TensorCoreAttentionFromQueryBeginMatchesCpu) {
  for (int64_t d : {64, 80, 96, 128}) {
    for (StorageType t : {StorageType::kBF16, StorageType::kF16}) {
      const AttentionCase c{2, 200, 2, d, true, 37};  // query rows 37..199: 3 tiles of 64
      SCOPED_TRACE(testing::Message()
                   << "D=" << d << (t == StorageType::kBF16 ? " bf16" : " fp16"));
      AttentionInputs rounded = make_inputs(c, 41);
      for (float& v : rounded.qkv) v = from_storage(to_storage(v, t), t);
      const AttentionResult want = cpu_attention(c, rounded, false);
      const AttentionResult got = gpu_attention(c, rounded, t, false);
      expect_close(got.out, want.out, 0.0f, 1e-2f, "16-bit out");
      expect_close(lse_rows(got.lse, c), lse_rows(want.lse, c), 1e-4f, 1e-4f, "16-bit lse");
      expect_stats_close(got, want, 1e-3, "16-bit");
    }
  }
}

// StorageType is the engine's DType: the integer types are refused, never launched.
TEST_F(CudaKernels, IntegerStorageIsRefusedByEveryEntryPoint) {
  cuda::AttentionParams p;
  p.storage = DType::kI32;
  p.batch = 1, p.seq = 4, p.heads = 1, p.head_dim = 64, p.scale = 0.1f;
  p.qkv = p.out = reinterpret_cast<void*>(256);  // never dereferenced: the check comes first
  p.slopes = reinterpret_cast<const float*>(256);
  const absl::Status s = cuda::attention_forward(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("F32, BF16 or F16"), std::string::npos) << s;
  MaskedAdamWParams a;
  a.storage = DType::kU8;
  const absl::Status sa = cuda::masked_adamw(a, nullptr);
  EXPECT_NE(std::string(sa.message()).find("F32, BF16 or F16"), std::string::npos) << sa;
  cuda::MixedGemmParams g;
  g.m = g.n = g.k = 1;
  g.a_type = DType::kI64;
  const absl::Status sg = cuda::gemm_mixed(nullptr, g);
  EXPECT_NE(std::string(sg.message()).find("F32, BF16 or F16"), std::string::npos) << sg;
}

TEST_F(CudaKernels, TensorCoreAttentionRejectsUnsupportedHeadDim) {
  cuda::AttentionParams p;
  p.storage = StorageType::kBF16;
  p.batch = 1, p.seq = 4, p.heads = 1, p.head_dim = 48, p.scale = 0.1f;
  p.qkv = p.out = reinterpret_cast<void*>(256);  // never dereferenced: the check comes first
  p.slopes = reinterpret_cast<const float*>(256);
  const absl::Status s = cuda::attention_forward(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("head_dim"), std::string::npos) << s;
}

}  // namespace
}  // namespace engine

#endif  // ENGINE_HAVE_CUDA
