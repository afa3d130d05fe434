// `engine export --model DIR --out DIR [--dtype auto|f32|f16|bf16]`: loads a model directory and
// writes it back as a Hugging Face directory (config.json, model.safetensors, tokenizer files)
// that transformers' BloomForCausalLM.from_pretrained loads.
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"

#include "cli/commands.h"
#include "cli/flags.h"
#include "model/model_directory.h"


namespace engine::cli {

int run_export(const std::vector<std::string>& args) {
  const std::string model = absl::GetFlag(FLAGS_model);
  const std::string out = absl::GetFlag(FLAGS_out);
  const std::string dtype_text = absl::GetFlag(FLAGS_dtype);
  if (model.empty() || out.empty() || !args.empty()) {
    std::fprintf(stderr, "usage: engine export --model DIR --out DIR [--dtype auto|f32|f16|bf16]\n");
    return 2;
  }
  const std::optional<DType> dtype =
      dtype_text == "auto" ? std::optional<DType>(DType::kF32) : float_dtype_from_flag(dtype_text);
  if (!dtype.has_value()) {
    std::fprintf(stderr, "engine: export: --dtype must be f32, f16 or bf16, got '%s'\n",
                 dtype_text.c_str());
    return 2;
  }
  absl::StatusOr<BloomModel> m = load_model_directory(model);
  if (!m.ok()) return fail(std::string(m.status().message()));
  if (absl::Status s = save_model_directory(*m, out, *dtype); !s.ok()) {
    return fail(std::string(s.message()));
  }
  std::printf("exported %s -> %s (%s)\n", model.c_str(), out.c_str(), dtype_name(*dtype));
  return 0;
}

}  // namespace engine::cli
