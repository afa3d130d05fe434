// Attention-statistics extraction through the whole BLOOM forward pass (model/bloom_forward.h):
// the fused attention's per-(layer, head) bos_mass / entropy / local_mass, with no LM head (no
// targets, no logits), against the same forward with the statistics off. This is the engine side
// of scripts/compare_forward_speed.py, which runs it in a child process to read its peak memory.
//
// Inputs (environment, so the binary also runs bare on a fixture model):
//   STATS_BENCH_MODEL  model directory (default: tests/fixtures/models/bloom-h4-l2)
//   STATS_BENCH_IDS    .jsonl whose first line holds "input_ids" (default: seeded random ids)
//   STATS_BENCH_SEQ    sequence length for the random ids (default 512)
//   STATS_BENCH_WARMUP 0 = no untimed forward before the timed ones (default: one)
// Counters: tokens/s; rss_after_load_MiB (resident memory once the model is loaded) and
// peak_rss_MiB (the process's resident peak from then on: the peak is reset after loading, on
// Linux, so that loading's own transient does not hide the forward's), whose difference is the
// extraction's own memory; and the means over (layer, head) of the three statistics, which the
// comparison script checks against transformers' values.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "engine/backend.h"
#include "model/bloom_forward.h"
#include "model/model_directory.h"
#include "nlohmann/json.hpp"

namespace {

constexpr int64_t kDefaultSeq = 512;
constexpr uint32_t kIdSeed = 1234;
constexpr double kKiBPerMiB = 1024.0;

// A "VmRSS:" / "VmHWM:" line of /proc/self/status in MiB; 0 where there is none.
double proc_status_mib(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::atof(line.c_str() + key.size()) / kKiBPerMiB;
  }
  return 0.0;
}

// Writing "5" to clear_refs resets the peak resident set size (VmHWM) to the current one.
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "stats_extract_bench: %s\n", what.c_str());
  std::exit(1);
}

struct Setup {
  engine::BloomModel model;
  std::vector<int32_t> ids;
  double rss_after_load_mib = 0.0;
};

const Setup& setup() {
  static const Setup s = [] {
    Setup r;
    const char* dir = std::getenv("STATS_BENCH_MODEL");
    auto model = engine::load_model_directory(
        dir ? std::string(dir) : std::string(ENGINE_SOURCE_DIR) + "/tests/fixtures/models/bloom-h4-l2");
    if (!model.ok()) fail(std::string(model.status().message()));
    r.model = std::move(*model);
    if (const char* path = std::getenv("STATS_BENCH_IDS")) {
      std::ifstream in(path);
      std::string line;
      if (!std::getline(in, line)) fail(std::string(path) + ": no first line");
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object() || !j.contains("input_ids") || !j["input_ids"].is_array()) {
        fail(std::string(path) + ": first line has no input_ids array");
      }
      for (const auto& id : j["input_ids"]) r.ids.push_back(id.get<int32_t>());
    } else {
      const char* seq = std::getenv("STATS_BENCH_SEQ");
      const int64_t t = seq ? std::atoll(seq) : kDefaultSeq;
      std::mt19937 rng(kIdSeed);
      std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(r.model.config.vocab_size) - 1);
      for (int64_t i = 0; i < t; ++i) r.ids.push_back(pick(rng));
    }
    r.rss_after_load_mib = proc_status_mib("VmRSS:");
    // One untimed forward (unless STATS_BENCH_WARMUP=0), so that every timed one runs warm
    // (thread pools started, the allocator's heap grown); the comparison script warms
    // transformers the same way. The peak is reset after it, before the timed passes.
    const char* warm = std::getenv("STATS_BENCH_WARMUP");
    if (warm == nullptr || std::string(warm) != "0") {
      std::unique_ptr<engine::Backend> backend = engine::make_cpu_backend();
      engine::ForwardInputs in;
      in.batch = 1, in.seq = static_cast<int64_t>(r.ids.size()), in.ids = r.ids.data();
      in.want_stats = true;
      auto result = engine::bloom_forward(r.model, *backend, in);
      if (!result.ok()) fail(std::string(result.status().message()));
    }
    return r;
  }();
  return s;
}

double mean(const std::vector<double>& v) {
  double sum = 0.0;
  for (double x : v) sum += x;
  return v.empty() ? 0.0 : sum / static_cast<double>(v.size());
}

void BM_ForwardStats(benchmark::State& state) {
  const bool stats = state.range(0) != 0;
  const Setup& s = setup();
  std::unique_ptr<engine::Backend> backend = engine::make_cpu_backend();
  engine::ForwardInputs in;
  in.batch = 1, in.seq = static_cast<int64_t>(s.ids.size()), in.ids = s.ids.data();
  in.want_stats = stats;
  engine::HeadStats last;
  reset_peak_rss();
  for (auto _ : state) {
    auto result = engine::bloom_forward(s.model, *backend, in);
    if (!result.ok()) {
      state.SkipWithError(std::string(result.status().message()).c_str());
      return;
    }
    last = std::move(result->stats);
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(in.seq),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.counters["rss_after_load_MiB"] = s.rss_after_load_mib;
  state.counters["peak_rss_MiB"] = proc_status_mib("VmHWM:");
  if (stats) {
    state.counters["bos_mass_mean"] = mean(last.bos_mass);
    state.counters["entropy_mean"] = mean(last.entropy);
    state.counters["local_mass_mean"] = mean(last.local_mass);
  }
}

BENCHMARK(BM_ForwardStats)->ArgName("stats")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)
    ->UseRealTime()->MeasureProcessCPUTime();

}  // namespace
