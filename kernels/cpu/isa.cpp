// Instruction-set selection (isa.h) and the entry points of ops.h / adamw.h that dispatch to
// the per-instruction-set builds (isa_kernels.h).
#include "kernels/cpu/isa.h"

#include <cblas.h>

#include <atomic>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/isa_kernels.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/storage.h"

namespace engine::cpu {
namespace {

constexpr const char* kIsaVariable = "ENGINE_CPU_ISA";

#if defined(ENGINE_HAVE_AVX512_KERNELS)
constexpr bool kAvx512Built = true;
#else
constexpr bool kAvx512Built = false;  // a clang build (CMakeLists.txt: ENGINE_CPU_ISAS)
#endif

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512cd");
}

absl::StatusOr<CpuIsa> isa_from_environment() {
  const char* value = std::getenv(kIsaVariable);
  if (value == nullptr || *value == '\0') return detected_cpu_isa();
  const std::string v(value);
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (v != cpu_isa_name(isa)) continue;
    if (isa == CpuIsa::kAvx512 && !kAvx512Built) {
      return absl::FailedPreconditionError(absl::StrCat(
          kIsaVariable, "=", v, ": this build of the engine has no AVX-512 kernels (compiled "
          "without GCC); unset it or use avx2"));
    }
    if (!cpu_supports(isa)) {
      return absl::FailedPreconditionError(
          absl::StrCat(kIsaVariable, "=", v, ": this CPU does not support it (", v,
                       " needs AVX-512 F, BW, DQ, VL and CD); unset it or use avx2"));
    }
    return isa;
  }
  return absl::InvalidArgumentError(absl::StrCat(kIsaVariable, "=", v,
                                                 ": unknown instruction set (expected avx2 "
                                                 "or avx512, or unset for the best supported)"));
}

const absl::StatusOr<CpuIsa>& startup_isa() {
  static const absl::StatusOr<CpuIsa> isa = isa_from_environment();
  return isa;
}

constexpr int kNoOverride = -1;
std::atomic<int> isa_override{kNoOverride};

// Calls the build of `kernel` for the active instruction set.
template <typename Params>
absl::Status dispatch(absl::Status (*avx2_kernel)(const Params&),
                      absl::Status (*avx512_kernel)(const Params&), const Params& p) {
  const absl::StatusOr<CpuIsa> isa = active_cpu_isa();
  if (!isa.ok()) return isa.status();
  return *isa == CpuIsa::kAvx512 ? avx512_kernel(p) : avx2_kernel(p);
}

// The AVX-512 entry points, or the AVX2 ones in a build without them (never called then:
// cpu_supports(kAvx512) is false, so active_cpu_isa() never returns it).
#if defined(ENGINE_HAVE_AVX512_KERNELS)
namespace wide = avx512;
#else
namespace wide = avx2;
#endif

}  // namespace

std::string_view cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

bool cpu_supports(CpuIsa isa) {
  static const bool avx512 = kAvx512Built && cpu_has_avx512();
  return isa == CpuIsa::kAvx2 || avx512;
}

CpuIsa detected_cpu_isa() {
  return cpu_supports(CpuIsa::kAvx512) ? CpuIsa::kAvx512 : CpuIsa::kAvx2;
}

absl::StatusOr<CpuIsa> active_cpu_isa() {
  const int forced = isa_override.load(std::memory_order_relaxed);
  if (forced != kNoOverride) return static_cast<CpuIsa>(forced);
  return startup_isa();
}

absl::Status set_cpu_isa(CpuIsa isa) {
  if (!cpu_supports(isa)) {
    return absl::FailedPreconditionError(
        absl::StrCat("set_cpu_isa(", std::string(cpu_isa_name(isa)),
                     "): this CPU does not support it"));
  }
  isa_override.store(static_cast<int>(isa), std::memory_order_relaxed);
  return absl::OkStatus();
}

void clear_cpu_isa_override() { isa_override.store(kNoOverride, std::memory_order_relaxed); }

std::string blas_core_name() {
  const char* name = openblas_get_corename();
  return name != nullptr ? std::string(name) : std::string("unknown");
}

// 16-bit storage is widened around the fp32 kernels (kernels/cpu/storage.h).
absl::Status layernorm_forward(const LayerNormParams& p) {
  return on_f32_storage(p, Pass::kForward, "layernorm_forward", [](const LayerNormParams& q) {
    return dispatch(avx2::layernorm_forward, wide::layernorm_forward, q);
  });
}
absl::Status layernorm_backward(const LayerNormParams& p) {
  return on_f32_storage(p, Pass::kBackward, "layernorm_backward", [](const LayerNormParams& q) {
    return dispatch(avx2::layernorm_backward, wide::layernorm_backward, q);
  });
}
absl::Status gelu_forward(const GeluParams& p) {
  return on_f32_storage(p, Pass::kForward, "gelu_forward", [](const GeluParams& q) {
    if (q.exact) return gelu_erf_forward(q);
    return dispatch(avx2::gelu_forward, wide::gelu_forward, q);
  });
}
absl::Status gelu_backward(const GeluParams& p) {
  return on_f32_storage(p, Pass::kBackward, "gelu_backward", [](const GeluParams& q) {
    if (q.exact) return gelu_erf_backward(q);
    return dispatch(avx2::gelu_backward, wide::gelu_backward, q);
  });
}
absl::Status alibi_attention_forward(const AlibiAttentionParams& p) {
  return on_f32_storage(p, Pass::kForward, "alibi_attention_forward",
                        [](const AlibiAttentionParams& q) {
                          return dispatch(avx2::alibi_attention_forward,
                                          wide::alibi_attention_forward, q);
                        });
}
absl::Status alibi_attention_backward(const AlibiAttentionParams& p) {
  return on_f32_storage(p, Pass::kBackward, "alibi_attention_backward",
                        [](const AlibiAttentionParams& q) {
                          return dispatch(avx2::alibi_attention_backward,
                                          wide::alibi_attention_backward, q);
                        });
}
absl::Status classifier_cross_entropy(const ClassifierParams& p) {
  return on_f32_storage(p, "classifier_cross_entropy", [](const ClassifierParams& q) {
    return dispatch(avx2::classifier_cross_entropy, wide::classifier_cross_entropy, q);
  });
}
absl::Status masked_adamw(const MaskedAdamWParams& p) {
  if (absl::Status s = check_storage(p.storage, "masked AdamW"); !s.ok()) return s;
  return dispatch(avx2::masked_adamw, wide::masked_adamw, p);
}
absl::Status masked_sgd(const MaskedAdamWParams& p) {
  if (absl::Status s = check_storage(p.storage, "masked SGD"); !s.ok()) return s;
  return dispatch(avx2::masked_sgd, wide::masked_sgd, p);
}

}  // namespace engine::cpu
