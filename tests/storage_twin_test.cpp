// The CPU backend's 16-bit storage twin (kernels/cpu/storage.h, Note [the CPU storage twin])
// against its fp32 path on the same numbers: inputs are drawn, rounded to the storage type, and
// handed to the fp32 path widened (exactly) and to the twin as 16-bit tensors. The twin widens,
// runs the same fp32 kernel and rounds every stored tensor once, so (docs/TOLERANCES.md,
// "Storage types"):
//  - each 16-bit output is the fp32 path's output rounded to nearest even, bit for bit (which
//    implies |twin - fp32| <= u_bf16 |fp32|, also asserted, and that the twin rounded on store
//    rather than truncating or keeping stale bits);
//  - each fp32 output (statistics, parameter gradients, losses) is bit-identical;
//  - the GEMM's sbgemm path sums in another order: there the bound is
//    u |c32| + (2 + 2u) gamma_(k+2) sum |terms| (u of the output type; each fp32 result within
//    gamma_(k+2) sum|terms| of the exact value, then one rounding).
#include "storage_twin.h"

#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/dtype.h"
#include "error_bounds.h"
#include "gtest/gtest.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/storage.h"

namespace engine {
namespace {

using test::kBf16UnitRoundoff;
using test::narrow;
using test::rounded_normal;
using test::widen;

// Every element of the twin's 16-bit output is the fp32 output rounded to nearest even.
void expect_rounded_from(DType t, const std::vector<uint16_t>& twin, const std::vector<float>& f32,
                         const char* what) {
  ASSERT_EQ(twin.size(), f32.size()) << what;
  const std::vector<float> got = widen(t, twin);
  for (size_t i = 0; i < f32.size(); ++i) {
    ASSERT_LE(std::fabs(static_cast<double>(got[i]) - f32[i]), test::rounding_bound(t, f32[i]))
        << what << " " << i;
    const std::vector<float> one{f32[i]};
    ASSERT_EQ(twin[i], narrow(t, one)[0]) << what << " " << i << ": not rounded on store";
  }
}

void expect_bit_equal(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << what << " " << i;
}

constexpr DType kHalfTypes[] = {DType::kBF16, DType::kF16};

TEST(StorageTwin, LayerNormForwardAndBackward) {
  const int64_t rows = 9, width = 96;
  for (DType t : kHalfTypes) {
    SCOPED_TRACE(dtype_name(t));
    const auto x = rounded_normal(t, rows * width, 1, 2.0f, 3.0f);
    const auto w = rounded_normal(t, width, 2);
    const auto b = rounded_normal(t, width, 3);
    const auto dy = rounded_normal(t, rows * width, 4);
    const auto dx0 = rounded_normal(t, rows * width, 5);  // accumulated onto
    std::vector<float> y32(rows * width), mean32(rows), rstd32(rows), mean(rows), rstd(rows);
    std::vector<uint16_t> y(rows * width);
    LayerNormParams f;
    f.rows = rows, f.width = width;
    f.x = x.f32.data(), f.weight = w.f32.data(), f.bias = b.f32.data(), f.y = y32.data();
    f.mean = mean32.data(), f.rstd = rstd32.data();
    ASSERT_TRUE(cpu::layernorm_forward(f).ok());
    LayerNormParams h = f;
    h.storage = t;
    h.x = x.bits.data(), h.weight = w.bits.data(), h.bias = b.bits.data(), h.y = y.data();
    h.mean = mean.data(), h.rstd = rstd.data();
    ASSERT_TRUE(cpu::layernorm_forward(h).ok());
    expect_rounded_from(t, y, y32, "y");
    expect_bit_equal(mean, mean32, "mean");
    expect_bit_equal(rstd, rstd32, "rstd");

    std::vector<float> dx32 = dx0.f32, dw32(width, 0.5f), db32(width, -0.25f);
    std::vector<float> dw = dw32, db = db32;
    std::vector<uint16_t> dx = dx0.bits;
    f.dy = dy.f32.data(), f.dx = dx32.data(), f.accumulate_dx = true;
    f.dweight = dw32.data(), f.dbias = db32.data();
    ASSERT_TRUE(cpu::layernorm_backward(f).ok());
    h.dy = dy.bits.data(), h.dx = dx.data(), h.accumulate_dx = true;
    h.dweight = dw.data(), h.dbias = db.data();
    ASSERT_TRUE(cpu::layernorm_backward(h).ok());
    expect_rounded_from(t, dx, dx32, "dx");
    expect_bit_equal(dw, dw32, "dweight");
    expect_bit_equal(db, db32, "dbias");
    EXPECT_EQ(widen(t, y), widen(t, narrow(t, y32))) << "the backward must not store y";
  }
}

TEST(StorageTwin, GeluForwardAndBackward) {
  const int64_t n = 1000;
  for (DType t : kHalfTypes) {
    SCOPED_TRACE(dtype_name(t));
    const auto x = rounded_normal(t, n, 11, 3.0f);
    const auto dy = rounded_normal(t, n, 12);
    std::vector<float> y32(n), dx32(n);
    std::vector<uint16_t> y(n), dx(n);
    GeluParams f;
    f.n = n, f.x = x.f32.data(), f.y = y32.data(), f.dy = dy.f32.data(), f.dx = dx32.data();
    ASSERT_TRUE(cpu::gelu_forward(f).ok());
    ASSERT_TRUE(cpu::gelu_backward(f).ok());
    GeluParams h;
    h.storage = t;
    h.n = n, h.x = x.bits.data(), h.y = y.data(), h.dy = dy.bits.data(), h.dx = dx.data();
    ASSERT_TRUE(cpu::gelu_forward(h).ok());
    ASSERT_TRUE(cpu::gelu_backward(h).ok());
    expect_rounded_from(t, y, y32, "y");
    expect_rounded_from(t, dx, dx32, "dx");
  }
}

TEST(StorageTwin, EmbeddingForwardAndBackward) {
  const int64_t rows = 7, width = 33, vocab = 11;
  const std::vector<int32_t> ids = {3, 0, 10, 3, 7, 7, 1};
  for (DType t : kHalfTypes) {
    SCOPED_TRACE(dtype_name(t));
    const auto table = rounded_normal(t, vocab * width, 21);
    const auto dout = rounded_normal(t, rows * width, 22);
    std::vector<float> out32(rows * width), dtable32(vocab * width, 0.125f);
    std::vector<float> dtable = dtable32;
    std::vector<uint16_t> out(rows * width);
    EmbeddingParams f;
    f.rows = rows, f.width = width, f.vocab = vocab, f.ids = ids.data();
    f.table = table.f32.data(), f.out = out32.data(), f.dout = dout.f32.data();
    f.dtable = dtable32.data();
    ASSERT_TRUE(cpu::embedding_forward(f).ok());
    ASSERT_TRUE(cpu::embedding_backward(f).ok());
    EmbeddingParams h = f;
    h.storage = t;
    h.table = table.bits.data(), h.out = out.data(), h.dout = dout.bits.data();
    h.dtable = dtable.data();
    ASSERT_TRUE(cpu::embedding_forward(h).ok());
    ASSERT_TRUE(cpu::embedding_backward(h).ok());
    expect_rounded_from(t, out, out32, "out");
    expect_bit_equal(dtable, dtable32, "dtable");
  }
}

TEST(StorageTwin, AttentionForwardAndBackward) {
  const int64_t B = 2, T = 24, H = 2, D = 64;
  const std::vector<float> slopes = {0.5f, 0.25f};
  std::vector<uint8_t> mask(B * T, 1);
  for (int64_t j = 0; j < 5; ++j) mask[T + j] = 0;  // left padding in row 1
  for (DType t : kHalfTypes) {
    SCOPED_TRACE(dtype_name(t));
    const auto qkv = rounded_normal(t, B * T * H * 3 * D, 31);
    const auto dout = rounded_normal(t, B * T * H * D, 32);
    std::vector<float> out32(B * T * H * D), lse32(B * H * T), lse(B * H * T);
    std::vector<float> dqkv32(qkv.f32.size());
    std::vector<uint16_t> out(out32.size()), dqkv(qkv.f32.size());
    AlibiAttentionParams f;
    f.batch = B, f.seq = T, f.heads = H, f.head_dim = D, f.scale = 0.125f;
    f.slopes = slopes.data(), f.mask = mask.data();
    f.qkv = qkv.f32.data(), f.out = out32.data(), f.lse = lse32.data();
    ASSERT_TRUE(cpu::alibi_attention_forward(f).ok());
    AlibiAttentionParams h = f;
    h.storage = t;
    h.qkv = qkv.bits.data(), h.out = out.data(), h.lse = lse.data();
    ASSERT_TRUE(cpu::alibi_attention_forward(h).ok());
    expect_rounded_from(t, out, out32, "out");
    expect_bit_equal(lse, lse32, "lse");
    // The backward reads the stored (rounded) output: the fp32 path gets the same numbers.
    const std::vector<float> out_rounded = widen(t, out);
    f.out = const_cast<float*>(out_rounded.data());
    f.dout = dout.f32.data(), f.dqkv = dqkv32.data();
    ASSERT_TRUE(cpu::alibi_attention_backward(f).ok());
    h.dout = dout.bits.data(), h.dqkv = dqkv.data();
    ASSERT_TRUE(cpu::alibi_attention_backward(h).ok());
    expect_rounded_from(t, dqkv, dqkv32, "dqkv");
  }
}

TEST(StorageTwin, ClassifierLossAndGradients) {
  const int64_t rows = 6, width = 64, vocab = 300;
  const std::vector<int32_t> targets = {5, -1, 299, 0, 17, 128};
  for (DType t : kHalfTypes) {
    SCOPED_TRACE(dtype_name(t));
    const auto hidden = rounded_normal(t, rows * width, 41);
    const auto emb = rounded_normal(t, vocab * width, 42, 0.2f);
    std::vector<float> loss32(rows), loss(rows), demb32(vocab * width, 0.5f), dh32(rows * width);
    std::vector<float> demb = demb32;
    std::vector<uint16_t> dh(rows * width);
    ClassifierParams f;
    f.rows = rows, f.width = width, f.vocab = vocab, f.vocab_chunk = 128;
    f.hidden = hidden.f32.data(), f.embedding = emb.f32.data(), f.targets = targets.data();
    f.row_loss = loss32.data(), f.dhidden = dh32.data(), f.dembedding = demb32.data();
    f.loss_scale = 0.25f;
    ASSERT_TRUE(cpu::classifier_cross_entropy(f).ok());
    ClassifierParams h = f;
    h.storage = t;
    h.hidden = hidden.bits.data(), h.embedding = emb.bits.data();
    h.row_loss = loss.data(), h.dhidden = dh.data(), h.dembedding = demb.data();
    ASSERT_TRUE(cpu::classifier_cross_entropy(h).ok());
    expect_bit_equal(loss, loss32, "row_loss");
    expect_rounded_from(t, dh, dh32, "dhidden");
    expect_bit_equal(demb, demb32, "dembedding");
    // The one-pass path (dhidden without dembedding) as well.
    f.dembedding = nullptr, h.dembedding = nullptr;
    ASSERT_TRUE(cpu::classifier_cross_entropy(f).ok());
    ASSERT_TRUE(cpu::classifier_cross_entropy(h).ok());
    expect_rounded_from(t, dh, dh32, "dhidden (one pass)");
  }
}

TEST(StorageTwin, MaskedAdamWAndSgdRoundMastersIntoA16BitArena) {
  const int64_t arena = 40;
  const std::vector<int64_t> index = {1, 4, 5, 9, 20, 39};
  const int64_t n = static_cast<int64_t>(index.size());
  for (DType t : kHalfTypes) {
    for (bool adamw : {true, false}) {
      SCOPED_TRACE(std::string(dtype_name(t)) + (adamw ? " adamw" : " sgd"));
      const auto params = rounded_normal(t, arena, 51);
      std::vector<float> master(n);
      for (int64_t i = 0; i < n; ++i) master[i] = params.f32[index[i]] + 1e-3f * (i + 1);
      const auto grad = rounded_normal(DType::kF32, n, 52);
      std::vector<float> m(n, 0.01f), v(n, 0.02f);
      std::vector<float> p32 = params.f32, master32 = master, m32 = m, v32 = v;
      std::vector<uint16_t> p16 = params.bits;
      MaskedAdamWParams f;
      f.n = n, f.index = index.data(), f.grad = grad.f32.data();
      f.lr = 1e-2f, f.weight_decay = 0.1f, f.step = 3, f.grad_scale = 0.5f;
      MaskedAdamWParams h = f;
      f.params = p32.data(), f.master = master32.data(), f.m = m32.data(), f.v = v32.data();
      h.storage = t;
      h.params = p16.data(), h.master = master.data(), h.m = m.data(), h.v = v.data();
      ASSERT_TRUE((adamw ? cpu::masked_adamw(f) : cpu::masked_sgd(f)).ok());
      ASSERT_TRUE((adamw ? cpu::masked_adamw(h) : cpu::masked_sgd(h)).ok());
      expect_bit_equal(master, master32, "master");
      expect_bit_equal(m, m32, "m");
      std::vector<float> trained(n);
      for (int64_t i = 0; i < n; ++i) trained[i] = p32[index[i]];
      std::vector<uint16_t> got(n);
      for (int64_t i = 0; i < n; ++i) got[i] = p16[index[i]];
      expect_rounded_from(t, got, trained, "trainable elements");
      for (int64_t e = 0; e < arena; ++e) {
        if (std::find(index.begin(), index.end(), e) == index.end()) {
          ASSERT_EQ(p16[e], params.bits[e]) << "frozen element " << e << " moved";
        }
      }
      h.master = nullptr;
      const absl::Status s = adamw ? cpu::masked_adamw(h) : cpu::masked_sgd(h);
      EXPECT_NE(std::string(s.message()).find("master"), std::string::npos) << s;
    }
  }
}

// ---- GEMM ------------------------------------------------------------------------------------

struct GemmCase {
  int64_t m, n, k;
  bool ta, tb, bias, residual;
  DType in, out;
};

// Runs one case through the fp32 path on the widened inputs and through the storage path, and
// checks every element: bit-exact rounding on the widening path, the derived bound on both.
void check_gemm(const GemmCase& c, cpu::Bf16GemmPath path) {
  SCOPED_TRACE(::testing::Message() << c.m << "x" << c.n << "x" << c.k << " ta=" << c.ta
                                    << " tb=" << c.tb << " bias=" << c.bias << " res=" << c.residual
                                    << " in=" << dtype_name(c.in) << " out=" << dtype_name(c.out)
                                    << " path=" << std::string(cpu::bf16_gemm_path_name(path)));
  ASSERT_TRUE(cpu::set_bf16_gemm_path(path).ok());
  const int64_t pad = 2;
  const int64_t lda = (c.ta ? c.m : c.k) + pad, ldb = (c.tb ? c.k : c.n) + pad, ldc = c.n + pad;
  const int64_t a_rows = c.ta ? c.k : c.m, b_rows = c.tb ? c.n : c.k;
  const auto a = rounded_normal(c.in, a_rows * lda, 61);
  const auto b = rounded_normal(c.in, b_rows * ldb, 62);
  const auto bias = rounded_normal(c.in, c.n, 63);
  const auto res = rounded_normal(c.in, c.m * ldc, 64);
  const bool in16 = c.in != DType::kF32, out16 = c.out != DType::kF32;
  std::vector<float> c32(c.m * ldc, 7.0f);
  GemmParams f;
  f.transpose_a = c.ta, f.transpose_b = c.tb, f.m = c.m, f.n = c.n, f.k = c.k;
  f.a = a.f32.data(), f.lda = lda, f.b = b.f32.data(), f.ldb = ldb, f.c = c32.data(), f.ldc = ldc;
  f.bias = c.bias ? bias.f32.data() : nullptr;
  f.residual = c.residual ? res.f32.data() : nullptr, f.ldr = ldc;
  ASSERT_TRUE(cpu::gemm(f).ok());
  GemmParams h = f;
  h.input_type = c.in, h.output_type = c.out;
  if (in16) {
    h.a = a.bits.data(), h.b = b.bits.data();
    h.bias = c.bias ? bias.bits.data() : nullptr;
    h.residual = c.residual ? res.bits.data() : nullptr;
  }
  std::vector<float> got(c.m * ldc, 7.0f);
  std::vector<uint16_t> got16;
  if (out16) {
    got16 = narrow(c.out, got);
    h.c = got16.data();
  } else {
    h.c = got.data();
  }
  ASSERT_TRUE(cpu::gemm(h).ok());
  if (out16) got = widen(c.out, got16);
  const double u_out = c.out == DType::kBF16  ? kBf16UnitRoundoff
                       : c.out == DType::kF16 ? test::kF16UnitRoundoff
                                              : 0.0;
  const bool same_order = !(c.in == DType::kBF16 && path == cpu::Bf16GemmPath::kSbgemm);
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const float want = c32[i * ldc + j];
      const float g = got[i * ldc + j];
      if (j >= c.n) {
        ASSERT_EQ(g, 7.0f) << "padding " << i << ", " << j << " written";
        continue;
      }
      double magnitude = 0.0;
      for (int64_t l = 0; l < c.k; ++l) {
        const float av = c.ta ? a.f32[l * lda + i] : a.f32[i * lda + l];
        const float bv = c.tb ? b.f32[j * ldb + l] : b.f32[l * ldb + j];
        magnitude += std::fabs(static_cast<double>(av) * bv);
      }
      if (c.bias) magnitude += std::fabs(bias.f32[j]);
      if (c.residual) magnitude += std::fabs(res.f32[i * ldc + j]);
      const double bound = test::rounding_bound(c.out, want) +
                           (2.0 + 2.0 * u_out) * test::float_gamma(c.k + 2) * magnitude;
      ASSERT_LE(std::fabs(static_cast<double>(g) - want), bound) << i << ", " << j;
      if (same_order && out16) {
        ASSERT_EQ(got16[i * ldc + j], narrow(c.out, {want})[0]) << i << ", " << j;
      } else if (same_order) {
        ASSERT_EQ(g, want) << i << ", " << j;
      }
    }
  }
}

std::vector<cpu::Bf16GemmPath> supported_paths() {
  std::vector<cpu::Bf16GemmPath> paths;
  for (auto path : {cpu::Bf16GemmPath::kWidenSgemm, cpu::Bf16GemmPath::kSbgemm}) {
    if (cpu::bf16_gemm_path_supported(path)) paths.push_back(path);
  }
  return paths;
}

TEST(StorageTwin, GemmEveryTypeComboTransposeAndEpilogue) {
  const std::vector<std::pair<DType, DType>> combos = {{DType::kBF16, DType::kBF16},
                                                       {DType::kBF16, DType::kF32},
                                                       {DType::kF32, DType::kBF16},
                                                       {DType::kF16, DType::kF16},
                                                       {DType::kF16, DType::kF32}};
  for (cpu::Bf16GemmPath path : supported_paths()) {
    for (auto [in, out] : combos) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          check_gemm({13, 40, 70, ta, tb, false, false, in, out}, path);
          check_gemm({13, 40, 70, ta, tb, true, true, in, out}, path);
        }
      }
      check_gemm({64, 96, 33, false, true, true, false, in, out}, path);
      check_gemm({200, 48, 64, false, false, false, true, in, out}, path);  // threaded slabs
    }
  }
  cpu::clear_bf16_gemm_path_override();
}

// A linear layer adds its residual in place (residual = C, ldr = ldc) in bf16 as in fp32: the
// residual is read before C is written, so the result equals the one with a separate residual.
TEST(StorageTwin, GemmResidualInPlaceInBf16) {
  const int64_t m = 19, n = 24, k = 31;
  const auto a = rounded_normal(DType::kBF16, m * k, 81),
             b = rounded_normal(DType::kBF16, k * n, 82);
  const auto bias = rounded_normal(DType::kBF16, n, 83),
             res = rounded_normal(DType::kBF16, m * n, 84);
  for (cpu::Bf16GemmPath path : supported_paths()) {
    ASSERT_TRUE(cpu::set_bf16_gemm_path(path).ok());
    GemmParams g;
    g.input_type = g.output_type = DType::kBF16;
    g.m = m, g.n = n, g.k = k, g.lda = k, g.ldb = n, g.ldc = n, g.ldr = n;
    g.a = a.bits.data(), g.b = b.bits.data(), g.bias = bias.bits.data();
    std::vector<uint16_t> separate(m * n), in_place = res.bits;
    g.residual = res.bits.data(), g.c = separate.data();
    ASSERT_TRUE(cpu::gemm(g).ok());
    g.residual = in_place.data(), g.c = in_place.data();
    ASSERT_TRUE(cpu::gemm(g).ok());
    EXPECT_EQ(in_place, separate) << cpu::bf16_gemm_path_name(path);
  }
  cpu::clear_bf16_gemm_path_override();
}

// The bf16 GEMM takes the path the probe reports (AVX512_BF16 and an OpenBLAS exporting
// cblas_sbgemm: sbgemm, else widen + sgemm), and that path is the default's result bit for bit.
TEST(StorageTwin, Bf16GemmTakesThePathTheProbeReports) {
  __builtin_cpu_init();
  const bool sbgemm =
      __builtin_cpu_supports("avx512bf16") && dlsym(RTLD_DEFAULT, "cblas_sbgemm") != nullptr;
  cpu::clear_bf16_gemm_path_override();
  const cpu::Bf16GemmPath detected = cpu::active_bf16_gemm_path();
  EXPECT_EQ(detected, sbgemm ? cpu::Bf16GemmPath::kSbgemm : cpu::Bf16GemmPath::kWidenSgemm)
      << cpu::bf16_gemm_path_name(detected);
  EXPECT_EQ(cpu::bf16_gemm_path_supported(cpu::Bf16GemmPath::kSbgemm), sbgemm);
  EXPECT_EQ(cpu::set_bf16_gemm_path(cpu::Bf16GemmPath::kSbgemm).ok(), sbgemm);
  cpu::clear_bf16_gemm_path_override();

  const int64_t m = 17, n = 23, k = 40;
  const auto a = rounded_normal(DType::kBF16, m * k, 71);
  const auto b = rounded_normal(DType::kBF16, k * n, 72);
  GemmParams g;
  g.input_type = DType::kBF16, g.output_type = DType::kBF16;
  g.m = m, g.n = n, g.k = k;
  g.a = a.bits.data(), g.lda = k, g.b = b.bits.data(), g.ldb = n, g.ldc = n;
  std::vector<uint16_t> by_default(m * n), forced(m * n);
  g.c = by_default.data();
  ASSERT_TRUE(cpu::gemm(g).ok());
  ASSERT_TRUE(cpu::set_bf16_gemm_path(detected).ok());
  g.c = forced.data();
  ASSERT_TRUE(cpu::gemm(g).ok());
  cpu::clear_bf16_gemm_path_override();
  EXPECT_EQ(by_default, forced);
}

// A bad shape with 16-bit storage is the kernel's one-line error, before anything is widened.
TEST(StorageTwin, BadShapesAreRefusedBeforeWidening) {
  uint16_t buf[8] = {};
  LayerNormParams ln;
  ln.storage = DType::kBF16, ln.rows = -1, ln.width = 4;
  ln.x = ln.weight = ln.bias = ln.dy = buf, ln.y = ln.dx = buf;
  EXPECT_NE(std::string(cpu::layernorm_forward(ln).message()).find("bad shape"), std::string::npos);
  GeluParams ge;
  ge.storage = DType::kBF16, ge.n = -3, ge.x = buf, ge.y = buf;
  EXPECT_NE(std::string(cpu::gelu_forward(ge).message()).find("negative n"), std::string::npos);
  AlibiAttentionParams at;
  at.storage = DType::kBF16, at.batch = 1, at.seq = 4, at.heads = -1, at.head_dim = 8;
  EXPECT_FALSE(cpu::alibi_attention_forward(at).ok());
  ClassifierParams cl;
  cl.storage = DType::kBF16, cl.rows = 2, cl.width = 0, cl.vocab = 3;
  EXPECT_NE(std::string(cpu::classifier_cross_entropy(cl).message()).find("bad shape"),
            std::string::npos);
}

TEST(StorageTwin, IntegerStorageIsRefusedByEveryOp) {
  const auto expect_refused = [](const absl::Status& s, const char* op) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << op << ": " << s;
    EXPECT_NE(std::string(s.message()).find(op), std::string::npos) << s;
    EXPECT_NE(std::string(s.message()).find("I32"), std::string::npos) << s;
  };
  float buf[64] = {};
  int32_t ids[1] = {0};
  GemmParams g;
  g.m = g.n = g.k = 1, g.a = g.b = buf, g.c = buf, g.lda = g.ldb = g.ldc = 1;
  g.input_type = DType::kI32;
  expect_refused(cpu::gemm(g), "gemm input");
  g.input_type = DType::kF32, g.output_type = DType::kI32;
  expect_refused(cpu::gemm(g), "gemm output");
  LayerNormParams ln;
  ln.storage = DType::kI32, ln.rows = 1, ln.width = 1;
  ln.x = ln.weight = ln.bias = ln.dy = buf, ln.y = ln.dx = buf;
  expect_refused(cpu::layernorm_forward(ln), "layernorm_forward");
  expect_refused(cpu::layernorm_backward(ln), "layernorm_backward");
  GeluParams ge;
  ge.storage = DType::kI32, ge.n = 1, ge.x = ge.dy = buf, ge.y = ge.dx = buf;
  expect_refused(cpu::gelu_forward(ge), "gelu_forward");
  expect_refused(cpu::gelu_backward(ge), "gelu_backward");
  EmbeddingParams em;
  em.storage = DType::kI32, em.rows = em.width = em.vocab = 1, em.ids = ids;
  em.table = em.dout = buf, em.out = buf, em.dtable = buf;
  expect_refused(cpu::embedding_forward(em), "embedding_forward");
  expect_refused(cpu::embedding_backward(em), "embedding_backward");
  AlibiAttentionParams at;
  at.storage = DType::kI32, at.batch = at.seq = at.heads = 1, at.head_dim = 8;
  at.qkv = at.dout = buf, at.out = at.dqkv = buf, at.lse = buf, at.slopes = buf;
  expect_refused(cpu::alibi_attention_forward(at), "alibi_attention_forward");
  expect_refused(cpu::alibi_attention_backward(at), "alibi_attention_backward");
  ClassifierParams cl;
  cl.storage = DType::kI32, cl.rows = cl.width = cl.vocab = 1;
  cl.hidden = cl.embedding = buf, cl.row_loss = buf;
  expect_refused(cpu::classifier_cross_entropy(cl), "classifier_cross_entropy");
  MaskedAdamWParams ad;
  ad.storage = DType::kI32;
  expect_refused(cpu::masked_adamw(ad), "masked AdamW");
  expect_refused(cpu::masked_sgd(ad), "masked SGD");
}

}  // namespace
}  // namespace engine
