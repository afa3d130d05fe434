// The CPU reference implementations of the Backend ops (fp32 arithmetic on F32, BF16 or F16
// storage; 16-bit storage is the twin of the CUDA path, kernels/cpu/storage.h). Each op lives in
// its own file kernels/cpu/<op>.cpp; CpuBackend (cpu_backend.cpp) forwards to these free functions
// so tests and benchmarks can call them directly. Contracts are in engine/backend.h and atop each
// file.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace engine::cpu {

absl::Status gemm(const GemmParams& p);
absl::Status layernorm_forward(const LayerNormParams& p);
absl::Status layernorm_backward(const LayerNormParams& p);
absl::Status gelu_forward(const GeluParams& p);
absl::Status gelu_backward(const GeluParams& p);
// The fp32 erf-form GELU (GeluParams::exact), one instruction-set build (gelu_erf.cpp).
absl::Status gelu_erf_forward(const GeluParams& p);
absl::Status gelu_erf_backward(const GeluParams& p);
absl::Status embedding_forward(const EmbeddingParams& p);
absl::Status embedding_backward(const EmbeddingParams& p);
absl::Status alibi_attention_forward(const AlibiAttentionParams& p);
absl::Status alibi_attention_backward(const AlibiAttentionParams& p);
// The attention-sink loss's per-head row sums (attention_sink.cpp), in double in a fixed order.
absl::StatusOr<std::vector<double>> attention_sink_sums(const AttentionSinkParams& p);
absl::Status classifier_cross_entropy(const ClassifierParams& p);

}  // namespace engine::cpu
