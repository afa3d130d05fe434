// `engine info [--model DIR] [--json]`: the CPU kernels this process runs (instruction-set build
// and the OpenBLAS kernel family), and, with --model, a model directory's architecture, parameter
// counts per group, source dtype, ALiBi slope per head, and files with sizes.
// It validates everything loading would (config, every safetensors header, tensor names, shapes
// and dtypes) but reads no tensor data, so it is quick even for large checkpoints.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "engine/device.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/storage.h"
#include "model/bloom_layout.h"
#include "model/config.h"
#include "model/model_directory.h"
#include "nlohmann/json.hpp"

namespace engine::cli {

namespace {

struct ParameterCounts {
  int64_t embedding = 0;            // word_embeddings
  int64_t embedding_layernorm = 0;  // word_embeddings_layernorm
  int64_t attention = 0;            // all layers
  int64_t mlp = 0;
  int64_t layernorms = 0;           // input + post-attention LNs of all layers
  int64_t final_layernorm = 0;
  int64_t lm_head = 0;              // an untied LM head (0 when tied to the embedding)
  int64_t total = 0;
};

ParameterCounts count_parameters(const BloomConfig& c) {
  ParameterCounts n;
  for (const BloomParameterSpec& s : bloom_parameter_specs(c)) {
    int64_t numel = 1;
    for (int64_t d : s.shape) numel *= d;
    switch (s.group) {
      case BloomParameterGroup::kEmbedding:
        n.embedding += numel;
        break;
      case BloomParameterGroup::kEmbeddingLayerNorm:
        n.embedding_layernorm += numel;
        break;
      case BloomParameterGroup::kAttention:
        n.attention += numel;
        break;
      case BloomParameterGroup::kMlp:
        n.mlp += numel;
        break;
      case BloomParameterGroup::kLayerNorm:
        n.layernorms += numel;
        break;
      case BloomParameterGroup::kFinalLayerNorm:
        n.final_layernorm += numel;
        break;
      case BloomParameterGroup::kLmHead:
        n.lm_head += numel;
        break;
    }
    n.total += numel;
  }
  return n;
}

// The CPU section of both outputs. main() has already rejected an invalid ENGINE_CPU_ISA.
struct CpuRuntime {
  std::string isa;       // the build the kernels run (kernels/cpu/isa.h)
  std::string detected;  // the best build this CPU supports
  std::string blas_core;
  std::string bf16_gemm;  // how bf16 GEMMs run: sbgemm or widen+sgemm (kernels/cpu/storage.h)
};

CpuRuntime cpu_runtime() {
  const absl::StatusOr<cpu::CpuIsa> isa = cpu::active_cpu_isa();
  return {isa.ok() ? std::string(cpu::cpu_isa_name(*isa)) : std::string(isa.status().message()),
          std::string(cpu::cpu_isa_name(cpu::detected_cpu_isa())), cpu::blas_core_name(),
          std::string(cpu::bf16_gemm_path_name(cpu::active_bf16_gemm_path()))};
}

nlohmann::ordered_json cpu_json(const CpuRuntime& r) {
  return {{"isa", r.isa},
          {"isa_detected", r.detected},
          {"blas_core", r.blas_core},
          {"bf16_gemm", r.bf16_gemm}};
}

void print_cpu(const CpuRuntime& r) {
  std::printf("cpu: kernels %s (best supported: %s), OpenBLAS core %s, bf16 GEMM %s\n",
              r.isa.c_str(), r.detected.c_str(), r.blas_core.c_str(), r.bf16_gemm.c_str());
}

// Which device --device auto picks here, and what the build and the machine offer.
nlohmann::ordered_json device_json() {
#if defined(ENGINE_CUDA_EMULATION)
  const char* cuda_build = "emulated";
#elif defined(ENGINE_HAVE_CUDA)
  const char* cuda_build = "yes";
#else
  const char* cuda_build = "no";
#endif
  return {{"auto", resolve_device("auto")},
          {"cuda_build", cuda_build},
          {"cuda_devices", cuda_device_count()}};
}

void print_device() {
  const nlohmann::ordered_json d = device_json();
  std::printf("device: --device auto = %s (CUDA in this build: %s, CUDA devices visible: %d)\n",
              d["auto"].get<std::string>().c_str(), d["cuda_build"].get<std::string>().c_str(),
              d["cuda_devices"].get<int>());
}

}  // namespace

int run_info(const std::vector<std::string>& args) {
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (!args.empty()) {
    std::fprintf(stderr, "usage: engine info [--model DIR] [--json]\n");
    return 2;
  }
  const CpuRuntime cpu = cpu_runtime();
  if (dir.empty()) {
    if (absl::GetFlag(FLAGS_json)) {
      nlohmann::ordered_json j;
      j["cpu"] = cpu_json(cpu);
      j["device"] = device_json();
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      print_cpu(cpu);
      print_device();
    }
    return 0;
  }
  absl::StatusOr<ModelDirectoryInfo> info = inspect_model_directory(dir);
  if (!info.ok()) return fail(std::string(info.status().message()));
  const BloomConfig& c = info->config;
  const ParameterCounts n = count_parameters(c);
  const std::vector<float> slopes = attention_slopes(c);
  const int64_t layers = c.n_layer;

  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::ordered_json j;
    j["model"] = dir;
    j["architecture"] = {
        {"family", family_name(c.family)},
        {"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size},
        {"n_layer", c.n_layer},       {"n_head", c.n_head},
        {"head_dim", c.head_dim()},   {"layer_norm_epsilon", c.layer_norm_epsilon}};
    j["source_dtype"] = dtype_name(info->source_dtype);
    j["parameters"] = {{"embedding", n.embedding},
                       {"embedding_layernorm", n.embedding_layernorm},
                       {"attention", n.attention},
                       {"attention_per_layer", n.attention / layers},
                       {"mlp", n.mlp},
                       {"mlp_per_layer", n.mlp / layers},
                       {"layernorms", n.layernorms},
                       {"layernorms_per_layer", n.layernorms / layers},
                       {"final_layernorm", n.final_layernorm}};
    // Only an untied model has the key, so tied models' output is what it always was.
    if (!c.tie_word_embeddings) j["parameters"]["lm_head"] = n.lm_head;
    j["parameters"]["total"] = n.total;
    j["alibi_slopes"] = slopes;
    nlohmann::ordered_json files = nlohmann::ordered_json::array();
    for (const auto& [path, size] : info->files) {
      files.push_back({{"path", path.string()}, {"bytes", size}});
    }
    j["files"] = std::move(files);
    j["cpu"] = cpu_json(cpu);
    j["device"] = device_json();
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }

  std::printf("model: %s\n", dir.c_str());
  std::printf(
      "architecture: %s, vocab %lld, hidden %lld, layers %lld, heads %lld, "
      "head_dim %lld, layer_norm_epsilon %g\n",
      c.family == ModelFamily::kBloom    ? "BLOOM"
      : c.family == ModelFamily::kFalcon ? "Falcon (ALiBi)"
                                         : "MPT",
      static_cast<long long>(c.vocab_size), static_cast<long long>(c.hidden_size),
      static_cast<long long>(c.n_layer), static_cast<long long>(c.n_head),
      static_cast<long long>(c.head_dim()), c.layer_norm_epsilon);
  std::printf("source dtype: %s\n", dtype_name(info->source_dtype));
  std::printf("parameters:\n");
  auto row = [](const char* label, int64_t total, int64_t per_layer) {
    if (per_layer >= 0) {
      std::printf("  %-22s %15lld  (%lld per layer)\n", label, static_cast<long long>(total),
                  static_cast<long long>(per_layer));
    } else {
      std::printf("  %-22s %15lld\n", label, static_cast<long long>(total));
    }
  };
  row("embedding", n.embedding, -1);
  row("embedding layernorm", n.embedding_layernorm, -1);
  row("attention", n.attention, n.attention / layers);
  row("mlp", n.mlp, n.mlp / layers);
  row("layer layernorms", n.layernorms, n.layernorms / layers);
  row("final layernorm", n.final_layernorm, -1);
  if (!c.tie_word_embeddings) row("lm head (untied)", n.lm_head, -1);
  row("total", n.total, -1);
  // The slope each head's score sees per position (Falcon's already divided by sqrt(head_dim)).
  std::printf("alibi slopes:\n");
  for (size_t h = 0; h < slopes.size(); ++h) {
    std::printf("  head %3zu  %.9g\n", h, static_cast<double>(slopes[h]));
  }
  std::printf("files:\n");
  for (const auto& [path, size] : info->files) {
    std::printf("  %-40s %15llu bytes\n", path.filename().c_str(),
                static_cast<unsigned long long>(size));
  }
  print_cpu(cpu);
  print_device();
  return 0;
}

}  // namespace engine::cli
