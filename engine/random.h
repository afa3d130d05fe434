// Counter-based random numbers: every draw is a pure function of (stream, counter), so results do
// not depend on thread count, iteration order or what else was drawn (DESIGN.md, Note [surgery
// randomness]). SplitMix64's finaliser mixes; 53 bits make a double.
#pragma once

#include <cmath>
#include <cstdint>

namespace engine {

inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A stream id from a seed and two coordinates (e.g. layer and head, or parameter index and 0).
inline uint64_t random_stream(uint64_t seed, uint64_t a, uint64_t b) {
  return mix64(seed ^ mix64(a << 32 | (b & 0xffffffffull)));
}

// Uniform in (0, 1): 53 random bits, offset by half a step so 0 is never returned (log-safe).
inline double unit_uniform(uint64_t bits) {
  constexpr double kStep = 1.0 / 9007199254740992.0;  // 2^-53
  return (static_cast<double>(bits >> 11) + 0.5) * kStep;
}

// Draw i of a stream, uniform in (0, 1).
inline double uniform_at(uint64_t stream, uint64_t i) { return unit_uniform(mix64(stream + i)); }

// Draw i of a stream, standard normal (Box-Muller on two independent counter draws).
inline double normal_at(uint64_t stream, uint64_t i) {
  constexpr double kTwoPi = 6.283185307179586;
  const double u1 = unit_uniform(mix64(stream + 2 * i));
  const double u2 = unit_uniform(mix64(stream + 2 * i + 1));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2);
}

}  // namespace engine
