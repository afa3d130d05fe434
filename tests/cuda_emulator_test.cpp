// The CUDA emulator's own contract (kernels/cuda/emulation; docs/CUDA.md, "The emulator"):
// barriers order shared memory; warp collectives follow CUDA's lane, width and mask rules;
// mma.sync assembles its tiles by the PTX ISA's fragment layout (and a wrong mapping gives a
// wrong product); 16-bit conversions round as the toolkit's headers do; launch limits and misuse
// are errors that name the kernel, never hangs. Emulation builds only; CTest label gpu.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mma.cuh"
#include "tests/cuda_device_buffer.h"

namespace engine::cuda {
namespace {

template <typename T>
using Buffer = test_support::DeviceBuffer<T>;

// The launch's error: its code, with the emulator's text (which names the kernel).
struct LaunchError {
  cudaError_t code;
  std::string text;
};
LaunchError last_launch_error() {
  const cudaError_t e = cudaGetLastError();
  return {e, cudaGetErrorString(e)};
}

// ---- barriers and shared memory -----------------------------------------------------------------

__global__ void reverse_in_shared(const int* in, int* out) {
  __shared__ int tile[256];
  tile[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

TEST(CudaEmulator, BarrierOrdersSharedMemoryAcrossWarps) {
  constexpr int kThreads = 256, kBlocks = 5;
  std::vector<int> host(kThreads * kBlocks);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<int>(i);
  Buffer<int> in(host), out(host.size());
  launch_kernel<reverse_in_shared>(kBlocks, kThreads, 0, nullptr, in.ptr, out.ptr);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<int> got = out.read();
  for (int b = 0; b < kBlocks; ++b) {
    for (int t = 0; t < kThreads; ++t) {
      ASSERT_EQ(got[b * kThreads + t], b * kThreads + kThreads - 1 - t) << b << " " << t;
    }
  }
}

// The same without the barrier: each thread runs ahead of its peers' writes.
__global__ void reverse_without_barrier(const int* in, int* out) {
  __shared__ int tile[256];
  tile[threadIdx.x] = in[threadIdx.x];
  out[threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

TEST(CudaEmulator, MissingBarrierReadsUnwrittenSharedMemory) {
  constexpr int kThreads = 256;
  std::vector<int> host(kThreads);
  for (int i = 0; i < kThreads; ++i) host[i] = 1000 + i;
  Buffer<int> in(host), out(kThreads);
  launch_kernel<reverse_without_barrier>(1, kThreads, 0, nullptr, in.ptr, out.ptr);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<int> got = out.read();
  int wrong = 0;
  for (int t = 0; t < kThreads; ++t) wrong += got[t] != 1000 + kThreads - 1 - t;
  EXPECT_GT(wrong, 0) << "a race that the emulator's schedule must expose";
}

__global__ void read_dynamic_shared(uint32_t* out) {
  const uint32_t* s = dynamic_shared<uint32_t>();
  out[threadIdx.x] = s[threadIdx.x];
}

TEST(CudaEmulator, DynamicSharedMemoryStartsAsANanPattern) {
  Buffer<uint32_t> out(64);
  launch_kernel<read_dynamic_shared>(1, 64, 64 * sizeof(uint32_t), nullptr, out.ptr);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (uint32_t v : out.read()) {
    EXPECT_EQ(v, 0xffffffffu);
    EXPECT_TRUE(std::isnan(std::bit_cast<float>(v)));
  }
}

__global__ void touch_dynamic_shared(float* out) {
  float* s = dynamic_shared<float>();
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

TEST(CudaEmulator, DynamicSharedMemoryAboveTheLimitIsALaunchError) {
  Buffer<float> out(32);
  // Above 48 KiB needs the attribute, as on the GPU.
  launch_kernel<touch_dynamic_shared>(1, 32, 64 * 1024, nullptr, out.ptr);
  LaunchError e = last_launch_error();
  EXPECT_EQ(e.code, cudaErrorInvalidValue);
  EXPECT_NE(e.text.find("touch_dynamic_shared"), std::string::npos) << e.text;
  EXPECT_NE(e.text.find("cudaFuncSetAttribute"), std::string::npos) << e.text;
  ASSERT_EQ(cudaFuncSetAttribute(touch_dynamic_shared, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 64 * 1024),
            cudaSuccess);
  launch_kernel<touch_dynamic_shared>(1, 32, 64 * 1024, nullptr, out.ptr);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  // Past the sm_90 maximum (227 KiB) nothing helps.
  EXPECT_EQ(cudaFuncSetAttribute(touch_dynamic_shared, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 240 * 1024),
            cudaErrorInvalidValue);
  launch_kernel<touch_dynamic_shared>(1, 32, 240 * 1024, nullptr, out.ptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
}

TEST(CudaEmulator, BadLaunchShapesAreConfigurationErrors) {
  Buffer<float> out(2048);
  launch_kernel<touch_dynamic_shared>(1, 1025, 1025 * sizeof(float), nullptr, out.ptr);
  LaunchError e = last_launch_error();
  EXPECT_EQ(e.code, cudaErrorInvalidConfiguration);
  EXPECT_NE(e.text.find("touch_dynamic_shared"), std::string::npos) << e.text;
  launch_kernel<touch_dynamic_shared>(dim3(1, 70000), 32, 32 * sizeof(float), nullptr, out.ptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  launch_kernel<touch_dynamic_shared>(0, 32, 32 * sizeof(float), nullptr, out.ptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
}

// ---- errors instead of hangs
// ----------------------------------------------------------------------

__global__ void exit_before_barrier(int* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

TEST(CudaEmulator, ThreadExitingBeforeABarrierIsAnErrorNamingTheKernel) {
  Buffer<int> out(64);
  launch_kernel<exit_before_barrier>(1, 64, 0, nullptr, out.ptr);
  LaunchError e = last_launch_error();
  EXPECT_EQ(e.code, cudaErrorLaunchFailure);
  EXPECT_NE(e.text.find("exit_before_barrier"), std::string::npos) << e.text;
  EXPECT_NE(e.text.find("__syncthreads"), std::string::npos) << e.text;
}

__global__ void exit_while_others_wait(int* out) {
  if (threadIdx.x == 40) {
    for (int i = 0; i < 3; ++i) out[i] = i;  // reaches its end while the others wait
    return;
  }
  __syncthreads();
}

TEST(CudaEmulator, ThreadExitingWhileOthersWaitAtABarrierIsAnError) {
  Buffer<int> out(64);
  launch_kernel<exit_while_others_wait>(1, 64, 0, nullptr, out.ptr);
  LaunchError e = last_launch_error();
  EXPECT_EQ(e.code, cudaErrorLaunchFailure);
  EXPECT_NE(e.text.find("exit_while_others_wait"), std::string::npos) << e.text;
}

__global__ void shuffle_after_lane_exit(float* out) {
  if (threadIdx.x % 32 == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

TEST(CudaEmulator, CollectiveNamingAnExitedLaneIsAnError) {
  Buffer<float> out(32);
  launch_kernel<shuffle_after_lane_exit>(1, 32, 0, nullptr, out.ptr);
  LaunchError e = last_launch_error();
  EXPECT_EQ(e.code, cudaErrorLaunchFailure);
  EXPECT_NE(e.text.find("__shfl_xor_sync"), std::string::npos) << e.text;
  EXPECT_NE(e.text.find("shuffle_after_lane_exit"), std::string::npos) << e.text;
}

__global__ void divergent_collectives(unsigned* out) {
  const unsigned lane = threadIdx.x % 32;
  if (lane < 16) {
    out[lane] = __shfl_xor_sync(0xffffffffu, lane, 1);
  } else {
    out[lane] = __ballot_sync(0xffffffffu, 1);
  }
}

TEST(CudaEmulator, LanesAtDifferentCollectivesAreAnError) {
  Buffer<unsigned> out(32);
  launch_kernel<divergent_collectives>(1, 32, 0, nullptr, out.ptr);
  LaunchError e = last_launch_error();
  EXPECT_EQ(e.code, cudaErrorLaunchFailure);
  EXPECT_NE(e.text.find("diverged"), std::string::npos) << e.text;
}

__global__ void barrier_against_collective(float* out) {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 2.0f, 1);
    __syncthreads();
  }
}

TEST(CudaEmulator, DeadlockIsAnErrorNotAHang) {
  Buffer<float> out(32);
  launch_kernel<barrier_against_collective>(1, 32, 0, nullptr, out.ptr);
  LaunchError e = last_launch_error();
  EXPECT_EQ(e.code, cudaErrorLaunchFailure);
  EXPECT_NE(e.text.find("deadlock"), std::string::npos) << e.text;
  EXPECT_NE(e.text.find("barrier_against_collective"), std::string::npos) << e.text;
}

__global__ void load_uint4(const unsigned char* base, int offset, unsigned* out) {
  const uint4 v = *reinterpret_cast<const uint4*>(base + offset);
  out[threadIdx.x] = v.x;
}

TEST(CudaEmulator, MisalignedVectorLoadIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Buffer<unsigned char> bytes(64);
  Buffer<unsigned> out(1);
  launch_kernel<load_uint4>(1, 1, 0, nullptr, bytes.ptr, 16, out.ptr);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_DEATH(launch_kernel<load_uint4>(1, 1, 0, nullptr, bytes.ptr, 8, out.ptr), "misaligned");
}

// ---- warp collectives
// -----------------------------------------------------------------------------

// One launch, several results per lane: index shuffle within 8-lane segments, up / down within
// 16-lane segments, xor across the warp, and a ballot.
__global__ void shuffles(int* out) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int v = 100 + lane;
  int* row = out + lane * 5;
  row[0] = __shfl_sync(0xffffffffu, v, 3, 8);
  row[1] = __shfl_up_sync(0xffffffffu, v, 2, 16);
  row[2] = __shfl_down_sync(0xffffffffu, v, 5, 16);
  row[3] = __shfl_xor_sync(0xffffffffu, v, 9);
  row[4] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
}

TEST(CudaEmulator, ShufflesFollowCudaLaneAndWidthRules) {
  Buffer<int> out(32 * 5);
  launch_kernel<shuffles>(1, 32, 0, nullptr, out.ptr);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<int> got = out.read();
  unsigned ballot = 0;
  for (int lane = 0; lane < 32; lane += 3) ballot |= 1u << lane;
  for (int lane = 0; lane < 32; ++lane) {
    const int* row = got.data() + lane * 5;
    EXPECT_EQ(row[0], 100 + (lane & ~7) + 3) << lane;
    EXPECT_EQ(row[1], 100 + ((lane % 16) >= 2 ? lane - 2 : lane)) << lane;
    EXPECT_EQ(row[2], 100 + ((lane % 16) + 5 < 16 ? lane + 5 : lane)) << lane;
    EXPECT_EQ(row[3], 100 + (lane ^ 9)) << lane;
    EXPECT_EQ(static_cast<unsigned>(row[4]), ballot) << lane;
  }
}

// The two half-warps vote separately, each with its own mask, at the same time.
__global__ void half_warp_votes(unsigned* out) {
  const unsigned lane = threadIdx.x % 32;
  const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  const int pred = lane < 16 ? lane % 2 == 0 : 1;
  out[lane * 3 + 0] = __ballot_sync(mask, pred);
  out[lane * 3 + 1] = static_cast<unsigned>(__all_sync(mask, pred));
  out[lane * 3 + 2] = static_cast<unsigned>(__any_sync(mask, lane == 20));
}

TEST(CudaEmulator, VotesHonourTheirMasks) {
  Buffer<unsigned> out(32 * 3);
  launch_kernel<half_warp_votes>(1, 32, 0, nullptr, out.ptr);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<unsigned> got = out.read();
  for (unsigned lane = 0; lane < 32; ++lane) {
    const bool low = lane < 16;
    EXPECT_EQ(got[lane * 3 + 0], low ? 0x5555u : 0xffff0000u) << lane;
    EXPECT_EQ(got[lane * 3 + 1], low ? 0u : 1u) << lane;
    EXPECT_EQ(got[lane * 3 + 2], low ? 0u : 1u) << lane;
  }
}

__global__ void shuffle_from_outside_the_mask(int* out) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (lane < 16) out[lane] = __shfl_sync(0x0000ffffu, lane, 20);
}

TEST(CudaEmulator, ShuffleReadingALaneOutsideItsMaskIsAnError) {
  Buffer<int> out(32);
  launch_kernel<shuffle_from_outside_the_mask>(1, 32, 0, nullptr, out.ptr);
  LaunchError e = last_launch_error();
  EXPECT_EQ(e.code, cudaErrorLaunchFailure);
  EXPECT_NE(e.text.find("not in the mask"), std::string::npos) << e.text;
}

// ---- mma.sync m16n8k16
// ----------------------------------------------------------------------------

// Loads A (16 x 16, row-major) and B (16 x 8, row-major: B[k][n]) into fragments by the PTX ISA's
// layout, or, with `swap`, with A's registers 1 and 2 exchanged (a wrong lane mapping).
template <typename Elem>
__global__ void mma_tile(const Elem* a, const Elem* b, const float* c, float* d, int swap) {
  const int lane = static_cast<int>(threadIdx.x), g = lane / 4, t = lane % 4;
  auto pair = [](Elem lo, Elem hi) {
    uint16_t l, h;
    std::memcpy(&l, &lo, 2);
    std::memcpy(&h, &hi, 2);
    return static_cast<uint32_t>(l) | static_cast<uint32_t>(h) << 16;
  };
  uint32_t fa[4], fb[2];
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
    fa[r] = pair(a[row * 16 + col], a[row * 16 + col + 1]);
  }
  if (swap) std::swap(fa[1], fa[2]);
  for (int r = 0; r < 2; ++r) {
    const int k = 2 * t + 8 * r;
    fb[r] = pair(b[k * 8 + g], b[(k + 1) * 8 + g]);
  }
  float acc[4];
  for (int e = 0; e < 4; ++e) acc[e] = c[(g + 8 * (e >> 1)) * 8 + 2 * t + (e & 1)];
  mma_m16n8k16<Elem>(acc, fa, fb);
  for (int e = 0; e < 4; ++e) d[(g + 8 * (e >> 1)) * 8 + 2 * t + (e & 1)] = acc[e];
}

template <typename Elem>
void check_mma(Elem (*to_elem)(float), float (*from_elem)(Elem)) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<Elem> a(16 * 16), b(16 * 8);
  std::vector<float> c(16 * 8);
  for (Elem& x : a) x = to_elem(dist(rng));
  for (Elem& x : b) x = to_elem(dist(rng));
  for (float& x : c) x = dist(rng);
  // Products of 16-bit values are exact in fp32; 16 fp32 additions onto C are within
  // 16 u sum |terms| of the exact sum (u = 2^-24).
  std::vector<double> want(16 * 8), bound(16 * 8);
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 8; ++j) {
      double acc = c[i * 8 + j];
      double bound_terms = std::fabs(c[i * 8 + j]);
      for (int k = 0; k < 16; ++k) {
        const double p = static_cast<double>(from_elem(a[i * 16 + k])) * from_elem(b[k * 8 + j]);
        acc += p;
        bound_terms += std::fabs(p);
      }
      want[i * 8 + j] = acc;
      bound[i * 8 + j] = 16.0 * bound_terms / (1 << 24);
    }
  }
  Buffer<Elem> da(a), db(b);
  Buffer<float> dc(c), dd(16 * 8);
  for (int swap : {0, 1}) {
    launch_kernel<mma_tile<Elem>>(1, 32, 0, nullptr, da.ptr, db.ptr, dc.ptr, dd.ptr, swap);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const std::vector<float> got = dd.read();
    int outside = 0;
    for (int i = 0; i < 16 * 8; ++i) outside += std::fabs(got[i] - want[i]) > bound[i];
    if (swap == 0) {
      EXPECT_EQ(outside, 0) << "the product within fp32 accumulation error";
    } else {
      EXPECT_GT(outside, 64) << "a wrong fragment mapping must give a wrong product";
    }
  }
}

TEST(CudaEmulator, MmaBf16FollowsThePtxFragmentLayout) {
  check_mma<__nv_bfloat16>([](float f) { return __float2bfloat16_rn(f); },
                           [](__nv_bfloat16 h) { return __bfloat162float(h); });
}

TEST(CudaEmulator, MmaF16FollowsThePtxFragmentLayout) {
  check_mma<__half>([](float f) { return __float2half_rn(f); },
                    [](__half h) { return __half2float(h); });
}

// ---- conversions
// ----------------------------------------------------------------------------------

// bf16 by the definition: the float rounded to 8 significant bits (or to the subnormal spacing
// 2^-133), ties to even (nearbyint in the default rounding mode), in double; overflow to infinity.
uint16_t reference_bf16(float f) {
  const double x = f;
  const int e = std::max(std::ilogb(x), -126);
  const double spacing = std::ldexp(1.0, e - 7);
  const double r = std::nearbyint(x / spacing) * spacing;
  const float rounded =
      std::fabs(r) >= std::ldexp(1.0, 128) ? std::copysign(INFINITY, f) : static_cast<float>(r);
  return static_cast<uint16_t>(std::bit_cast<uint32_t>(rounded) >> 16);
}

TEST(CudaEmulator, Bf16ConversionRoundsToNearestEven) {
  struct Case {
    uint32_t in;
    uint16_t out;
  };
  const Case cases[] = {
      {0x3f800000u, 0x3f80},  // 1
      {0x3f808000u, 0x3f80},  // 1 + half an ulp: tie, to even (down)
      {0x3f818000u, 0x3f82},  // tie, to even (up)
      {0x3f808001u, 0x3f81},  // above the tie
      {0x7f7fffffu, 0x7f80},  // the largest float rounds to infinity
      {0x7f800000u, 0x7f80},  // +inf
      {0xff800000u, 0xff80},  // -inf
      {0x7fc00001u, 0x7fff},  // NaN -> the canonical NaN
      {0xffc00000u, 0x7fff},  // negative NaN too
      {0x00000001u, 0x0000},  // the smallest subnormal float rounds to +0
      {0x00018000u, 0x0002},  // subnormals are kept: a tie to even (up)
      {0x80000000u, 0x8000},  // -0
  };
  for (const Case& c : cases) {
    EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16_rn(std::bit_cast<float>(c.in))), c.out)
        << std::hex << c.in;
  }
  // Finite floats over the whole range against the definition.
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 1009) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(u));
    if (std::isnan(f) || std::isinf(f) || f == 0.0f) continue;
    ASSERT_EQ(__bfloat16_as_ushort(__float2bfloat16_rn(f)), reference_bf16(f)) << std::hex << u;
  }
  // Every bf16 converts to the float with the same top bits, and back unchanged.
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = __bfloat162float(__ushort_as_bfloat16(static_cast<uint16_t>(h)));
    EXPECT_EQ(std::bit_cast<uint32_t>(f), h << 16);
    if (!std::isnan(f)) ASSERT_EQ(__bfloat16_as_ushort(__float2bfloat16_rn(f)), h) << std::hex << h;
  }
}

TEST(CudaEmulator, HalfConversionMatchesTheCompilersFloat16) {
  // GCC's _Float16 conversions are IEEE binary16 with round to nearest even: an independent
  // reference for every finite input, sampled over the whole float range.
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 997) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(u));
    const uint16_t got = __half_as_ushort(__float2half_rn(f));
    if (std::isnan(f)) {
      ASSERT_EQ(got, 0x7fff) << std::hex << u;
      continue;
    }
    const _Float16 want = static_cast<_Float16>(f);
    ASSERT_EQ(got, std::bit_cast<uint16_t>(want)) << std::hex << u;
  }
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float got = __half2float(__ushort_as_half(static_cast<uint16_t>(h)));
    const float want = static_cast<float>(std::bit_cast<_Float16>(static_cast<uint16_t>(h)));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << std::hex << h;
    }
  }
}

// ---- runtime: memory and cuBLAS
// -------------------------------------------------------------------

TEST(CudaEmulator, CopiesAndFreesAreCheckedAgainstAllocations) {
  float* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 10 * sizeof(float)), cudaSuccess);
  std::vector<float> host(11, 1.0f);
  EXPECT_EQ(cudaMemcpy(p, host.data(), 10 * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  // One element past the allocation, and the direction swapped.
  EXPECT_EQ(cudaMemcpy(p, host.data(), 11 * sizeof(float), cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);
  EXPECT_NE(std::string(cudaGetErrorString(cudaErrorInvalidValue)).find("not inside"),
            std::string::npos);
  EXPECT_EQ(cudaMemcpy(host.data(), p, sizeof(float), cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(host.data()), cudaErrorInvalidDevicePointer);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaErrorInvalidDevicePointer);  // twice
  cudaGetLastError();
}

TEST(CudaEmulator, GemmExRoundsItsOutputToTheStorageType) {
  // C (bf16) = A B with A (2 x 3) and B (3 x 2), column-major; products chosen so that the fp32
  // result needs rounding to bf16.
  const std::vector<float> a = {1.0f, 2.0f, 0.5f, 1.0f / 3.0f, 3.0f, 1.0f};
  const std::vector<float> b = {1.0f, 1.0f, 1.0f, 2.0f, 1.0f, 0.25f};
  std::vector<__nv_bfloat16> a16, b16;
  for (float x : a) a16.push_back(__float2bfloat16_rn(x));
  for (float x : b) b16.push_back(__float2bfloat16_rn(x));
  Buffer<__nv_bfloat16> da(a16), db(b16), dc(4);
  cublasHandle_t handle = nullptr;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  const float alpha = 1.0f, beta = 0.0f;
  ASSERT_EQ(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &alpha, da.ptr, CUDA_R_16BF, 2,
                         db.ptr, CUDA_R_16BF, 3, &beta, dc.ptr, CUDA_R_16BF, 2, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  const std::vector<__nv_bfloat16> got = dc.read();
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      float acc = 0.0f;
      for (int k = 0; k < 3; ++k) {
        acc += __bfloat162float(a16[k * 2 + i]) * __bfloat162float(b16[j * 3 + k]);
      }
      EXPECT_EQ(__bfloat16_as_ushort(got[j * 2 + i]),
                __bfloat16_as_ushort(__float2bfloat16_rn(acc)))
          << i << "," << j;
    }
  }
  // cuBLAS's argument rules: a leading dimension below the rows is invalid.
  EXPECT_EQ(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &alpha, da.ptr, CUDA_R_16BF, 1,
                         db.ptr, CUDA_R_16BF, 3, &beta, dc.ptr, CUDA_R_16BF, 2, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_INVALID_VALUE);
  cublasDestroy(handle);
}

}  // namespace
}  // namespace engine::cuda
