// Tensor-core ALiBi attention on CUDA (bf16 storage, causal): forward with and without the
// per-head statistics, and backward, at B * T = 16k tokens, T in {512, 2048, 8192}, head_dim in
// {64, 80, 96, 128}, 16 heads. Times come from CUDA events around each call (manual time);
// the TFLOP/s counter counts causal work: forward 4 B H T^2 D / 2, backward 2.5 x forward.
// Without a CUDA device (or in a build without CUDA) every benchmark reports a skip.
#include <benchmark/benchmark.h>

#ifdef ENGINE_HAVE_CUDA

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/device.h"
#include "kernels/cuda/attention.h"

namespace engine {
namespace {

constexpr int64_t kTokens = 16 * 1024;
constexpr int64_t kHeads = 16;
constexpr double kBackwardWork = 2.5;

// Device buffers for one shape, filled with small bf16 values (0x3c00 = 2^-7 in bf16; the values
// do not change the work done, and constant inputs keep setup cheap).
struct Buffers {
  void* qkv = nullptr;
  void* out = nullptr;
  void* dout = nullptr;
  void* dqkv = nullptr;
  float* lse = nullptr;
  float* slopes = nullptr;
  double* stats = nullptr;  // bos, entropy, local: 3 x (B, H)
  bool ok = true;
  Buffers(int64_t b, int64_t t, int64_t d) {
    const size_t qkv_bytes = static_cast<size_t>(b * t * 3 * kHeads * d) * 2;
    const size_t out_bytes = static_cast<size_t>(b * t * kHeads * d) * 2;
    ok = cudaMalloc(&qkv, qkv_bytes) == cudaSuccess && cudaMalloc(&out, out_bytes) == cudaSuccess &&
         cudaMalloc(&dout, out_bytes) == cudaSuccess && cudaMalloc(&dqkv, qkv_bytes) == cudaSuccess &&
         cudaMalloc(&lse, b * kHeads * t * sizeof(float)) == cudaSuccess &&
         cudaMalloc(&slopes, kHeads * sizeof(float)) == cudaSuccess &&
         cudaMalloc(&stats, 3 * b * kHeads * sizeof(double)) == cudaSuccess;
    if (!ok) return;
    constexpr int kSmallBf16Byte = 0x3c;
    cudaMemset(qkv, kSmallBf16Byte, qkv_bytes);
    cudaMemset(dout, kSmallBf16Byte, out_bytes);
    cudaMemset(stats, 0, 3 * b * kHeads * sizeof(double));
    std::vector<float> s(kHeads);
    for (int64_t h = 0; h < kHeads; ++h) s[h] = std::pow(2.0f, -8.0f * (h + 1) / kHeads);
    cudaMemcpy(slopes, s.data(), s.size() * sizeof(float), cudaMemcpyHostToDevice);
  }
  ~Buffers() {
    for (void* p : {qkv, out, dout, dqkv, static_cast<void*>(lse), static_cast<void*>(slopes),
                    static_cast<void*>(stats)}) {
      cudaFree(p);
    }
  }
};

void run(benchmark::State& state, bool backward) {
  if (cuda_device_count() == 0) {
    state.SkipWithError("no CUDA device visible");
    return;
  }
  const int64_t t = state.range(0), d = state.range(1);
  const bool stats = !backward && state.range(2) != 0;
  const int64_t b = kTokens / t;
  Buffers buf(b, t, d);
  if (!buf.ok) {
    state.SkipWithError("cudaMalloc failed");
    return;
  }
  cuda::AttentionParams p;
  p.storage = cuda::StorageType::kBF16;
  p.batch = b, p.seq = t, p.heads = kHeads, p.head_dim = d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.qkv = buf.qkv, p.slopes = buf.slopes, p.out = buf.out, p.lse = buf.lse;
  if (stats) p.stats = {buf.stats, buf.stats + b * kHeads, buf.stats + 2 * b * kHeads, nullptr};
  p.dout = buf.dout, p.dqkv = buf.dqkv;
  // The backward reads the forward's out and lse.
  if (absl::Status s = cuda::attention_forward(p); !s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return;
  }
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  double total_seconds = 0.0;
  for (auto _ : state) {
    cudaEventRecord(start);
    const absl::Status s = backward ? cuda::attention_backward(p) : cuda::attention_forward(p);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    if (!s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      break;
    }
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms * 1e-3);
    total_seconds += ms * 1e-3;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  const double forward_flops = 4.0 * b * kHeads * static_cast<double>(t) * t * d / 2.0;
  const double flops = backward ? kBackwardWork * forward_flops : forward_flops;
  if (total_seconds > 0.0) {
    state.counters["TFLOP/s"] = flops * state.iterations() / total_seconds * 1e-12;
  }
}

void BM_AttentionForwardBf16(benchmark::State& state) { run(state, false); }
void BM_AttentionBackwardBf16(benchmark::State& state) { run(state, true); }

BENCHMARK(BM_AttentionForwardBf16)
    ->ArgNames({"T", "D", "stats"})
    ->ArgsProduct({{512, 2048, 8192}, {64, 80, 96, 128}, {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AttentionBackwardBf16)
    ->ArgNames({"T", "D", "stats"})
    ->ArgsProduct({{512, 2048, 8192}, {64, 80, 96, 128}, {0}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace engine

#endif  // ENGINE_HAVE_CUDA
