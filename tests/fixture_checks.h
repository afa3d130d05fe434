// Checks and helpers shared by the tests that hold the block graph to the transformers-made
// fixtures (tests/bloom_forward_test.cpp, tests/backward_test.cpp, tests/family_test.cpp).
// Header-only; the reference files themselves are read through tests/fixture_reference.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/frozen_mask.h"
#include "engine/tape.h"
#include "gtest/gtest.h"
#include "model/bloom_forward.h"
#include "tests/fixture_reference.h"

namespace engine::testing_fixtures {

// The inputs of a reference case for bloom_forward / bloom_forward_backward, the classifier in
// chunks of 96 vocabulary rows.
inline ForwardInputs inputs_of(const CaseData& d) {
  ForwardInputs in;
  in.batch = d.batch, in.seq = d.seq;
  in.ids = d.ids.data(), in.mask = d.mask.data(), in.targets = d.targets.data();
  in.vocab_chunk = 96;
  return in;
}

// A compact gradient over the trainable elements of `mask`.
inline CompactGradients compact_for(const FrozenMask& mask) {
  return CompactGradients(mask.words(), mask.elements());
}

// The compact gradient scattered back to arena layout (frozen elements 0).
inline std::vector<float> to_arena(const CompactGradients& g, int64_t elements) {
  std::vector<float> out(static_cast<size_t>(elements), 0.0f);
  for (int64_t i = 0; i < g.size(); ++i) out[g.arena_index(i)] = g.data()[i];
  return out;
}

// A forward's attention statistics against the reference's "<c>.bos_mass", "<c>.entropy" and
// "<c>.local_mass": the reference's are (B, L, H), ours (L, B, H); |err| <= tol for every batch
// row, layer and head.
inline void expect_stats_near(const Reference& ref, const std::string& c, const HeadStats& got,
                              int64_t batch, int64_t L, int64_t H, double tol) {
  const char* stat_names[] = {"bos_mass", "entropy", "local_mass"};
  const std::vector<double>* ours[] = {&got.bos_mass, &got.entropy, &got.local_mass};
  for (int k = 0; k < 3; ++k) {
    const std::vector<float> want = ref.get<float>(c + "." + stat_names[k]);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t h = 0; h < H; ++h) {
          EXPECT_NEAR(got.at(*ours[k], l, b, h), want[(b * L + l) * H + h], tol)
              << stat_names[k] << " b=" << b << " l=" << l << " h=" << h;
        }
      }
    }
  }
}

}  // namespace engine::testing_fixtures
