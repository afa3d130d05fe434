// A random BLOOM-shaped model for the training-step benchmarks (train_step_bench.cpp,
// train_step_cuda_bench.cpp): every weight drawn from N(0, 0.02^2) (BLOOM's initializer_range)
// with a fixed seed, the layer-norm weights set to 1.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>

#include "model/model_directory.h"

namespace engine_bench {

inline engine::BloomModel random_bloom_model(int64_t vocab, int64_t hidden, int64_t layers,
                                             int64_t heads) {
  constexpr double kInitStd = 0.02;  // BLOOM's initializer_range
  engine::BloomConfig c;
  c.vocab_size = vocab, c.hidden_size = hidden, c.n_layer = layers, c.n_head = heads;
  absl::StatusOr<engine::BloomModel> m = engine::allocate_bloom_model(c);
  if (!m.ok()) std::abort();
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, static_cast<float>(kInitStd));
  for (const engine::ParameterInfo& p : m->arena.parameters()) {
    float* w = m->arena.view(p).as<float>();
    const bool layernorm_weight =
        p.name.find("layernorm.weight") != std::string::npos || p.name == "ln_f.weight";
    for (int64_t i = 0; i < p.numel; ++i) w[i] = layernorm_weight ? 1.0f : normal(rng);
  }
  return std::move(*m);
}

}  // namespace engine_bench
