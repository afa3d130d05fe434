// The kernels built once per instruction set (Note [one source, one build per instruction set],
// kernels/cpu/isa_region.h), declared for both builds. The files defining them include this
// header, so a signature that drifts from these declarations does not compile. The dispatching
// entry points with the same names in engine::cpu (ops.h, adamw.h) are defined in isa.cpp.
// The AVX-512 build exists where ENGINE_HAVE_AVX512_KERNELS is defined (GCC builds).
#pragma once

#include "absl/status/status.h"
#include "engine/backend.h"

#define ENGINE_CPU_ISA_KERNEL_DECLARATIONS                                \
  absl::Status layernorm_forward(const LayerNormParams& p);               \
  absl::Status layernorm_backward(const LayerNormParams& p);              \
  absl::Status gelu_forward(const GeluParams& p);                         \
  absl::Status gelu_backward(const GeluParams& p);                        \
  absl::Status alibi_attention_forward(const AlibiAttentionParams& p);    \
  absl::Status alibi_attention_backward(const AlibiAttentionParams& p);   \
  absl::Status classifier_cross_entropy(const ClassifierParams& p);       \
  absl::Status masked_adamw(const MaskedAdamWParams& p);                  \
  absl::Status masked_sgd(const MaskedAdamWParams& p);

namespace engine::cpu {
namespace avx2 {
ENGINE_CPU_ISA_KERNEL_DECLARATIONS
}  // namespace avx2
namespace avx512 {
ENGINE_CPU_ISA_KERNEL_DECLARATIONS
}  // namespace avx512
}  // namespace engine::cpu

#undef ENGINE_CPU_ISA_KERNEL_DECLARATIONS
