#include "engine/device.h"

#include <charconv>

#include "absl/strings/str_cat.h"

namespace engine {

int cuda_device_count() {
#ifdef ENGINE_HAVE_CUDA
  return cuda_runtime_device_count();
#else
  return 0;
#endif
}

bool cuda_16bit_attention_supports(int64_t head_dim) {
#ifdef ENGINE_HAVE_CUDA
  return cuda_tensor_core_head_dim(head_dim);
#else
  (void)head_dim;
  return false;
#endif
}

std::string resolve_device(const std::string& device) {
  if (device != "auto") return device;
#if defined(ENGINE_HAVE_CUDA) && !defined(ENGINE_CUDA_EMULATION)
  return cuda_device_count() > 0 ? "cuda" : "cpu";
#else
  return "cpu";
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> make_backend(const std::string& requested) {
  const std::string device = resolve_device(requested);
  if (device == "cpu") return make_cpu_backend();
  if (device.rfind("cuda", 0) == 0) {
    int index = 0;
    if (device.size() > 4) {
      const char* first = device.data() + 5;
      const char* last = device.data() + device.size();
      auto [ptr, ec] = std::from_chars(first, last, index);
      if (device[4] != ':' || ec != std::errc() || ptr != last || index < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("--device: '", device, "' is not auto, cpu, cuda or cuda:N"));
      }
    }
#ifdef ENGINE_HAVE_CUDA
    return make_cuda_backend(index);
#else
    return absl::FailedPreconditionError(
        absl::StrCat("--device ", device, ": this engine was built without CUDA"));
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device: '", device, "' is not auto, cpu, cuda or cuda:N"));
}

}  // namespace engine
