// CpuBackend: the reference backend. Ops not yet written for the CPU say so by status.
#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "kernels/cpu/ops.h"

namespace engine {
namespace {

absl::Status not_yet(std::string_view op) {
  return absl::UnimplementedError(absl::StrCat("cpu backend: ", std::string(op), " is not implemented yet"));
}

class CpuBackend final : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::kCpu; }
  std::string_view name() const override { return "cpu"; }
  absl::Status gemm(const GemmParams& p) override { return cpu::gemm(p); }
  absl::Status layernorm_forward(const LayerNormParams&) override { return not_yet("layernorm_forward"); }
  absl::Status layernorm_backward(const LayerNormParams&) override { return not_yet("layernorm_backward"); }
  absl::Status gelu_forward(const GeluParams&) override { return not_yet("gelu_forward"); }
  absl::Status gelu_backward(const GeluParams&) override { return not_yet("gelu_backward"); }
  absl::Status embedding_forward(const EmbeddingParams&) override { return not_yet("embedding_forward"); }
  absl::Status embedding_backward(const EmbeddingParams&) override { return not_yet("embedding_backward"); }
  absl::Status alibi_attention_forward(const AlibiAttentionParams&) override { return not_yet("alibi_attention_forward"); }
  absl::Status alibi_attention_backward(const AlibiAttentionParams&) override { return not_yet("alibi_attention_backward"); }
  absl::Status classifier_cross_entropy(const ClassifierParams&) override { return not_yet("classifier_cross_entropy"); }
  absl::Status masked_adamw(const MaskedAdamWParams&) override { return not_yet("masked_adamw"); }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace engine
