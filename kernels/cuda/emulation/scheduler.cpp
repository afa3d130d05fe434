// Blocks on OS threads, CUDA threads as fibers, barriers and warp collectives as rendezvous
// points (contract: emulator.h). Fibers are Boost.Context's fcontext: a stack and a saved register
// set, switched in a few nanoseconds. Under AddressSanitizer every switch is announced with the
// sanitizer's fiber API, so stack use and fake stacks stay correct.
//
// Scheduling: each OS thread runs one block at a time. Its fibers sit in a ready queue; the
// scheduler resumes the first ready fiber, which runs until it waits (barrier, collective) or
// ends. The last arrival at a barrier or collective completes it for everyone and carries on, so
// a block's threads interleave only where CUDA orders them: code that needs a barrier it does not
// have reads shared data its peers have not written yet, and fails here as it would on hardware.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/emulation/block_state.h"
#include "kernels/cuda/emulation/include/cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#define ENGINE_EMULATION_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ENGINE_EMULATION_ASAN 1
#endif
#endif
#ifdef ENGINE_EMULATION_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace engine::cuda::emulation {

thread_local ThreadState* current_thread = nullptr;

namespace {

// A fiber's stack: kernels keep fragments and accumulators in locals (a few KiB); sanitizer
// builds add redzones around every local. One guard page below each stack turns an overflow into
// a fault instead of silent corruption.
#ifdef ENGINE_EMULATION_ASAN
constexpr size_t kStackBytes = 512 * 1024;
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif


std::string kernel_name_from(const char* pretty) {
  if (pretty == nullptr) return "kernel";
  const std::string text(pretty);
  const size_t at = text.find("Kernel = ");
  if (at == std::string::npos) return text;
  const size_t begin = at + 9;
  size_t end = text.find(';', begin);
  if (end == std::string::npos) end = text.rfind(']');
  return text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

std::string dims(const Uint3& d) { return absl::StrCat("(", d.x, ",", d.y, ",", d.z, ")"); }

// One OS thread's fiber stacks, reused by every block it runs.
class StackPool {
 public:
  ~StackPool() {
    if (base_ != nullptr) munmap(base_, mapped_);
  }
  // Stack i of at least `count`; its usable bytes are [bottom, bottom + kStackBytes).
  char* bottom(int i) const { return base_ + static_cast<size_t>(i) * slot_ + page_; }
  bool reserve(int count) {
    if (count <= count_) return true;
    if (base_ != nullptr) munmap(base_, mapped_);
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    slot_ = kStackBytes + page_;
    mapped_ = slot_ * static_cast<size_t>(count);
    void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      base_ = nullptr, count_ = 0;
      return false;
    }
    base_ = static_cast<char*>(p);
    for (int i = 0; i < count; ++i)
      mprotect(base_ + static_cast<size_t>(i) * slot_, page_, PROT_NONE);
    count_ = count;
    return true;
  }

 private:
  char* base_ = nullptr;
  size_t mapped_ = 0, slot_ = 0, page_ = 4096;
  int count_ = 0;
};

thread_local StackPool stack_pool;

// Thrown by fail_block through the failing thread's kernel frames to its fiber's entry, so that
// what those frames own (the error text itself, for one) is destroyed. The block's other fibers
// are suspended at a barrier or collective, where nothing they own is on the heap.
struct FiberUnwind {};

void fiber_entry(fctx::transfer_t t);

}  // namespace

// ---- fiber switches ---------------------------------------------------------------------------

void switch_to_scheduler(ThreadState* self, bool final) {
  BlockState& b = *self->block;
#ifdef ENGINE_EMULATION_ASAN
  __sanitizer_start_switch_fiber(final ? nullptr : &self->fake_stack, b.scheduler_stack_bottom,
                                 b.scheduler_stack_size);
#endif
  fctx::transfer_t t = fctx::jump_fcontext(b.scheduler, self);
  // Resumed by run_fiber.
  b.scheduler = t.fctx;
#ifdef ENGINE_EMULATION_ASAN
  __sanitizer_finish_switch_fiber(self->fake_stack, &b.scheduler_stack_bottom,
                                  &b.scheduler_stack_size);
#endif
}

namespace {

void run_fiber(BlockState& b, ThreadState* f) {
  current_thread = f;
#ifdef ENGINE_EMULATION_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, f->stack_bottom, kStackBytes);
#endif
  fctx::transfer_t t = fctx::jump_fcontext(f->context, f);
#ifdef ENGINE_EMULATION_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  f->context = t.fctx;
  current_thread = nullptr;
  (void)b;
}

}  // namespace

void make_ready(BlockState& b, ThreadState& t) {
  t.state = FiberState::kReady;
  b.ready.push_back(t.linear);
}

[[noreturn]] void fail_block(ThreadState* self, const std::string& what) {
  BlockState& b = *self->block;
  if (!b.failed) {
    b.failed = true;
    b.error = absl::StrCat("kernel ", b.launch->kernel_name, ": block ", dims(b.block_idx),
                           " thread ", dims(self->thread_idx), ": ", what);
  }
  self->state = FiberState::kAbandoned;
  throw FiberUnwind{};
}

ThreadState* device_thread(const char* what) {
  ThreadState* self = current_thread;
  if (self == nullptr) {
    std::fprintf(stderr, "cuda emulation: %s called outside a kernel\n", what);
    std::abort();
  }
  return self;
}

namespace {

void thread_exit(ThreadState* self) {
  BlockState& b = *self->block;
  WarpState& w = b.warps[self->warp];
  w.exited |= 1u << self->lane;
  for (const PendingGroup& g : w.pending) {
    if ((g.mask >> self->lane & 1u) != 0) {
      fail_block(self, absl::StrCat("exited while lanes ", mask_text(g.arrived), " of warp ",
                                    self->warp, " wait for it at ", collective_name(g.kind),
                                    " with mask ", mask_text(g.mask)));
    }
  }
  if (b.at_barrier > 0) {
    fail_block(self, absl::StrCat("exited while ", b.at_barrier,
                                  " threads of the block wait at __syncthreads"));
  }
  ++b.exited_before_barrier;
  ++b.finished;
  self->state = FiberState::kDone;
}

void fiber_entry(fctx::transfer_t t) {
  ThreadState* self = static_cast<ThreadState*>(t.data);
  BlockState& b = *self->block;
  b.scheduler = t.fctx;
#ifdef ENGINE_EMULATION_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.scheduler_stack_bottom, &b.scheduler_stack_size);
#endif
  try {
    b.launch->body();
    thread_exit(self);
  } catch (const FiberUnwind&) {
    // fail_block recorded the error.
  }
  switch_to_scheduler(self, true);
  std::abort();  // a finished fiber is never resumed
}

std::string describe_deadlock(const BlockState& b) {
  std::string text = absl::StrCat("deadlock: ", b.launch->threads_per_block - b.finished,
                                  " threads wait and none can run (", b.at_barrier,
                                  " at __syncthreads, ", b.finished, " finished");
  for (size_t wi = 0; wi < b.warps.size(); ++wi) {
    for (const PendingGroup& g : b.warps[wi].pending) {
      absl::StrAppend(&text, "; warp ", wi, ": lanes ", mask_text(g.arrived), " at ",
                      collective_name(g.kind), " with mask ", mask_text(g.mask));
    }
  }
  absl::StrAppend(&text, ")");
  return text;
}

void run_block(BlockState& b, const LaunchState& launch, unsigned long long index) {
  const LaunchConfig& c = launch.config;
  b.launch = &launch;
  b.block_idx = Uint3{
      static_cast<unsigned>(index % c.grid.x), static_cast<unsigned>(index / c.grid.x % c.grid.y),
      static_cast<unsigned>(index / (static_cast<unsigned long long>(c.grid.x) * c.grid.y))};
  const unsigned n = launch.threads_per_block;
  b.threads.assign(n, ThreadState{});
  b.warps.assign((n + kWarpLanes - 1) / kWarpLanes, WarpState{});
  b.ready.clear();
  b.ready_head = 0;
  b.finished = b.exited_before_barrier = b.at_barrier = 0;
  b.failed = false;
  b.error.clear();
  for (unsigned i = 0; i < n; ++i) {
    ThreadState& t = b.threads[i];
    t.thread_idx = Uint3{i % c.block.x, i / c.block.x % c.block.y, i / (c.block.x * c.block.y)};
    t.linear = static_cast<int>(i);
    t.warp = static_cast<int>(i / kWarpLanes);
    t.lane = static_cast<int>(i % kWarpLanes);
    t.block = &b;
    t.stack_bottom = stack_pool.bottom(static_cast<int>(i));
    t.context = fctx::make_fcontext(t.stack_bottom + kStackBytes, kStackBytes, fiber_entry);
    b.warps[t.warp].launched |= 1u << t.lane;
    b.ready.push_back(static_cast<int>(i));
  }
  // Shared memory of exactly the launch's size (a sanitizer build sees overruns), filled with a
  // NaN pattern so that reading it before writing it shows.
  std::unique_ptr<unsigned char[]> shared;
  if (c.dynamic_shared_bytes > 0) {
    shared.reset(new (std::align_val_t(16)) unsigned char[c.dynamic_shared_bytes]);
    std::memset(shared.get(), 0xff, c.dynamic_shared_bytes);
  }
  b.shared = shared.get();
  while (b.ready_head < b.ready.size() && !b.failed) {
    ThreadState* f = &b.threads[b.ready[b.ready_head++]];
    run_fiber(b, f);
    if (b.ready_head > 4096 && b.ready_head * 2 > b.ready.size()) {
      b.ready.erase(b.ready.begin(), b.ready.begin() + static_cast<std::ptrdiff_t>(b.ready_head));
      b.ready_head = 0;
    }
  }
  if (!b.failed && b.finished != static_cast<int>(n)) {
    b.failed = true;
    b.error = absl::StrCat("kernel ", launch.kernel_name, ": block ", dims(b.block_idx), ": ",
                           describe_deadlock(b));
  }
#ifdef ENGINE_EMULATION_ASAN
  if (b.failed) {  // abandoned fibers left their frames' redzones poisoned
    for (ThreadState& t : b.threads) {
      if (t.state != FiberState::kDone) ASAN_UNPOISON_MEMORY_REGION(t.stack_bottom, kStackBytes);
    }
  }
#endif
  // new[] with an alignment needs the matching delete[].
  ::operator delete[](shared.release(), std::align_val_t(16));
  b.shared = nullptr;
}

// ---- the pool of OS threads ---------------------------------------------------------------------

class BlockPool {
 public:
  static BlockPool& instance() {
    static BlockPool* pool = new BlockPool();  // never destroyed: workers outlive static teardown
    return *pool;
  }

  // Runs every block of `launch`; returns the error of the lowest failing block, or "".
  std::string run(const LaunchState& launch) {
    std::lock_guard<std::mutex> serial(launch_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      launch_ = &launch;
      next_.store(0);
      first_error_block_ = ~0ull;
      first_error_.clear();
      active_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    work();  // the calling thread runs blocks too
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return active_ == 0; });
    launch_ = nullptr;
    return first_error_;
  }

 private:
  BlockPool() {
    int threads = static_cast<int>(std::thread::hardware_concurrency());
    if (const char* env = std::getenv("ENGINE_CUDA_EMULATION_THREADS")) threads = std::atoi(env);
    threads = std::max(1, threads);
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker(); });
    for (std::thread& t : workers_) t.detach();
  }

  void worker() {
    unsigned long long seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
      }
      work();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--active_ == 0) done_.notify_all();
    }
  }

  void work() {
    const LaunchState& launch = *launch_;
    if (!stack_pool.reserve(static_cast<int>(launch.threads_per_block))) {
      record_failure(0, "cannot map fiber stacks");
      return;
    }
    thread_local BlockState block;
    for (;;) {
      const unsigned long long index = next_.fetch_add(1);
      if (index >= launch.blocks) return;
      run_block(block, launch, index);
      if (block.failed) {
        record_failure(index, block.error);
        next_.store(launch.blocks);  // stop handing out blocks
      }
    }
  }

  void record_failure(unsigned long long index, const std::string& error) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (index < first_error_block_) {
      first_error_block_ = index;
      first_error_ = error;
    }
  }

  std::mutex launch_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const LaunchState* launch_ = nullptr;
  std::atomic<unsigned long long> next_{0};
  unsigned long long generation_ = 0;
  int active_ = 0;
  unsigned long long first_error_block_ = ~0ull;
  std::string first_error_;
};

}  // namespace

// ---- the interface of emulator.h ----------------------------------------------------------------

int launch(const LaunchConfig& config, ThreadBody body) {
  LaunchState launch;
  launch.config = config;
  launch.body = body;
  launch.kernel_name = kernel_name_from(config.name);
  const Uint3 g = config.grid, k = config.block;
  const unsigned long long threads = static_cast<unsigned long long>(k.x) * k.y * k.z;
  if (k.x == 0 || k.y == 0 || k.z == 0 || k.x > kMaxBlockDim[0] || k.y > kMaxBlockDim[1] ||
      k.z > kMaxBlockDim[2] || threads > kMaxThreadsPerBlock) {
    return record_error(cudaErrorInvalidConfiguration,
                        absl::StrCat("cudaErrorInvalidConfiguration: kernel ", launch.kernel_name,
                                     ": block ", dims(k), " (at most ", kMaxThreadsPerBlock,
                                     " threads, (1024, 1024, 64) per dimension)"));
  }
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > kMaxGridDim[0] || g.y > kMaxGridDim[1] ||
      g.z > kMaxGridDim[2]) {
    return record_error(cudaErrorInvalidConfiguration,
                        absl::StrCat("cudaErrorInvalidConfiguration: kernel ", launch.kernel_name,
                                     ": grid ", dims(g)));
  }
  const size_t allowed =
      std::max(kDefaultDynamicSharedBytes, max_dynamic_shared_bytes(config.function));
  if (config.dynamic_shared_bytes > allowed) {
    return record_error(
        cudaErrorInvalidValue,
        absl::StrCat("cudaErrorInvalidValue: kernel ", launch.kernel_name, ": ",
                     config.dynamic_shared_bytes, " bytes of dynamic shared memory, above the ",
                     allowed, " allowed",
                     config.dynamic_shared_bytes <= kMaxSharedBytesOptIn
                         ? " (raise it with cudaFuncSetAttribute)"
                         : absl::StrCat(" (the device's limit is ", kMaxSharedBytesOptIn, ")")));
  }
  launch.threads_per_block = static_cast<unsigned>(threads);
  launch.blocks = static_cast<unsigned long long>(g.x) * g.y * g.z;
  if (current_thread != nullptr) {
    return record_error(cudaErrorLaunchFailure,
                        absl::StrCat("cudaErrorLaunchFailure: kernel ", launch.kernel_name,
                                     " launched from device code (not emulated)"));
  }
  const std::string error = BlockPool::instance().run(launch);
  if (!error.empty()) {
    return record_error(cudaErrorLaunchFailure, absl::StrCat("cudaErrorLaunchFailure: ", error));
  }
  return cudaSuccess;
}

int bad_kernel_argument(const LaunchConfig& config, int index) {
  return record_error(cudaErrorInvalidValue,
                      absl::StrCat("cudaErrorInvalidValue: kernel ", kernel_name_from(config.name),
                                   ": pointer argument ", index,
                                   " is not device memory (a host pointer on the GPU is an "
                                   "illegal address)"));
}

const Uint3& thread_index() { return device_thread("threadIdx")->thread_idx; }
const Uint3& block_index() { return device_thread("blockIdx")->block->block_idx; }
const Uint3& block_dim() { return device_thread("blockDim")->block->launch->config.block; }
const Uint3& grid_dim() { return device_thread("gridDim")->block->launch->config.grid; }
void* dynamic_shared_memory() { return device_thread("dynamic shared memory")->block->shared; }

void block_barrier() {
  ThreadState* self = device_thread("__syncthreads");
  BlockState& b = *self->block;
  // Which __syncthreads is not compared: an optimising compiler duplicates one call into the
  // branches of a preceding `if`, so one source barrier has several addresses. A barrier that
  // some threads never reach still fails, as an exit or a deadlock.
  if (b.exited_before_barrier > 0) {
    fail_block(self, absl::StrCat("reached __syncthreads after ", b.exited_before_barrier,
                                  " threads of the block exited"));
  }
  if (++b.at_barrier == static_cast<int>(b.launch->threads_per_block)) {
    b.at_barrier = 0;
    for (ThreadState& t : b.threads) {
      if (t.state == FiberState::kAtBarrier) make_ready(b, t);
    }
    return;
  }
  self->state = FiberState::kAtBarrier;
  switch_to_scheduler(self, false);
}


void device_fault(const char* what) { fail_block(device_thread(what), what); }

}  // namespace engine::cuda::emulation
