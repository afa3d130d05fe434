// Warp collectives and mma.sync for the emulator (contract: emulator.h): lanes arrive at a
// collective one by one (each a fiber of scheduler.cpp); the last lane of the mask to arrive
// computes every lane's result and wakes the others. Misuse - a mask without the calling lane,
// lanes of one mask at different collectives, an exited lane in the mask, a read from a lane
// outside the mask - fails the launch with the kernel named.
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/emulation/block_state.h"
#include "kernels/cuda/emulation/include/cuda_bf16.h"
#include "kernels/cuda/emulation/include/cuda_fp16.h"

namespace engine::cuda::emulation {

const char* collective_name(Collective kind) {
  switch (kind) {
    case Collective::kSyncWarp:
      return "__syncwarp";
    case Collective::kShuffleIndex:
      return "__shfl_sync";
    case Collective::kShuffleUp:
      return "__shfl_up_sync";
    case Collective::kShuffleDown:
      return "__shfl_down_sync";
    case Collective::kShuffleXor:
      return "__shfl_xor_sync";
    case Collective::kBallot:
      return "__ballot_sync";
    case Collective::kAny:
      return "__any_sync";
    case Collective::kAll:
      return "__all_sync";
    case Collective::kMma:
      return "mma.sync.m16n8k16";
  }
  return "?";
}

std::string mask_text(uint32_t mask) { return absl::StrFormat("0x%08x", mask); }

namespace {

// Lanes of `mask` that have exited; any is an error for a collective that names them.
void check_no_exited_lanes(ThreadState* self, const WarpState& w, const PendingGroup& g) {
  const uint32_t gone = g.mask & w.exited;
  if (gone != 0) {
    fail_block(self,
               absl::StrCat(collective_name(g.kind), " with mask ", mask_text(g.mask), " in warp ",
                            self->warp, ": lanes ", mask_text(gone), " of the mask have exited"));
  }
}

float mma_input_value(MmaInput input, uint16_t bits) {
  return input == MmaInput::kBF16 ? __bfloat162float(__ushort_as_bfloat16(bits))
                                  : __half2float(__ushort_as_half(bits));
}

uint16_t half_of(uint32_t reg, int which) {
  return static_cast<uint16_t>(which == 0 ? reg & 0xffffu : reg >> 16);
}

// D = A B + C for the warp, from the lanes' fragments (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"; g = lane / 4, t = lane % 4):
//   A (16 x 16): register r of lane holds row g + 8 (r & 1), columns 2t + 8 (r >> 1) + {0, 1}
//   B (16 x 8):  register r holds rows (k) 2t + 8 r + {0, 1}, column (n) g
//   C, D (16 x 8, fp32): element e holds row g + 8 (e >> 1), column 2t + (e & 1)
// Products of 16-bit inputs are exact in fp32; they are accumulated in fp32, in k order, onto C.
void complete_mma(BlockState& b, WarpState& w, int warp) {
  float A[16][16], B[16][8], C[16][8];
  const MmaInput input = w.input[0];
  for (int lane = 0; lane < kWarpLanes; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
      A[row][col] = mma_input_value(input, half_of(w.a[lane][r], 0));
      A[row][col + 1] = mma_input_value(input, half_of(w.a[lane][r], 1));
    }
    for (int r = 0; r < 2; ++r) {
      const int k = 2 * t + 8 * r;
      B[k][g] = mma_input_value(input, half_of(w.b[lane][r], 0));
      B[k + 1][g] = mma_input_value(input, half_of(w.b[lane][r], 1));
    }
    for (int e = 0; e < 4; ++e) C[g + 8 * (e >> 1)][2 * t + (e & 1)] = w.c[lane][e];
  }
  for (int lane = 0; lane < kWarpLanes; ++lane) {
    const int g = lane / 4, t = lane % 4;
    ThreadState& th = b.threads[warp * kWarpLanes + lane];
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
      float acc = C[row][col];
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
      th.mma_d[e] = acc;
    }
  }
}

// Computes every participating lane's result and wakes them (the caller keeps running).
void complete_group(ThreadState* self, WarpState& w, const PendingGroup& g) {
  BlockState& b = *self->block;
  const int warp = self->warp;
  if (g.kind == Collective::kMma) {
    for (int lane = 1; lane < kWarpLanes; ++lane) {
      if (w.input[lane] != w.input[0]) {
        fail_block(self, "mma.sync: lanes of one warp disagree on the input type (bf16 / f16)");
      }
    }
    complete_mma(b, w, warp);
  } else {
    uint32_t votes = 0;
    for (int lane = 0; lane < kWarpLanes; ++lane) {
      if ((g.mask >> lane & 1u) != 0 && w.value[lane] != 0) votes |= 1u << lane;
    }
    for (int lane = 0; lane < kWarpLanes; ++lane) {
      if ((g.mask >> lane & 1u) == 0) continue;
      ThreadState& th = b.threads[warp * kWarpLanes + lane];
      const int segment = lane & ~(g.width - 1);
      int src = lane;
      const int arg = w.arg[lane];
      switch (g.kind) {
        case Collective::kShuffleIndex:
          src = segment + (arg & (g.width - 1));
          break;
        case Collective::kShuffleUp:
          src = lane - arg < segment ? lane : lane - arg;
          break;
        case Collective::kShuffleDown:
          src = lane + arg >= segment + g.width ? lane : lane + arg;
          break;
        case Collective::kShuffleXor: {
          const int x = lane ^ arg;
          src = x >= segment + g.width || x >= kWarpLanes ? lane : x;
          break;
        }
        default:
          break;
      }
      if ((g.mask >> src & 1u) == 0) {
        fail_block(self, absl::StrCat(collective_name(g.kind), " in warp ", warp, ": lane ", lane,
                                      " reads lane ", src, ", which is not in the mask ",
                                      mask_text(g.mask)));
      }
      switch (g.kind) {
        case Collective::kBallot:
          th.result = votes;
          break;
        case Collective::kAny:
          th.result = votes != 0;
          break;
        case Collective::kAll:
          th.result = votes == g.mask;
          break;
        case Collective::kSyncWarp:
          th.result = 0;
          break;
        default:
          th.result = w.value[src];
          break;
      }
    }
  }
  for (int lane = 0; lane < kWarpLanes; ++lane) {
    if ((g.mask >> lane & 1u) == 0 || lane == self->lane) continue;
    make_ready(b, b.threads[warp * kWarpLanes + lane]);
  }
}

// Arrival of the calling lane at a collective whose operands it has already stored in `w`.
void arrive(ThreadState* self, Collective kind, uint32_t mask, int width) {
  BlockState& b = *self->block;
  WarpState& w = b.warps[self->warp];
  const uint32_t bit = 1u << self->lane;
  if ((mask & bit) == 0) {
    fail_block(self, absl::StrCat(collective_name(kind), ": the mask ", mask_text(mask),
                                  " does not include the calling lane ", self->lane));
  }
  if ((mask & ~w.launched) != 0) {
    fail_block(self, absl::StrCat(collective_name(kind), ": the mask ", mask_text(mask),
                                  " names lanes that were not launched (block of ",
                                  b.launch->threads_per_block, " threads)"));
  }
  if (kind == Collective::kMma && mask != kFullMask) {
    fail_block(self, "mma.sync.aligned needs all 32 lanes of the warp");
  }
  if (width <= 0 || width > kMaxShuffleWidth || (width & (width - 1)) != 0) {
    fail_block(self, absl::StrCat(collective_name(kind), ": width ", width,
                                  " is not a power of two in [1, 32]"));
  }
  PendingGroup* group = nullptr;
  for (PendingGroup& g : w.pending) {
    if ((g.mask & mask) == 0) continue;
    if (g.mask != mask || g.kind != kind || g.width != width) {
      fail_block(
          self, absl::StrCat("warp ", self->warp, " diverged: lane ", self->lane, " reached ",
                             collective_name(kind), " with mask ", mask_text(mask), " while lanes ",
                             mask_text(g.arrived), " wait at ", collective_name(g.kind),
                             " with mask ", mask_text(g.mask)));
    }
    group = &g;
  }
  if (group == nullptr) {
    w.pending.push_back(PendingGroup{kind, mask, 0, width});
    group = &w.pending.back();
  }
  check_no_exited_lanes(self, w, *group);
  group->arrived |= bit;
  if (group->arrived == group->mask) {
    const PendingGroup done = *group;
    w.pending.erase(w.pending.begin() + (group - w.pending.data()));
    complete_group(self, w, done);
    return;
  }
  self->state = FiberState::kInCollective;
  switch_to_scheduler(self, false);
}

}  // namespace

uint64_t warp_collective(Collective kind, uint32_t mask, uint64_t value, int arg, int width) {
  ThreadState* self = device_thread(collective_name(kind));
  WarpState& w = self->block->warps[self->warp];
  w.value[self->lane] = value;
  w.arg[self->lane] = arg;
  arrive(self, kind, mask, width);
  return self->result;
}

void mma_m16n8k16(MmaInput input, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  ThreadState* self = device_thread("mma.sync");
  WarpState& w = self->block->warps[self->warp];
  const int lane = self->lane;
  for (int r = 0; r < 4; ++r) w.a[lane][r] = a[r];
  for (int r = 0; r < 2; ++r) w.b[lane][r] = b[r];
  for (int e = 0; e < 4; ++e) w.c[lane][e] = d[e];
  w.input[lane] = input;
  arrive(self, Collective::kMma, kFullMask, kMaxShuffleWidth);
  for (int e = 0; e < 4; ++e) d[e] = self->mma_d[e];
}

}  // namespace engine::cuda::emulation
