// Safetensors: parsing, validated zero-copy reading, and atomic writing.
// Contract:
//  - parse_safetensors_header is PURE (no I/O, no allocation beyond its result) and total: any
//    byte string yields either a fully validated header or one error line naming `file_name` and,
//    where there is one, the tensor or field at fault. It never throws and never reads outside
//    [data, data + file_size). The rules it enforces are listed in docs/FORMATS.md.
//  - SafetensorsFile maps a file read-only and hands out the raw bytes of each tensor without
//    copying. Tensor data offsets in a header are relative to the data section (which starts at
//    byte 8 + header length); SafetensorsTensorInfo keeps them that way.
//  - write_safetensors writes tensors in the order given (so the caller's order decides the
//    layout, and equal inputs give byte-identical files), with the header padded by spaces to a
//    multiple of 8 bytes so every tensor starts 8-byte aligned, through write_file_atomically.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"
#include "engine/io.h"
#include "engine/utf8.h"
#include "engine/tensor.h"

namespace engine {

// Largest header accepted, in bytes: the limit the reference implementation uses, so a file one
// reader accepts the other accepts too, and a hostile length cannot make us allocate gigabytes.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype_name;      // as spelled in the header ("F16")
  size_t element_size = 0;     // bytes per element of dtype_name
  std::optional<DType> dtype;  // the engine dtype, when the engine can represent it
  std::vector<int64_t> shape;  // () for a scalar
  int64_t numel = 0;
  uint64_t begin = 0;  // [begin, end) relative to the start of the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;                    // N, the JSON length
  uint64_t data_start = 0;                      // 8 + N: file offset of the data section
  std::vector<SafetensorsTensorInfo> tensors;   // sorted by data offset
  std::map<std::string, std::string> metadata;  // the "__metadata__" object, if any

  // nullptr when absent.
  const SafetensorsTensorInfo* find(std::string_view name) const;
};

// Parses and validates the header of the safetensors file whose complete contents are
// data[0, file_size). `file_name` only labels error messages.
absl::StatusOr<SafetensorsHeader> parse_safetensors_header(const uint8_t* data, size_t file_size,
                                                           const std::string& file_name);

// A validated, memory-mapped safetensors file.
class SafetensorsFile {
 public:
  static absl::StatusOr<SafetensorsFile> open(const std::filesystem::path& file);

  const SafetensorsHeader& header() const { return header_; }
  const std::filesystem::path& path() const { return mapped_.path(); }
  uint64_t file_size() const { return mapped_.size(); }
  // First byte of the tensor's data inside the mapping (never null for a validated tensor of a
  // non-empty file); the tensor occupies info.end - info.begin bytes.
  const uint8_t* tensor_data(const SafetensorsTensorInfo& info) const {
    return mapped_.data() + header_.data_start + info.begin;
  }
  // Done reading bytes [offset, offset + length) of the tensor's data: their pages leave the
  // resident set (MappedFile::release).
  void release(const SafetensorsTensorInfo& info, uint64_t offset, uint64_t length) const {
    mapped_.release(header_.data_start + info.begin + offset, length);
  }

 private:
  MappedFile mapped_;
  SafetensorsHeader header_;
};

// One tensor to write. `source` holds numel(shape) elements of `source_dtype`, row-major; they
// are stored as `dtype`. The two may differ only as f32 -> f16/bf16 (rounded to nearest even).
struct SafetensorsWriteEntry {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kF32;
  DType source_dtype = DType::kF32;
  const void* source = nullptr;
};

// The metadata transformers and the reference library write for PyTorch tensors.
std::map<std::string, std::string> default_safetensors_metadata();

absl::Status write_safetensors(
    const std::filesystem::path& file, const std::vector<SafetensorsWriteEntry>& tensors,
    const std::map<std::string, std::string>& metadata = default_safetensors_metadata());


}  // namespace engine
