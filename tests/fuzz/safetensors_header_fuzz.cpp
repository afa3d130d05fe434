// libFuzzer target: parse_safetensors_header must be total on arbitrary bytes (no crash, no
// out-of-bounds read, no sanitizer report), and every header it accepts must satisfy the
// invariants readers rely on: tensors tile the data section in offset order and each tensor's
// byte range matches its shape and dtype.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<engine::SafetensorsHeader> header =
      engine::parse_safetensors_header(data, size, "fuzz.safetensors");
  if (!header.ok()) return 0;
  uint64_t expected = 0;
  for (const engine::SafetensorsTensorInfo& t : header->tensors) {
    if (t.begin != expected || t.end < t.begin) std::abort();
    if (static_cast<uint64_t>(t.numel) * t.element_size != t.end - t.begin) std::abort();
    expected = t.end;
  }
  if (header->data_start + expected != size) std::abort();
  return 0;
}
