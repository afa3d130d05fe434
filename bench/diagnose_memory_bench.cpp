// Memory of a diagnosis scan (surgery/corpus_scan.h) on a bloom-560m-shaped model with random
// weights: one run of diagnose_sequences over `batch` random sequences of `seq` tokens, reporting
// the process's peak resident memory against the size of the weights.
// The claim it checks (docs/DIAGNOSE.md): memory grows with batch x heads x seq plus the
// activations (rows x hidden), never with seq^2, so at T = 4096 the peak stays under the weights
// plus 1 GB. A (T, T) float matrix per head would be 64 MB per head at T = 4096, 1 GB for the 16
// heads of one layer.
// Peak memory is per process and only grows, so run ONE benchmark per process:
// scripts/measure_diagnose_memory.sh does that and checks the bound.
#include <sys/resource.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "model/config.h"
#include "model/model_directory.h"
#include "surgery/corpus_scan.h"

namespace {

// bloom-560m (METHOD.md section 1).
constexpr int64_t kVocab = 250880, kHidden = 1024, kLayers = 24, kHeads = 16;
// Uniform weights in [-a, a] with the variance of N(0, 0.02^2), transformers' BLOOM init.
constexpr float kInitHalfWidth = 0.0346f;
constexpr double kMiB = 1024.0 * 1024.0;

int64_t peak_rss_bytes() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  constexpr int64_t kKiB = 1024;  // Linux reports ru_maxrss in KiB
  return static_cast<int64_t>(u.ru_maxrss) * kKiB;
}

// SplitMix64: a cheap, seeded, reproducible stream (half a billion draws for the weights).
uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

float unit_uniform(uint64_t& state) {  // in [0, 1)
  constexpr int kMantissaBits = 24;
  return static_cast<float>(splitmix(state) >> (64 - kMantissaBits)) / (1 << kMantissaBits);
}

engine::BloomModel random_model() {
  engine::BloomConfig c;
  c.vocab_size = kVocab;
  c.hidden_size = kHidden;
  c.n_layer = kLayers;
  c.n_head = kHeads;
  absl::StatusOr<engine::BloomModel> m = engine::allocate_bloom_model(c);
  if (!m.ok()) {
    std::fprintf(stderr, "diagnose_memory_bench: %s\n", std::string(m.status().message()).c_str());
    std::exit(1);
  }
  uint64_t state = 1234;
  for (const engine::ParameterInfo& p : m->arena.parameters()) {
    float* data = reinterpret_cast<float*>(m->arena.base()) + p.offset;
    const bool is_layernorm = p.name.find("layernorm") != std::string::npos ||
                              p.name.find("ln_f") != std::string::npos;
    const bool is_bias = p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0;
    for (int64_t i = 0; i < p.numel; ++i) {
      if (is_bias) {
        data[i] = 0.0f;
      } else if (is_layernorm) {
        data[i] = 1.0f;
      } else {
        data[i] = (2.0f * unit_uniform(state) - 1.0f) * kInitHalfWidth;
      }
    }
  }
  return std::move(*m);
}

void BM_DiagnoseMemory(benchmark::State& state) {
  const int64_t seq = state.range(0), batch = state.range(1);
  engine::BloomModel model = random_model();
  if (model.config.n_layer == 0) {
    state.SkipWithError("could not allocate the model");
    return;
  }
  const double weights = static_cast<double>(model.arena.size_bytes());
  const double after_load = static_cast<double>(peak_rss_bytes());
  uint64_t rng = 99;
  std::vector<engine::TokenSequence> seqs(batch, engine::TokenSequence(seq));
  for (engine::TokenSequence& s : seqs) {
    for (int32_t& id : s) id = static_cast<int32_t>(splitmix(rng) % kVocab);
  }
  std::unique_ptr<engine::Backend> backend = engine::make_cpu_backend();
  engine::DiagnoseOptions options;
  options.seq_len = seq;
  options.batch = batch;
  for (auto _ : state) {
    absl::StatusOr<engine::DiagnosisReport> r =
        engine::diagnose_sequences(model, *backend, seqs, options);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(r->heads.data());
  }
  const double peak = static_cast<double>(peak_rss_bytes());
  state.counters["weights_MiB"] = weights / kMiB;
  state.counters["rss_after_load_MiB"] = after_load / kMiB;
  state.counters["peak_rss_MiB"] = peak / kMiB;
  state.counters["peak_minus_weights_MiB"] = (peak - weights) / kMiB;
  state.counters["scan_growth_MiB"] = (peak - after_load) / kMiB;
}

BENCHMARK(BM_DiagnoseMemory)
    ->ArgNames({"seq", "batch"})
    ->Args({1024, 1})
    ->Args({4096, 1})
    ->Args({2048, 2})
    ->Iterations(1)
    ->Unit(benchmark::kSecond);

}  // namespace
