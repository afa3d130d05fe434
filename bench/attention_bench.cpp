// Fused causal ALiBi attention forward (kernels/cpu/attention.cpp), with and without the per-head
// statistics, against a naive reference that materialises each head's (T, T) score matrix the
// way an eager framework does (BLAS for Q K^T and P V, softmax in between); and the fused
// backward. The fused cases run once per instruction-set build of the kernels (isa=avx2 /
// isa=avx512, kernels/cpu/isa.h), side by side; a build the CPU lacks is skipped.
// GFLOP/s follows the FlashAttention convention: 4 * B * H * T^2 * D for the forward and 2.5x
// that for the backward, halved for causal masking.
// Shapes: B = 1, H = 4, T in {128, 512, 2048, 4096}, D in {64, 128}; the naive reference stops
// at T = 2048 to keep the default run short (its (T, T) buffer is what the fused kernel avoids).
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/ops.h"

namespace {

constexpr int64_t kBatch = 1;
constexpr int64_t kHeads = 4;

struct Problem {
  int64_t seq, dim;
  std::vector<float> qkv, slopes, out, lse;
  explicit Problem(int64_t t, int64_t d) : seq(t), dim(d) {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    qkv.resize(kBatch * t * kHeads * 3 * d);
    for (float& x : qkv) x = normal(rng);
    for (int64_t h = 0; h < kHeads; ++h) slopes.push_back(std::pow(2.0f, -8.0f * (h + 1) / kHeads));
    out.resize(kBatch * t * kHeads * d);
    lse.resize(kBatch * kHeads * t);
  }
};

// Backward FLOPs relative to the forward's: five (T, T, D) products against two.
constexpr double kBackwardFlopRatio = 2.5;

// Selects the build named by the benchmark argument (0 = avx2, 1 = avx512); false (and the case
// skipped) when the CPU lacks it.
bool select_isa(benchmark::State& state, int64_t arg) {
  const engine::cpu::CpuIsa isa = arg == 1 ? engine::cpu::CpuIsa::kAvx512 : engine::cpu::CpuIsa::kAvx2;
  if (const absl::Status s = engine::cpu::set_cpu_isa(isa); !s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return false;
  }
  return true;
}

void set_flops(benchmark::State& state, int64_t t, int64_t d, double ratio = 1.0) {
  const double causal_flops = ratio * 4.0 * kBatch * kHeads * double(t) * t * d / 2.0;
  state.counters["GFLOP/s"] = benchmark::Counter(causal_flops / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_FusedAttention(benchmark::State& state) {
  const int64_t t = state.range(0), d = state.range(1);
  const bool stats = state.range(2) != 0;
  if (!select_isa(state, state.range(3))) return;
  Problem pr(t, d);
  std::vector<double> bos(kBatch * kHeads), ent(kBatch * kHeads), loc(kBatch * kHeads);
  engine::AlibiAttentionParams p;
  p.batch = kBatch, p.seq = t, p.heads = kHeads, p.head_dim = d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.qkv = pr.qkv.data(), p.slopes = pr.slopes.data(), p.out = pr.out.data(), p.lse = pr.lse.data();
  if (stats) {
    p.stats.bos_mass_sum = bos.data();
    p.stats.entropy_sum = ent.data();
    p.stats.local_mass_sum = loc.data();
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(engine::cpu::alibi_attention_forward(p));
    benchmark::ClobberMemory();
  }
  set_flops(state, t, d);
}

void BM_FusedAttentionBackward(benchmark::State& state) {
  const int64_t t = state.range(0), d = state.range(1);
  if (!select_isa(state, state.range(2))) return;
  Problem pr(t, d);
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> dout(pr.out.size()), dqkv(pr.qkv.size());
  for (float& x : dout) x = normal(rng);
  engine::AlibiAttentionParams p;
  p.batch = kBatch, p.seq = t, p.heads = kHeads, p.head_dim = d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.qkv = pr.qkv.data(), p.slopes = pr.slopes.data(), p.out = pr.out.data(), p.lse = pr.lse.data();
  if (const absl::Status s = engine::cpu::alibi_attention_forward(p); !s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return;
  }
  p.dout = dout.data(), p.dqkv = dqkv.data();
  for (auto _ : state) {
    benchmark::DoNotOptimize(engine::cpu::alibi_attention_backward(p));
    benchmark::ClobberMemory();
  }
  set_flops(state, t, d, kBackwardFlopRatio);
}

// Eager-style attention: per head, gather Q, K, V, S = Q K^T (BLAS), bias + mask + softmax over
// the full (T, T) matrix, O = P V (BLAS).
void BM_NaiveAttention(benchmark::State& state) {
  const int64_t t = state.range(0), d = state.range(1);
  Problem pr(t, d);
  std::vector<float> q(t * d), k(t * d), v(t * d), s(t * t), o(t * d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (auto _ : state) {
    for (int64_t h = 0; h < kHeads; ++h) {
      for (int64_t i = 0; i < t; ++i) {
        const float* row = pr.qkv.data() + (i * kHeads + h) * 3 * d;
        std::copy_n(row, d, q.data() + i * d);
        std::copy_n(row + d, d, k.data() + i * d);
        std::copy_n(row + 2 * d, d, v.data() + i * d);
      }
      engine::GemmParams g;
      g.transpose_b = true, g.m = t, g.n = t, g.k = d, g.alpha = scale;
      g.a = q.data(), g.lda = d, g.b = k.data(), g.ldb = d, g.c = s.data(), g.ldc = t;
      benchmark::DoNotOptimize(engine::cpu::gemm(g));
      for (int64_t i = 0; i < t; ++i) {
        float* row = s.data() + i * t;
        float mx = -INFINITY;
        for (int64_t j = 0; j < t; ++j) {
          row[j] = j <= i ? row[j] + pr.slopes[h] * j : -INFINITY;
          mx = std::max(mx, row[j]);
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < t; ++j) sum += row[j] = std::exp(row[j] - mx);
        for (int64_t j = 0; j < t; ++j) row[j] /= sum;
      }
      engine::GemmParams pv;
      pv.m = t, pv.n = d, pv.k = t;
      pv.a = s.data(), pv.lda = t, pv.b = v.data(), pv.ldb = d, pv.c = o.data(), pv.ldc = d;
      benchmark::DoNotOptimize(engine::cpu::gemm(pv));
    }
    benchmark::ClobberMemory();
  }
  set_flops(state, t, d);
}

void fused_args(benchmark::internal::Benchmark* b) {
  for (int64_t d : {64, 128}) {
    for (int64_t t : {128, 512, 2048, 4096}) {
      for (int64_t stats : {0, 1}) {
        for (int64_t isa : {0, 1}) b->Args({t, d, stats, isa});
      }
    }
  }
  b->ArgNames({"T", "D", "stats", "isa"});
}

void backward_args(benchmark::internal::Benchmark* b) {
  for (int64_t d : {64, 128}) {
    for (int64_t t : {128, 512, 2048, 4096}) {
      for (int64_t isa : {0, 1}) b->Args({t, d, isa});
    }
  }
  b->ArgNames({"T", "D", "isa"});
}

void naive_args(benchmark::internal::Benchmark* b) {
  for (int64_t d : {64, 128}) {
    for (int64_t t : {128, 512, 2048}) b->Args({t, d});
  }
  b->ArgNames({"T", "D"});
}

BENCHMARK(BM_FusedAttention)->Apply(fused_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_FusedAttentionBackward)->Apply(backward_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_NaiveAttention)->Apply(naive_args)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
