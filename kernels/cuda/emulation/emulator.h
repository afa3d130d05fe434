// The CUDA execution model on the host, for the emulation build (-DENGINE_CUDA_EMULATION=ON; the
// design and its limits: docs/CUDA.md, "The emulator"). The emulated headers in include/ map the
// device-side builtins (threadIdx, __syncthreads, warp collectives, mma) onto this interface;
// kernels/cuda/launch.cuh maps kernel launches onto launch().
//
// Execution: a launch runs its blocks on a pool of OS threads, one block at a time per OS thread.
// Every CUDA thread of a block is a fiber on that OS thread; a fiber runs until it reaches a
// barrier, a warp collective or its end, so `__shared__` data (thread_local storage) is per block,
// and the scheduling points are exactly the places where CUDA orders threads. A barrier or warp
// collective that cannot complete (a thread exited, lanes disagree, a deadlock) ends the launch
// with an error that names the kernel; the launch then fails as on hardware (cudaGetLastError).
#pragma once

#include <cstddef>
#include <cstdint>

struct dim3;
struct uint3;
typedef struct CUstream_st* cudaStream_t;

namespace engine::cuda::emulation {

struct Uint3 {
  unsigned x, y, z;
};

// One launch, as launch_kernel describes it. `name` is the text the kernel's name is parsed from
// (the launch helper's __PRETTY_FUNCTION__: "... Kernel = <name>; ..." or "... Kernel = <name>]").
struct LaunchConfig {
  const char* name = nullptr;
  const void* function = nullptr;  // the kernel's address, for cudaFuncSetAttribute limits
  Uint3 grid{1, 1, 1}, block{1, 1, 1};
  size_t dynamic_shared_bytes = 0;
};

// A non-owning callable: what every fiber of the launch runs (the kernel with its arguments).
struct ThreadBody {
  void (*invoke)(const void* state) = nullptr;
  const void* state = nullptr;
  void operator()() const { invoke(state); }
};

// Records a launch error for a kernel argument that is not device memory; returns the error code.
int bad_kernel_argument(const LaunchConfig& config, int index);

// Runs the whole grid and returns when every block has finished (streams are synchronous in the
// emulator). Returns 0 on success, otherwise a cudaError_t value, recorded as the launch's error
// (cudaGetLastError; cudaGetErrorString gives its reason).
int launch(const LaunchConfig& config, ThreadBody body);

// Whether `p` points into (or one past the end of) a live device allocation. launch_kernel checks
// every pointer argument of a kernel with it: a host pointer handed to a kernel is a launch error
// here, where on a GPU it is an illegal address (pointers inside a params struct are not seen).
bool is_device_pointer(const void* p);


// ---- device-side builtins (valid only inside a kernel) ---------------------------------------

struct ThreadState;
extern thread_local ThreadState* current_thread;
const Uint3& thread_index();
const Uint3& block_index();
const Uint3& block_dim();
const Uint3& grid_dim();
// The block's dynamic shared memory (aligned to 16 bytes; filled with 0xff bytes, a NaN pattern,
// when the block starts, so a read before any write shows up in results).
void* dynamic_shared_memory();

// __syncthreads().
void block_barrier();

enum class Collective : uint8_t {
  kSyncWarp,
  kShuffleIndex,
  kShuffleUp,
  kShuffleDown,
  kShuffleXor,
  kBallot,
  kAny,
  kAll,
  kMma
};

// A warp collective over the lanes in `mask`; every lane of the mask must reach a collective of
// the same kind with the same mask. `value` is this lane's operand (shuffles: the bits of var;
// votes: the predicate), `arg` the shuffle's lane / delta / lane mask, `width` its segment width.
// Returns this lane's result bits.
uint64_t warp_collective(Collective kind, uint32_t mask, uint64_t value, int arg, int width);

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, D = A B + C in place of d:
// a collective of the full warp; each lane passes its fragments in the PTX ISA's layout.
enum class MmaInput : uint8_t { kBF16, kF16 };
void mma_m16n8k16(MmaInput input, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

// Ends the launch with an error (for checks made by emulated device functions).
[[noreturn]] void device_fault(const char* what);

}  // namespace engine::cuda::emulation
