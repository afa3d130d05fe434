// CPU GEMM throughput through the backend interface (the BLAS the engine links), GFLOP/s.
#include <vector>

#include <benchmark/benchmark.h>

#include "kernels/cpu/ops.h"

namespace {

void BM_CpuGemm(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  std::vector<float> a(m * k, 0.5f), b(k * n, 0.25f), c(m * n);
  engine::GemmParams p;
  p.m = m; p.n = n; p.k = k;
  p.a = a.data(); p.lda = k;
  p.b = b.data(); p.ldb = n;
  p.c = c.data(); p.ldc = n;
  for (auto _ : state) {
    benchmark::DoNotOptimize(engine::cpu::gemm(p));
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_CpuGemm)->Args({2048, 512, 512})->Args({512, 4096, 1024})->UseRealTime();

}  // namespace
