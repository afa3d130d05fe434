// The CUDA backend with 16-bit storage (BF16, and F16 where cheap) against the CPU backend's
// storage twin (kernels/cpu/storage.h) on the same 16-bit inputs, every op through the Backend
// interface. A GPU test (CTest label gpu): it runs on a GPU or under the emulator.
// Bounds (docs/TOLERANCES.md, "Storage types"): both sides compute in fp32 and round each stored
// element once, so a 16-bit output gets the documented fp32 CUDA-vs-CPU bound of its op (delta)
// plus the rounding of both sides: |gpu - cpu| <= delta + u (|gpu| + |cpu|) (1 + 2u),
// u = 2^-8 for bf16 (test::bf16_pair_bound): the one-ulp flip of two nearly equal fp32 values.
// fp32 outputs (statistics, parameter gradients, losses, masters) get delta alone.
// That bound is one ulp wide, so it cannot tell rounding from truncation: the device's stores are
// held to round to nearest even by StoresAreTheF32ResultRoundedToNearestEven (bit-exact against
// the same kernel instantiated for fp32) and by the AdamW arena check.
#ifdef ENGINE_HAVE_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"
#include "error_bounds.h"
#include "kernels/cuda/ops.h"
#include "storage_twin.h"
#include "tests/cuda_device_buffer.h"

namespace engine {
namespace {

using test::rounded_normal;
using test::widen;
using Bits = std::vector<uint16_t>;
template <typename T>
using DeviceBuffer = test_support::DeviceBuffer<T>;

class CudaStorage : public test_support::CudaAndCpuBackends {};

// 16-bit outputs: |gpu - cpu| <= pair bound of (rel |cpu| (1 + 2u) + abs max|cpu|).
void expect_rounded_close(DType t, const Bits& gpu, const Bits& cpu, double rel, double abs,
                          const char* what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  const std::vector<float> g = widen(t, gpu), c = widen(t, cpu);
  const double max_c = test::max_abs(c);
  for (size_t i = 0; i < c.size(); ++i) {
    const double delta =
        rel * std::fabs(c[i]) * (1.0 + 2.0 * test::kBf16UnitRoundoff) + abs * max_c;
    ASSERT_LE(std::fabs(static_cast<double>(g[i]) - c[i]), test::bf16_pair_bound(delta, g[i], c[i]))
        << what << " " << i << ": gpu " << g[i] << " cpu " << c[i];
  }
}

// fp32 outputs: |gpu - cpu| <= rel |cpu| + abs max|cpu|.
void expect_f32_close(const std::vector<float>& gpu, const std::vector<float>& cpu, double rel,
                      double abs, const char* what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  const double max_c = test::max_abs(cpu);
  for (size_t i = 0; i < cpu.size(); ++i) {
    ASSERT_LE(std::fabs(static_cast<double>(gpu[i]) - cpu[i]),
              rel * std::fabs(cpu[i]) + abs * max_c)
        << what << " " << i << ": gpu " << gpu[i] << " cpu " << cpu[i];
  }
}

// GEMM with the bias + residual epilogue and without, every transpose, bf16 -> bf16 / fp32 and
// fp16 -> fp16. delta = 2 gamma_(k+4) sum|terms| (each side within gamma_(k+4) of the exact
// value, docs/TOLERANCES.md), per element; the 16-bit output adds the pair rounding.
TEST_F(CudaStorage, GemmWithEpilogueMatchesCpuTwin) {
  const int64_t m = 29, n = 41, k = 67, ldr = n + 3;
  const std::pair<DType, DType> combos[] = {
      {DType::kBF16, DType::kBF16}, {DType::kBF16, DType::kF32}, {DType::kF16, DType::kF16}};
  for (auto [in, out] : combos) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        for (bool epilogue : {false, true}) {
          SCOPED_TRACE(testing::Message() << dtype_name(in) << "->" << dtype_name(out) << " ta="
                                          << ta << " tb=" << tb << " epilogue=" << epilogue);
          const auto a = rounded_normal(in, m * k, 1), b = rounded_normal(in, k * n, 2);
          const auto bias = rounded_normal(in, n, 3), res = rounded_normal(in, m * ldr, 4);
          GemmParams p;
          p.input_type = in, p.output_type = out;
          p.transpose_a = ta, p.transpose_b = tb, p.m = m, p.n = n, p.k = k;
          p.lda = ta ? m : k, p.ldb = tb ? k : n, p.ldc = n, p.ldr = ldr;
          p.a = a.bits.data(), p.b = b.bits.data();
          if (epilogue) p.bias = bias.bits.data(), p.residual = res.bits.data();
          const bool out16 = out != DType::kF32;
          Bits c16(out16 ? m * n : 0);
          std::vector<float> c32(out16 ? 0 : m * n);
          p.c = out16 ? static_cast<void*>(c16.data()) : static_cast<void*>(c32.data());
          ASSERT_TRUE(cpu_->gemm(p).ok());
          DeviceBuffer<uint16_t> da(a.bits), db(b.bits), dbias(bias.bits), dres(res.bits);
          DeviceBuffer<uint16_t> dc16(c16.size());
          DeviceBuffer<float> dc32(c32.size());
          p.a = da.ptr, p.b = db.ptr;
          if (epilogue) p.bias = dbias.ptr, p.residual = dres.ptr;
          p.c = out16 ? static_cast<void*>(dc16.ptr) : static_cast<void*>(dc32.ptr);
          ASSERT_TRUE(gpu_->gemm(p).ok());
          const std::vector<float> want = out16 ? widen(out, c16) : c32;
          const std::vector<float> got = out16 ? widen(out, dc16.read()) : dc32.read();
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double magnitude = 0.0;
              for (int64_t l = 0; l < k; ++l) {
                const float av = ta ? a.f32[l * m + i] : a.f32[i * k + l];
                const float bv = tb ? b.f32[j * k + l] : b.f32[l * n + j];
                magnitude += std::fabs(static_cast<double>(av) * bv);
              }
              if (epilogue) magnitude += std::fabs(bias.f32[j]) + std::fabs(res.f32[i * ldr + j]);
              const double delta = 2.0 * test::float_gamma(k + 4) * magnitude;
              const float g = got[i * n + j], w = want[i * n + j];
              const double bound = out16 ? test::bf16_pair_bound(delta, g, w) : delta;
              ASSERT_LE(std::fabs(static_cast<double>(g) - w), bound) << i << ", " << j;
            }
          }
        }
      }
    }
  }
}

// The residual added in place (residual = C) with a bf16 C: read into the fp32 sum before C is
// written, so the result equals the one with a separate residual, bit for bit.
TEST_F(CudaStorage, GemmResidualInPlaceInBf16) {
  const int64_t m = 19, n = 24, k = 31;
  const auto a = rounded_normal(DType::kBF16, m * k, 81),
             b = rounded_normal(DType::kBF16, k * n, 82);
  const auto bias = rounded_normal(DType::kBF16, n, 83),
             res = rounded_normal(DType::kBF16, m * n, 84);
  DeviceBuffer<uint16_t> da(a.bits), db(b.bits), dbias(bias.bits), dres(res.bits), separate(m * n),
      in_place(res.bits);
  GemmParams g;
  g.input_type = g.output_type = DType::kBF16;
  g.m = m, g.n = n, g.k = k, g.lda = k, g.ldb = n, g.ldc = n, g.ldr = n;
  g.a = da.ptr, g.b = db.ptr, g.bias = dbias.ptr;
  g.residual = dres.ptr, g.c = separate.ptr;
  ASSERT_TRUE(gpu_->gemm(g).ok());
  g.residual = in_place.ptr, g.c = in_place.ptr;
  ASSERT_TRUE(gpu_->gemm(g).ok());
  EXPECT_EQ(in_place.read(), separate.read());
}

TEST_F(CudaStorage, LayerNormForwardAndBackwardMatchCpuTwin) {
  const DType t = DType::kBF16;
  const int64_t rows = 13, width = 300;
  const auto x = rounded_normal(t, rows * width, 11, 2.0f, 1.0f);
  const auto w = rounded_normal(t, width, 12), b = rounded_normal(t, width, 13);
  const auto dy = rounded_normal(t, rows * width, 14), dx0 = rounded_normal(t, rows * width, 15);
  LayerNormParams p;
  p.storage = t, p.rows = rows, p.width = width;
  p.x = x.bits.data(), p.weight = w.bits.data(), p.bias = b.bits.data(), p.dy = dy.bits.data();
  Bits y(rows * width), dx = dx0.bits;
  std::vector<float> mean(rows), rstd(rows), dw(width, 0.5f), db(width, -0.5f);
  p.y = y.data(), p.mean = mean.data(), p.rstd = rstd.data();
  ASSERT_TRUE(cpu_->layernorm_forward(p).ok());
  p.dx = dx.data(), p.accumulate_dx = true, p.dweight = dw.data(), p.dbias = db.data();
  ASSERT_TRUE(cpu_->layernorm_backward(p).ok());

  DeviceBuffer<uint16_t> dxb(x.bits), dwb(w.bits), dbb(b.bits), ddy(dy.bits), ddx(dx0.bits);
  DeviceBuffer<uint16_t> dyb(rows * width);
  DeviceBuffer<float> dmean(rows), drstd(rows), ddw(std::vector<float>(width, 0.5f)),
      ddb(std::vector<float>(width, -0.5f));
  LayerNormParams g = p;
  g.x = dxb.ptr, g.weight = dwb.ptr, g.bias = dbb.ptr, g.dy = ddy.ptr, g.y = dyb.ptr;
  g.mean = dmean.ptr, g.rstd = drstd.ptr, g.dx = ddx.ptr, g.dweight = ddw.ptr, g.dbias = ddb.ptr;
  ASSERT_TRUE(gpu_->layernorm_forward(g).ok());
  ASSERT_TRUE(gpu_->layernorm_backward(g).ok());
  expect_rounded_close(t, dyb.read(), y, 1e-5, 1e-6, "y");
  expect_f32_close(dmean.read(), mean, 1e-6, 1e-7, "mean");
  expect_f32_close(drstd.read(), rstd, 1e-6, 0.0, "rstd");
  expect_rounded_close(t, ddx.read(), dx, 1e-3, 1e-5, "dx");
  expect_f32_close(ddw.read(), dw, 1e-3, 1e-5, "dweight");
  expect_f32_close(ddb.read(), db, 1e-3, 1e-5, "dbias");
}

TEST_F(CudaStorage, GeluForwardAndBackwardMatchCpuTwin) {
  for (DType t : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(dtype_name(t));
    const int64_t n = 3000;
    const auto x = rounded_normal(t, n, 21, 3.0f), dy = rounded_normal(t, n, 22);
    GeluParams p;
    p.storage = t, p.n = n, p.x = x.bits.data(), p.dy = dy.bits.data();
    Bits y(n), dx(n);
    p.y = y.data(), p.dx = dx.data();
    ASSERT_TRUE(cpu_->gelu_forward(p).ok());
    ASSERT_TRUE(cpu_->gelu_backward(p).ok());
    DeviceBuffer<uint16_t> dxb(x.bits), ddy(dy.bits), dyb(n), ddx(n);
    GeluParams g = p;
    g.x = dxb.ptr, g.dy = ddy.ptr, g.y = dyb.ptr, g.dx = ddx.ptr;
    ASSERT_TRUE(gpu_->gelu_forward(g).ok());
    ASSERT_TRUE(gpu_->gelu_backward(g).ok());
    const double abs = t == DType::kF16 ? test::kF16SubnormalHalfSpacing : 0.0;
    expect_rounded_close(t, dyb.read(), y, 1e-5, 1e-6 + abs, "y");
    expect_rounded_close(t, ddx.read(), dx, 1e-5, 1e-6 + abs, "dx");
  }
}

// A copy and a row-ordered fp32 scatter-add on both sides: bit-identical.
TEST_F(CudaStorage, EmbeddingForwardAndBackwardAreBitIdenticalToCpuTwin) {
  const DType t = DType::kBF16;
  const int64_t rows = 9, width = 70, vocab = 12;
  const std::vector<int32_t> ids = {4, 4, 0, 11, 7, 4, 2, 11, 1};
  const auto table = rounded_normal(t, vocab * width, 31),
             dout = rounded_normal(t, rows * width, 32);
  EmbeddingParams p;
  p.storage = t, p.rows = rows, p.width = width, p.vocab = vocab, p.ids = ids.data();
  Bits out(rows * width);
  std::vector<float> dtable(vocab * width, 0.25f);
  p.table = table.bits.data(), p.out = out.data(), p.dout = dout.bits.data();
  p.dtable = dtable.data();
  ASSERT_TRUE(cpu_->embedding_forward(p).ok());
  ASSERT_TRUE(cpu_->embedding_backward(p).ok());
  DeviceBuffer<int32_t> dids(ids);
  DeviceBuffer<uint16_t> dtab(table.bits), ddout(dout.bits), dout_b(rows * width);
  DeviceBuffer<float> ddtable(std::vector<float>(vocab * width, 0.25f));
  EmbeddingParams g = p;
  g.ids = dids.ptr, g.table = dtab.ptr, g.out = dout_b.ptr, g.dout = ddout.ptr;
  g.dtable = ddtable.ptr;
  ASSERT_TRUE(gpu_->embedding_forward(g).ok());
  ASSERT_TRUE(gpu_->embedding_backward(g).ok());
  EXPECT_EQ(dout_b.read(), out);
  EXPECT_EQ(ddtable.read(), dtable);
}

TEST_F(CudaStorage, ClassifierLossAndGradientsMatchCpuTwin) {
  const DType t = DType::kBF16;
  const int64_t rows = 7, width = 64, vocab = 500;
  const std::vector<int32_t> targets = {3, -1, 499, 0, 250, 17, 128};
  const auto hidden = rounded_normal(t, rows * width, 41),
             emb = rounded_normal(t, vocab * width, 42, 0.2f);
  ClassifierParams p;
  p.storage = t, p.rows = rows, p.width = width, p.vocab = vocab, p.vocab_chunk = 128;
  p.targets = targets.data(), p.loss_scale = 0.5f;
  p.hidden = hidden.bits.data(), p.embedding = emb.bits.data();
  std::vector<float> loss(rows), demb(vocab * width, 0.125f);
  Bits dh(rows * width);
  p.row_loss = loss.data(), p.dhidden = dh.data(), p.dembedding = demb.data();
  ASSERT_TRUE(cpu_->classifier_cross_entropy(p).ok());
  DeviceBuffer<uint16_t> dhid(hidden.bits), demb_b(emb.bits), ddh(rows * width);
  DeviceBuffer<int32_t> dtargets(targets);
  DeviceBuffer<float> dloss(rows), ddemb(std::vector<float>(vocab * width, 0.125f));
  ClassifierParams g = p;
  g.hidden = dhid.ptr, g.embedding = demb_b.ptr, g.targets = dtargets.ptr;
  g.row_loss = dloss.ptr, g.dhidden = ddh.ptr, g.dembedding = ddemb.ptr;
  ASSERT_TRUE(gpu_->classifier_cross_entropy(g).ok());
  expect_f32_close(dloss.read(), loss, 1e-5, 1e-6, "row_loss");
  expect_rounded_close(t, ddh.read(), dh, 1e-3, 1e-5, "dhidden");
  expect_f32_close(ddemb.read(), demb, 1e-3, 1e-5, "dembedding");
}

// The CUDA tensor-core kernels (head_dim 64) against the CPU twin; the backward of both reads the
// CPU twin's stored output, so the two backward passes see identical inputs.
TEST_F(CudaStorage, AttentionForwardAndBackwardMatchCpuTwin) {
  const DType t = DType::kBF16;
  const int64_t B = 2, T = 70, H = 2, D = 64;
  const std::vector<float> slopes = {0.5f, 0.125f};
  std::vector<uint8_t> mask(B * T, 1);
  for (int64_t j = 0; j < 6; ++j) mask[T + j] = 0;
  const auto qkv = rounded_normal(t, B * T * H * 3 * D, 51),
             dout = rounded_normal(t, B * T * H * D, 52);
  AlibiAttentionParams p;
  p.storage = t, p.batch = B, p.seq = T, p.heads = H, p.head_dim = D;
  p.scale = 1.0f / std::sqrt(static_cast<float>(D));
  p.slopes = slopes.data(), p.mask = mask.data(), p.qkv = qkv.bits.data();
  Bits out(B * T * H * D), dqkv(qkv.bits.size());
  std::vector<float> lse(B * H * T);
  p.out = out.data(), p.lse = lse.data(), p.dout = dout.bits.data(), p.dqkv = dqkv.data();
  ASSERT_TRUE(cpu_->alibi_attention_forward(p).ok());
  ASSERT_TRUE(cpu_->alibi_attention_backward(p).ok());

  DeviceBuffer<uint16_t> dqkv_in(qkv.bits), dout_b(out.size()), ddout(dout.bits),
      ddqkv(qkv.bits.size());
  DeviceBuffer<float> dslopes(slopes), dlse(B * H * T);
  DeviceBuffer<uint8_t> dmask(mask);
  AlibiAttentionParams g = p;
  g.slopes = dslopes.ptr, g.mask = dmask.ptr, g.qkv = dqkv_in.ptr, g.out = dout_b.ptr;
  g.lse = dlse.ptr, g.dout = ddout.ptr, g.dqkv = ddqkv.ptr;
  ASSERT_TRUE(gpu_->alibi_attention_forward(g).ok());
  expect_rounded_close(t, dout_b.read(), out, 0.0, 1e-2, "out");
  expect_f32_close(dlse.read(), lse, 1e-4, 1e-4, "lse");
  DeviceBuffer<uint16_t> cpu_out(out);
  g.out = cpu_out.ptr;
  ASSERT_TRUE(gpu_->alibi_attention_backward(g).ok());
  expect_rounded_close(t, ddqkv.read(), dqkv, 0.0, 2e-2, "dqkv");
}

// bf16 arena, fp32 masters: masters as the fp32 AdamW bound, the arena the masters rounded to
// nearest even (exactly, on the device), frozen elements bit-identical.
TEST_F(CudaStorage, MaskedAdamWWithBf16ArenaMatchesCpuTwin) {
  const DType t = DType::kBF16;
  const int64_t arena = 64;
  const std::vector<int64_t> index = {0, 3, 4, 5, 17, 40, 63};
  const int64_t n = static_cast<int64_t>(index.size());
  const auto params = rounded_normal(t, arena, 61);
  std::vector<float> master(n), grad = rounded_normal(DType::kF32, n, 62).f32;
  for (int64_t i = 0; i < n; ++i) master[i] = params.f32[index[i]] * (1.0f + 1e-3f);
  std::vector<float> m(n, 0.01f), v(n, 0.02f);
  for (bool adamw : {true, false}) {
    SCOPED_TRACE(adamw ? "adamw" : "sgd");
    MaskedAdamWParams p;
    p.storage = t, p.n = n, p.index = index.data(), p.grad = grad.data();
    p.lr = 1e-2f, p.weight_decay = 0.1f, p.step = 2, p.grad_scale = 0.5f;
    std::vector<float> cpu_master = master, cpu_m = m, cpu_v = v;
    Bits cpu_arena = params.bits;
    p.params = cpu_arena.data(), p.master = cpu_master.data(), p.m = cpu_m.data(),
    p.v = cpu_v.data();
    ASSERT_TRUE((adamw ? cpu_->masked_adamw(p) : cpu_->masked_sgd(p)).ok());
    DeviceBuffer<int64_t> dindex(index);
    DeviceBuffer<float> dgrad(grad), dmaster(master), dm(m), dv(v);
    DeviceBuffer<uint16_t> darena(params.bits);
    MaskedAdamWParams g = p;
    g.index = dindex.ptr, g.grad = dgrad.ptr, g.params = darena.ptr, g.master = dmaster.ptr;
    g.m = dm.ptr, g.v = dv.ptr;
    ASSERT_TRUE((adamw ? gpu_->masked_adamw(g) : gpu_->masked_sgd(g)).ok());
    const std::vector<float> got_master = dmaster.read();
    expect_f32_close(got_master, cpu_master, 1e-6, 1e-7, "master");
    const Bits got = darena.read();
    for (int64_t e = 0; e < arena; ++e) {
      const auto it = std::find(index.begin(), index.end(), e);
      if (it == index.end()) {
        ASSERT_EQ(got[e], params.bits[e]) << "frozen element " << e << " moved";
        ASSERT_EQ(cpu_arena[e], params.bits[e]) << "frozen element " << e << " moved on the CPU";
        continue;
      }
      const float mst = got_master[it - index.begin()];
      ASSERT_EQ(got[e], f32_to_bf16(mst)) << "arena " << e << " is not its master rounded";
      const double delta =
          1e-6 * std::fabs(cpu_master[it - index.begin()]) + 1e-7 * test::max_abs(cpu_master);
      const float ge = bf16_to_f32(got[e]), ce = bf16_to_f32(cpu_arena[e]);
      ASSERT_LE(std::fabs(ge - ce), test::bf16_pair_bound(delta, ge, ce)) << "arena " << e;
    }
  }
}

// The 16-bit instantiation of an elementwise kernel computes what its fp32 instantiation computes
// on the widened inputs (the same fp32 operations; only loads and stores differ) and rounds it
// once: bit-equal to the fp32 result rounded to nearest even. Also store_rounded, the one store
// of the GEMM epilogue and the classifier's dhidden, on values that include exact ties.
TEST_F(CudaStorage, StoresAreTheF32ResultRoundedToNearestEven) {
  for (DType t : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(dtype_name(t));
    const int64_t rows = 5, width = 200, n = rows * width;
    const auto x = rounded_normal(t, n, 71, 2.0f), dy = rounded_normal(t, n, 72);
    const auto w = rounded_normal(t, width, 73), b = rounded_normal(t, width, 74);
    DeviceBuffer<uint16_t> x16(x.bits), dy16(dy.bits), w16(w.bits), b16(b.bits), y16(n), dx16(n);
    DeviceBuffer<float> x32(x.f32), dy32(dy.f32), w32(w.f32), b32(b.f32), y32(n), dx32(n);
    GeluParams g16;
    g16.storage = t, g16.n = n, g16.x = x16.ptr, g16.y = y16.ptr, g16.dy = dy16.ptr;
    g16.dx = dx16.ptr;
    GeluParams g32;
    g32.n = n, g32.x = x32.ptr, g32.y = y32.ptr, g32.dy = dy32.ptr, g32.dx = dx32.ptr;
    for (const GeluParams* g : {&g16, &g32}) {
      ASSERT_TRUE(gpu_->gelu_forward(*g).ok());
      ASSERT_TRUE(gpu_->gelu_backward(*g).ok());
    }
    EXPECT_EQ(y16.read(), test::narrow(t, y32.read())) << "gelu y";
    EXPECT_EQ(dx16.read(), test::narrow(t, dx32.read())) << "gelu dx";
    LayerNormParams l16;
    l16.storage = t, l16.rows = rows, l16.width = width;
    l16.x = x16.ptr, l16.weight = w16.ptr, l16.bias = b16.ptr, l16.y = y16.ptr;
    l16.dy = dy16.ptr, l16.dx = dx16.ptr;
    LayerNormParams l32;
    l32.rows = rows, l32.width = width;
    l32.x = x32.ptr, l32.weight = w32.ptr, l32.bias = b32.ptr, l32.y = y32.ptr;
    l32.dy = dy32.ptr, l32.dx = dx32.ptr;
    for (const LayerNormParams* l : {&l16, &l32}) {
      ASSERT_TRUE(gpu_->layernorm_forward(*l).ok());
      ASSERT_TRUE(gpu_->layernorm_backward(*l).ok());
    }
    EXPECT_EQ(y16.read(), test::narrow(t, y32.read())) << "layernorm y";
    EXPECT_EQ(dx16.read(), test::narrow(t, dx32.read())) << "layernorm dx";

    // Random values, and values halfway between two neighbours of the 16-bit grid.
    std::vector<float> v = rounded_normal(DType::kF32, n, 75).f32;
    const float half_spacing = t == DType::kBF16 ? 0x1p-8f : 0x1p-11f;
    for (int64_t i = 0; i < 64; ++i) v[i] = 1.0f + (2 * i + 1) * half_spacing;  // ties
    DeviceBuffer<float> src(v);
    DeviceBuffer<uint16_t> dst(n);
    ASSERT_TRUE(cuda::store_rounded(t, rows, width, src.ptr, width, dst.ptr, width, nullptr).ok());
    EXPECT_EQ(dst.read(), test::narrow(t, v)) << "store_rounded";
  }
}

// Every op of the CUDA backend refuses an integer storage type with a message naming op and type.
TEST_F(CudaStorage, IntegerStorageIsRefusedByEveryOp) {
  const auto refused = [](const absl::Status& s, const char* op) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << op << ": " << s;
    EXPECT_NE(std::string(s.message()).find(op), std::string::npos) << s;
    EXPECT_NE(std::string(s.message()).find("I32"), std::string::npos) << s;
  };
  DeviceBuffer<float> buf(64);
  DeviceBuffer<int32_t> ids(1);
  GemmParams gp;
  gp.m = gp.n = gp.k = 1, gp.a = gp.b = buf.ptr, gp.c = buf.ptr, gp.lda = gp.ldb = gp.ldc = 1;
  gp.input_type = DType::kI32;
  refused(gpu_->gemm(gp), "gemm input");
  gp.input_type = DType::kF32, gp.output_type = DType::kI32;
  refused(gpu_->gemm(gp), "gemm output");
  LayerNormParams ln;
  ln.storage = DType::kI32, ln.rows = 1, ln.width = 1;
  ln.x = ln.weight = ln.bias = ln.dy = buf.ptr, ln.y = ln.dx = buf.ptr;
  refused(gpu_->layernorm_forward(ln), "layernorm_forward");
  refused(gpu_->layernorm_backward(ln), "layernorm_backward");
  GeluParams ge;
  ge.storage = DType::kI32, ge.n = 1, ge.x = ge.dy = buf.ptr, ge.y = ge.dx = buf.ptr;
  refused(gpu_->gelu_forward(ge), "gelu_forward");
  refused(gpu_->gelu_backward(ge), "gelu_backward");
  EmbeddingParams em;
  em.storage = DType::kI32, em.rows = em.width = em.vocab = 1, em.ids = ids.ptr;
  em.table = em.dout = buf.ptr, em.out = buf.ptr, em.dtable = buf.ptr;
  refused(gpu_->embedding_forward(em), "embedding_forward");
  refused(gpu_->embedding_backward(em), "embedding_backward");
  ClassifierParams cl;
  cl.storage = DType::kI32, cl.rows = cl.width = cl.vocab = 1;
  cl.hidden = cl.embedding = buf.ptr, cl.row_loss = buf.ptr;
  refused(gpu_->classifier_cross_entropy(cl), "classifier_cross_entropy");
  MaskedAdamWParams ad;
  ad.storage = DType::kI32;
  refused(gpu_->masked_adamw(ad), "masked AdamW");
  refused(gpu_->masked_sgd(ad), "masked SGD");
}

}  // namespace
}  // namespace engine

#endif  // ENGINE_HAVE_CUDA
