// Run-time instruction-set selection (kernels/cpu/isa.h): the override API, ENGINE_CPU_ISA as the
// CLI sees it (valid values, an unknown one, a build the CPU lacks), `engine info --json`, and
// the same attention problem through every build this CPU supports against one naive reference.
// The kernels' own tests run on both builds through CTest (numerics_avx2_kernels in
// tests/CMakeLists.txt); this file checks the switch itself.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/storage.h"
#include "kernels/cpu/ops.h"

namespace engine {
namespace {

using ::testing::HasSubstr;

// Runs the CLI with ENGINE_CPU_ISA set to `isa` (unset when empty): (exit status, output).
// ENGINE_TEST_LAUNCHER, when set, prefixes the command: scripts/test.sh runs this suite under a
// user-mode CPU emulator (an AVX2-only CPU), and the CLI must see the CPU the test sees.
std::pair<int, std::string> run_cli(const std::string& isa, const std::string& args) {
  const std::string env = isa.empty() ? "env -u ENGINE_CPU_ISA " : "env ENGINE_CPU_ISA=" + isa + " ";
  const char* launcher = std::getenv("ENGINE_TEST_LAUNCHER");
  const std::string prefix =
      launcher != nullptr && *launcher != '\0' ? std::string(launcher) + " " : "";
  std::string out;
  FILE* p = popen((env + prefix + ENGINE_CLI_PATH + " " + args + " 2>&1").c_str(), "r");
  if (p == nullptr) return {-1, ""};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  return {pclose(p), out};
}

// Restores the start-up choice when a test ends.
struct IsaOverride {
  ~IsaOverride() { cpu::clear_cpu_isa_override(); }
};

TEST(CpuIsa, OverrideSelectsOnlyWhatTheCpuSupports) {
  IsaOverride restore;
  EXPECT_TRUE(cpu::cpu_supports(cpu::CpuIsa::kAvx2));
  EXPECT_EQ(cpu::detected_cpu_isa() == cpu::CpuIsa::kAvx512,
            cpu::cpu_supports(cpu::CpuIsa::kAvx512));
  ASSERT_TRUE(cpu::set_cpu_isa(cpu::CpuIsa::kAvx2).ok());
  EXPECT_EQ(*cpu::active_cpu_isa(), cpu::CpuIsa::kAvx2);
  const absl::Status s = cpu::set_cpu_isa(cpu::CpuIsa::kAvx512);
  EXPECT_EQ(s.ok(), cpu::cpu_supports(cpu::CpuIsa::kAvx512)) << s;
  EXPECT_EQ(*cpu::active_cpu_isa(),
            s.ok() ? cpu::CpuIsa::kAvx512 : cpu::CpuIsa::kAvx2);  // a refusal changes nothing
}

TEST(CpuIsa, EnvironmentVariableIsHonouredOrRefusedInOneLine) {
  const std::string detected(cpu::cpu_isa_name(cpu::detected_cpu_isa()));
  auto [rc, out] = run_cli("", "info --json");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("\"isa\": \"" + detected + "\"")) << out;
  EXPECT_THAT(out, HasSubstr("\"blas_core\": ")) << out;
  // The bf16 GEMM path the kernels take (tests/storage_twin_test.cpp checks it against the probe).
  EXPECT_THAT(out, HasSubstr("\"bf16_gemm\": \"" +
                             std::string(cpu::bf16_gemm_path_name(cpu::active_bf16_gemm_path())) +
                             "\"")) << out;
  std::tie(rc, out) = run_cli("avx2", "info --json");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("\"isa\": \"avx2\"")) << out;
  EXPECT_THAT(out, HasSubstr("\"isa_detected\": \"" + detected + "\"")) << out;

  std::tie(rc, out) = run_cli("sse2", "info");
  EXPECT_NE(rc, 0);
  EXPECT_EQ(out, "engine: ENGINE_CPU_ISA=sse2: unknown instruction set (expected avx2 or avx512, "
                 "or unset for the best supported)\n");
  std::tie(rc, out) = run_cli("avx512", "info --json");
  if (cpu::cpu_supports(cpu::CpuIsa::kAvx512)) {
    EXPECT_EQ(rc, 0) << out;
    EXPECT_THAT(out, HasSubstr("\"isa\": \"avx512\"")) << out;
  } else {
    EXPECT_NE(rc, 0);
    // The CPU lacks AVX-512, or this build has no AVX-512 kernels (clang builds).
    EXPECT_EQ(out.rfind("engine: ENGINE_CPU_ISA=avx512: ", 0), 0u) << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  }
}

// Causal ALiBi attention of one head in double, straight from the contract in attention.cpp.
std::vector<double> naive_attention(const std::vector<float>& qkv, int64_t seq, int64_t dim,
                                    float slope, float scale) {
  std::vector<double> out(seq * dim, 0.0);
  for (int64_t i = 0; i < seq; ++i) {
    std::vector<double> s(i + 1);
    double mx = -INFINITY, sum = 0.0;
    for (int64_t j = 0; j <= i; ++j) {
      double dot = 0.0;
      for (int64_t d = 0; d < dim; ++d) dot += double(qkv[i * 3 * dim + d]) * qkv[j * 3 * dim + dim + d];
      s[j] = dot * scale + double(slope) * j;
      mx = std::max(mx, s[j]);
    }
    for (int64_t j = 0; j <= i; ++j) sum += s[j] = std::exp(s[j] - mx);
    for (int64_t j = 0; j <= i; ++j) {
      for (int64_t d = 0; d < dim; ++d) out[i * dim + d] += s[j] / sum * qkv[j * 3 * dim + 2 * dim + d];
    }
  }
  return out;
}

TEST(CpuIsa, EveryBuildMatchesTheSameReference) {
  IsaOverride restore;
  // 150 rows: three query tiles, the last one partial; D = 80 is not a multiple of 16 lanes.
  const int64_t seq = 150, dim = 80;
  const float slope = 0.0625f, scale = 1.0f / std::sqrt(float(dim));
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> qkv(seq * 3 * dim);
  for (float& x : qkv) x = normal(rng);
  const std::vector<double> ref = naive_attention(qkv, seq, dim, slope, scale);
  for (cpu::CpuIsa isa : {cpu::CpuIsa::kAvx2, cpu::CpuIsa::kAvx512}) {
    if (!cpu::cpu_supports(isa)) continue;
    SCOPED_TRACE(std::string(cpu::cpu_isa_name(isa)));
    ASSERT_TRUE(cpu::set_cpu_isa(isa).ok());
    std::vector<float> out(seq * dim, -7.0f), lse(seq);
    AlibiAttentionParams p;
    p.batch = 1, p.seq = seq, p.heads = 1, p.head_dim = dim, p.scale = scale;
    p.qkv = qkv.data(), p.slopes = &slope, p.out = out.data(), p.lse = lse.data();
    ASSERT_TRUE(cpu::alibi_attention_forward(p).ok());
    // The bound of attention_test.cpp: out is a convex combination of values of magnitude ~1.
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_NEAR(out[i], ref[i], 5e-5 * std::max(1.0, std::abs(ref[i]))) << i;
    }
  }
}

}  // namespace
}  // namespace engine
