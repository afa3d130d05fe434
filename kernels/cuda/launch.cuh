// Kernel launches and dynamic shared memory, the two places where a kernel source meets the
// machine that runs it. Every kernel in kernels/cuda is launched through launch_kernel and reads
// its dynamic shared memory through dynamic_shared, so the same sources build with nvcc (real
// launches, `extern __shared__`) and, with -DENGINE_CUDA_EMULATION=ON, with the host compiler
// against kernels/cuda/emulation (fibers on the CPU; docs/CUDA.md, "The emulator").
//
//   launch_kernel<my_kernel<float>>(grid, block, shared_bytes, stream, arg1, arg2);
//
// Arguments are converted to the kernel's parameter types at the call, as CUDA copies them at
// launch. Errors surface through cudaGetLastError, as after `<<<...>>>`: follow each launch with
// ENGINE_CUDA_LAUNCH_CHECK. Under the emulator a pointer argument that is not device memory is a
// launch error (on a GPU: an illegal address when the kernel dereferences it).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#if defined(ENGINE_CUDA_EMULATION)
#include "kernels/cuda/emulation/emulator.h"
#endif

namespace engine::cuda {

#if defined(ENGINE_CUDA_EMULATION)

namespace launch_detail {
template <typename... Params, typename... Args>
std::tuple<std::decay_t<Params>...> kernel_arguments(void (*)(Params...), Args&&... args) {
  return std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...);
}

// Index of the first non-null pointer argument outside device memory, or -1.
template <typename Tuple>
int first_host_pointer(const Tuple& arguments) {
  int bad = -1;
  int index = 0;
  std::apply(
      [&](const auto&... arg) {
        (
            [&] {
              if constexpr (std::is_pointer_v<std::decay_t<decltype(arg)>>) {
                if (bad < 0 && arg != nullptr && !emulation::is_device_pointer(arg)) bad = index;
              }
              ++index;
            }(),
            ...);
      },
      arguments);
  return bad;
}
}  // namespace launch_detail

template <auto Kernel, typename... Args>
void launch_kernel(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   Args&&... args) {
  (void)stream;  // emulated streams are synchronous
  const auto arguments = launch_detail::kernel_arguments(Kernel, std::forward<Args>(args)...);
  using Arguments = std::remove_const_t<decltype(arguments)>;
  emulation::LaunchConfig config;
  config.name = __PRETTY_FUNCTION__;  // "... [with auto Kernel = <name>; ...]"
  config.function = reinterpret_cast<const void*>(Kernel);
  config.grid = {grid.x, grid.y, grid.z};
  config.block = {block.x, block.y, block.z};
  config.dynamic_shared_bytes = shared_bytes;
  if (const int bad = launch_detail::first_host_pointer(arguments); bad >= 0) {
    emulation::bad_kernel_argument(config, bad);
    return;
  }
  // Each CUDA thread calls the kernel with its own copy of the arguments.
  emulation::ThreadBody body;
  body.state = &arguments;
  body.invoke = [](const void* state) {
    std::apply(Kernel, *static_cast<const Arguments*>(state));
  };
  emulation::launch(config, body);
}

template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  return static_cast<T*>(emulation::dynamic_shared_memory());
}

#else

template <auto Kernel, typename... Args>
void launch_kernel(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   Args&&... args) {
  // clang-format off
  Kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  // clang-format on
}

// One extern array for every kernel (of one type, so the declarations agree); 16-byte aligned.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ uint4 engine_dynamic_shared[];
  return reinterpret_cast<T*>(engine_dynamic_shared);
}

#endif

}  // namespace engine::cuda
