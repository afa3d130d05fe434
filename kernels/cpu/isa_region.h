// ENGINE_CPU_KERNELS_BEGIN / ENGINE_CPU_KERNELS_END: the brackets around the code of a kernel
// file that is built once per instruction set.
//
// Note [one source, one build per instruction set]
// CMakeLists.txt compiles each file of ENGINE_ISA_KERNEL_SOURCES twice, with
// ENGINE_CPU_ISA_AVX2 or ENGINE_CPU_ISA_AVX512 defined. Between the brackets:
//  - the code lives in namespace engine::cpu::avx2 or engine::cpu::avx512, so the two builds of
//    every function, and of every inline helper in vector_math.h, have different names and the
//    linker can never merge one into the other;
//  - in the AVX-512 build, every function is compiled for AVX-512 (GCC's target pragma, as
//    Highway and simdjson do), and vector_math.h's vectors are 64 bytes wide.
// Why a target region and not -march=x86-64-v4 for the whole file: a whole-file flag would also
// apply to the out-of-line copies of header templates the file instantiates (std::vector growth,
// std::fill_n, absl's inline functions). Those are weak symbols shared with every other object;
// the linker keeps one copy, and if it kept the AVX-512 one, baseline code on an AVX2-only CPU
// would execute AVX-512 instructions. Templates defined before the region (all includes come
// first) keep the baseline target wherever they are instantiated; they are still inlined into the
// AVX-512 code, which then compiles them for AVX-512.
// For the same reason no template defined outside a region may take or return a vector type
// (vector_math.h's FloatVec): in the AVX-512 build it would be compiled for the baseline, with
// another calling convention for 512-bit vectors than its caller (GCC warns: -Wpsabi).
// No namespace-scope object in a region may need a dynamic initialiser: it would run AVX-512
// code at program start-up, before any dispatch, on every CPU.
// Kernel files include only headers that are safe to include before the region; vector_math.h
// opens the region itself.
#pragma once

#if defined(ENGINE_CPU_ISA_AVX512)
#if defined(__clang__)
// Clang does not apply `#pragma clang attribute` target features to OpenMP parallel regions (it
// outlines them without the attribute and then refuses their 512-bit vector code), so clang
// builds (the fuzzing build) have the AVX2 build only: CMakeLists.txt leaves this one out.
#error "the AVX-512 kernel build needs GCC's target pragma (CMakeLists.txt: ENGINE_CPU_ISAS)"
#endif
// x86-64-v4's AVX-512 subsets: what cpu_supports(CpuIsa::kAvx512) checks.
#define ENGINE_CPU_KERNELS_BEGIN                                                     \
  _Pragma("GCC push_options")                                                        \
  _Pragma("GCC target(\"avx512f,avx512bw,avx512dq,avx512vl,avx512cd\")")             \
  namespace engine::cpu::avx512 {
#define ENGINE_CPU_KERNELS_END } _Pragma("GCC pop_options")
#define ENGINE_CPU_VECTOR_BYTES 64
#elif defined(ENGINE_CPU_ISA_AVX2)
// The library's baseline flags (-march=x86-64-v3) already give AVX2 + FMA.
#define ENGINE_CPU_KERNELS_BEGIN namespace engine::cpu::avx2 {
#define ENGINE_CPU_KERNELS_END }
#define ENGINE_CPU_VECTOR_BYTES 32
#else
#error "a per-instruction-set kernel file is compiled without ENGINE_CPU_ISA_AVX2/AVX512 (CMakeLists.txt: ENGINE_ISA_KERNEL_SOURCES)"
#endif
