// Tokenizer throughput (MB/s of UTF-8 input) on a few MB of mixed text.
// The text is the file named by the environment variable TOKENIZER_BENCH_TEXT (the side-by-side
// script scripts/compare_tokenizer_speed.py writes one and runs `tokenizers` on the same file),
// or else tests/fixtures/tokenizer/sample.txt repeated to kDefaultBytes. The tokenizer is
// TOKENIZER_BENCH_JSON or the fixture tokenizer.json.
//   BM_EncodeFreshCache: every pass starts with an empty per-piece cache (a new Tokenizer copy),
//                        the cost of tokenizing text once.
//   BM_EncodeWarmCache:  one Tokenizer reused, so repeated pieces hit the cache.
//   BM_Decode:           ids back to bytes.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "model/tokenizer.h"

namespace {

constexpr size_t kDefaultBytes = size_t{4} << 20;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const std::string& text() {
  static const std::string t = [] {
    if (const char* p = std::getenv("TOKENIZER_BENCH_TEXT")) return read_file(p);
    const std::string unit = read_file(std::string(ENGINE_SOURCE_DIR) +
                                       "/tests/fixtures/tokenizer/sample.txt");
    std::string s;
    while (!unit.empty() && s.size() < kDefaultBytes) s += unit;
    return s;
  }();
  return t;
}

const engine::Tokenizer& tokenizer() {
  static const engine::Tokenizer t = [] {
    const char* p = std::getenv("TOKENIZER_BENCH_JSON");
    auto tok = engine::Tokenizer::load(
        p ? std::string(p) : std::string(ENGINE_SOURCE_DIR) + "/tests/fixtures/tokenizer/tokenizer.json");
    if (!tok.ok()) {
      std::fprintf(stderr, "tokenizer_bench: %s\n", std::string(tok.status().message()).c_str());
      std::exit(1);
    }
    return std::move(*tok);
  }();
  return t;
}

void BM_EncodeFreshCache(benchmark::State& state) {
  const std::string& t = text();
  size_t tokens = 0;
  for (auto _ : state) {
    engine::Tokenizer tok = tokenizer();  // a copy starts with an empty cache
    auto ids = tok.encode(t);
    if (!ids.ok()) state.SkipWithError("encode failed");
    tokens = ids->size();
    benchmark::DoNotOptimize(ids->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * t.size()));
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["bytes"] = static_cast<double>(t.size());
}
BENCHMARK(BM_EncodeFreshCache)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_EncodeWarmCache(benchmark::State& state) {
  const std::string& t = text();
  engine::Tokenizer tok = tokenizer();
  for (auto _ : state) {
    auto ids = tok.encode(t);
    if (!ids.ok()) state.SkipWithError("encode failed");
    benchmark::DoNotOptimize(ids->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * t.size()));
}
BENCHMARK(BM_EncodeWarmCache)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_Decode(benchmark::State& state) {
  const std::string& t = text();
  engine::Tokenizer tok = tokenizer();
  const std::vector<uint32_t> ids = *tok.encode(t);
  for (auto _ : state) {
    auto back = tok.decode(ids);
    benchmark::DoNotOptimize(back->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * t.size()));
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);

}  // namespace
