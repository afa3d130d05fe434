// Internal to the emulator's scheduler.cpp (blocks, fibers, barriers) and warp.cpp (warp
// collectives, mma): the state of a running block, its threads and its warps, and the few
// functions both sides call. Not included by kernels.
#pragma once

#include <boost/context/detail/fcontext.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/emulation/emulator.h"
#include "kernels/cuda/emulation/emulator_internal.h"

namespace engine::cuda::emulation {

namespace fctx = boost::context::detail;

constexpr uint32_t kFullMask = 0xffffffffu;
constexpr int kMaxShuffleWidth = 32;

enum class FiberState { kReady, kAtBarrier, kInCollective, kDone, kAbandoned };

struct BlockState;

struct ThreadState {
  Uint3 thread_idx{0, 0, 0};
  int linear = 0, warp = 0, lane = 0;
  BlockState* block = nullptr;
  fctx::fcontext_t context = nullptr;  // where the fiber resumes
  FiberState state = FiberState::kReady;
  char* stack_bottom = nullptr;
  uint64_t result = 0;         // of the last collective
  float mma_d[4] = {};         // of the last mma
  void* fake_stack = nullptr;  // AddressSanitizer's, while switched out
};

// Lanes of one warp that wait at the same collective.
struct PendingGroup {
  Collective kind = Collective::kSyncWarp;
  uint32_t mask = 0, arrived = 0;
  int width = kMaxShuffleWidth;
};

struct WarpState {
  uint32_t launched = 0;  // lanes that exist (the last warp of a block may be partial)
  uint32_t exited = 0;
  std::vector<PendingGroup> pending;
  uint64_t value[kWarpLanes] = {};
  int arg[kWarpLanes] = {};
  // mma operands, per lane, in the PTX ISA's fragment layout.
  uint32_t a[kWarpLanes][4] = {};
  uint32_t b[kWarpLanes][2] = {};
  float c[kWarpLanes][4] = {};
  MmaInput input[kWarpLanes] = {};
};

struct LaunchState {
  LaunchConfig config;
  ThreadBody body;
  std::string kernel_name;
  unsigned threads_per_block = 0;
  unsigned long long blocks = 0;
};

struct BlockState {
  const LaunchState* launch = nullptr;
  Uint3 block_idx{0, 0, 0};
  std::vector<ThreadState> threads;
  std::vector<WarpState> warps;
  std::vector<int> ready;  // a FIFO: ready[ready_head..] are runnable
  size_t ready_head = 0;
  int finished = 0, exited_before_barrier = 0, at_barrier = 0;
  void* shared = nullptr;
  bool failed = false;
  std::string error;
  // The OS thread's own context while one of this block's fibers runs.
  fctx::fcontext_t scheduler = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
};

// The calling device thread (aborts with a message outside a kernel: a host-side misuse).
ThreadState* device_thread(const char* what);
// Ends the block with an error that names the kernel, block and thread; the calling fiber unwinds
// (an exception caught at its entry) and never runs again.
[[noreturn]] void fail_block(ThreadState* self, const std::string& what);
// Suspends the calling fiber until the scheduler resumes it; `final`: it never will.
void switch_to_scheduler(ThreadState* self, bool final);
// Queues a waiting thread to run again.
void make_ready(BlockState& b, ThreadState& t);

const char* collective_name(Collective kind);
std::string mask_text(uint32_t mask);

}  // namespace engine::cuda::emulation
