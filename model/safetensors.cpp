#include "model/safetensors.h"

#include "engine/utf8.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace engine {

namespace {

using nlohmann::json;

// Width of the little-endian header length that opens every safetensors file.
constexpr size_t kLengthPrefixBytes = 8;
// The data section starts 8-byte aligned when the header length is a multiple of this.
constexpr size_t kHeaderAlignment = 8;
// Elements converted per step when a writer changes dtype (bounded scratch memory).
constexpr size_t kConversionChunkElements = size_t{1} << 16;
constexpr char kMetadataKey[] = "__metadata__";

struct DTypeSpelling {
  const char* name;
  size_t size;
  std::optional<DType> dtype;
};

// Every dtype of the safetensors specification with a whole number of bytes per element. The
// header is validated for all of them (so sizes are checked for any tensor); only those with an
// engine DType can be loaded. Sub-byte float formats (F4, F6_*) are rejected as unknown: no BLOOM
// checkpoint uses them and their byte counts need packing rules.
constexpr DTypeSpelling kDTypes[] = {
    {"BOOL", 1, std::nullopt},    {"U8", 1, DType::kU8},        {"I8", 1, std::nullopt},
    {"F8_E5M2", 1, std::nullopt}, {"F8_E4M3", 1, std::nullopt}, {"F8_E8M0", 1, std::nullopt},
    {"I16", 2, std::nullopt},     {"U16", 2, std::nullopt},     {"F16", 2, DType::kF16},
    {"BF16", 2, DType::kBF16},    {"I32", 4, DType::kI32},      {"U32", 4, DType::kU32},
    {"F32", 4, DType::kF32},      {"F64", 8, std::nullopt},     {"I64", 8, DType::kI64},
    {"U64", 8, std::nullopt},
};

const DTypeSpelling* find_dtype(const std::string& name) {
  for (const DTypeSpelling& d : kDTypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

absl::Status header_error(const std::string& file, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

absl::Status tensor_error(const std::string& file, const std::string& tensor,
                          const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": tensor ", tensor, ": ", what));
}

// Reads a JSON number that must be a non-negative integer fitting int64 (shape dims, offsets).
std::optional<uint64_t> as_index(const json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return u;
  }
  if (v.is_number_integer()) {  // nlohmann stores negative integers as signed
    const int64_t i = v.get<int64_t>();
    if (i < 0) return std::nullopt;
    return static_cast<uint64_t>(i);
  }
  return std::nullopt;
}

// nlohmann keeps only one value for a repeated object key; this records the first repeat so the
// parse can reject it. One set of seen keys per open object.
struct DuplicateKeyFinder {
  std::vector<std::set<std::string>> open_objects;
  std::optional<std::string> duplicate;
  int duplicate_depth = 0;

  bool on_event(int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string()) {
          const std::string& key = parsed.get_ref<const std::string&>();
          if (!open_objects.back().insert(key).second && !duplicate) {
            duplicate = key;
            duplicate_depth = depth;
          }
        }
        break;
      default:
        break;
    }
    return true;
  }
};

std::string offsets_string(uint64_t begin, uint64_t end) {
  return absl::StrCat("[", begin, ", ", end, ")");
}

absl::StatusOr<SafetensorsTensorInfo> parse_tensor_entry(const std::string& file,
                                                         const std::string& name,
                                                         const json& entry) {
  if (!entry.is_object()) return tensor_error(file, name, "entry is not a JSON object");
  SafetensorsTensorInfo info;
  info.name = name;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return tensor_error(file, name, "missing field dtype");
  if (!dtype_it->is_string()) return tensor_error(file, name, "field dtype is not a string");
  info.dtype_name = dtype_it->get<std::string>();
  const DTypeSpelling* spelling = find_dtype(info.dtype_name);
  if (spelling == nullptr) {
    return tensor_error(file, name, absl::StrCat("unknown dtype \"", info.dtype_name, "\""));
  }
  info.element_size = spelling->size;
  info.dtype = spelling->dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return tensor_error(file, name, "missing field shape");
  if (!shape_it->is_array()) return tensor_error(file, name, "field shape is not an array");
  uint64_t numel = 1;
  for (const json& dim : *shape_it) {
    const std::optional<uint64_t> d = as_index(dim);
    if (!d) {
      return tensor_error(
          file, name,
          absl::StrCat("shape dimension ", dim.dump(), " is not a non-negative 64-bit integer"));
    }
    info.shape.push_back(static_cast<int64_t>(*d));
    if (*d != 0 && numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / *d) {
      return tensor_error(
          file, name,
          absl::StrCat("element count of shape ", shape_it->dump(), " overflows 64 bits"));
    }
    numel *= *d;
  }
  info.numel = static_cast<int64_t>(numel);

  const auto off_it = entry.find("data_offsets");
  if (off_it == entry.end()) return tensor_error(file, name, "missing field data_offsets");
  if (!off_it->is_array() || off_it->size() != 2) {
    return tensor_error(file, name, "field data_offsets is not an array of two integers");
  }
  const std::optional<uint64_t> begin = as_index((*off_it)[0]);
  const std::optional<uint64_t> end = as_index((*off_it)[1]);
  if (!begin || !end) {
    return tensor_error(
        file, name,
        absl::StrCat("data_offsets ", off_it->dump(), " are not non-negative 64-bit integers"));
  }
  if (*end < *begin) {
    return tensor_error(
        file, name,
        absl::StrCat("data offsets ", offsets_string(*begin, *end), " end before they begin"));
  }
  info.begin = *begin;
  info.end = *end;

  if (numel > std::numeric_limits<uint64_t>::max() / info.element_size) {
    return tensor_error(file, name,
                        absl::StrCat("byte size of shape ", shape_it->dump(), " ", info.dtype_name,
                                     " overflows 64 bits"));
  }
  const uint64_t nbytes = numel * info.element_size;
  if (nbytes != info.end - info.begin) {
    return tensor_error(
        file, name,
        absl::StrCat("shape ", shape_it->dump(), " ", info.dtype_name, " needs ", nbytes,
                     " bytes but data offsets ", offsets_string(info.begin, info.end), " hold ",
                     info.end - info.begin));
  }
  return info;
}

}  // namespace


const SafetensorsTensorInfo* SafetensorsHeader::find(std::string_view name) const {
  for (const SafetensorsTensorInfo& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<SafetensorsHeader> parse_safetensors_header(const uint8_t* data, size_t file_size,
                                                           const std::string& file_name) {
  if (file_size < kLengthPrefixBytes || data == nullptr) {
    return header_error(file_name, absl::StrCat("file is ", file_size,
                                                " bytes, too short for the 8-byte header length"));
  }
  uint64_t n = 0;
  for (size_t i = 0; i < kLengthPrefixBytes; ++i) n |= static_cast<uint64_t>(data[i]) << (8 * i);
  if (n > kMaxSafetensorsHeaderBytes) {
    return header_error(file_name, absl::StrCat("header length ", n, " exceeds the limit of ",
                                                kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (n > file_size - kLengthPrefixBytes) {
    return header_error(file_name, absl::StrCat("header length ", n, " runs past the end of the ",
                                                file_size, "-byte file"));
  }
  const std::string_view text(reinterpret_cast<const char*>(data + kLengthPrefixBytes), n);
  if (!is_valid_utf8(text)) return header_error(file_name, "header is not valid UTF-8");
  // JSON never contains a raw NUL, but nlohmann's lexer treats one as end of input and would
  // silently accept whatever follows it.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return header_error(file_name,
                        absl::StrCat("header is not valid JSON: NUL byte at header offset ", nul));
  }

  DuplicateKeyFinder duplicates;
  const json root = json::parse(
      text.begin(), text.end(),
      [&duplicates](int depth, json::parse_event_t event, json& parsed) {
        return duplicates.on_event(depth, event, parsed);
      },
      /*allow_exceptions=*/false);
  if (root.is_discarded()) return header_error(file_name, "header is not valid JSON");
  if (!root.is_object()) return header_error(file_name, "header is not a JSON object");
  if (duplicates.duplicate) {
    // Depth 1 keys are the top-level names (tensors and __metadata__).
    return header_error(
        file_name,
        duplicates.duplicate_depth == 1
            ? absl::StrCat("duplicate tensor name \"", *duplicates.duplicate, "\"")
            : absl::StrCat("duplicate key \"", *duplicates.duplicate, "\" inside a header entry"));
  }

  SafetensorsHeader header;
  header.header_bytes = n;
  header.data_start = kLengthPrefixBytes + n;
  for (const auto& [key, value] : root.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) return header_error(file_name, "__metadata__ is not a JSON object");
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          return header_error(file_name,
                              absl::StrCat("__metadata__ value of \"", mkey, "\" is not a string"));
        }
        header.metadata.emplace(mkey, mvalue.get<std::string>());
      }
      continue;
    }
    absl::StatusOr<SafetensorsTensorInfo> info = parse_tensor_entry(file_name, key, value);
    if (!info.ok()) return info.status();
    header.tensors.push_back(*std::move(info));
  }

  // Writers may list tensors in any order (older ones sorted by name), so order by offset here
  // and require the sorted ranges to tile the data section exactly: no gaps, no overlaps.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  const uint64_t data_bytes = file_size - header.data_start;
  uint64_t expected = 0;
  for (const SafetensorsTensorInfo& t : header.tensors) {
    const std::string range = offsets_string(t.begin, t.end);
    if (t.begin > expected) {
      return tensor_error(
          file_name, t.name,
          expected == 0
              ? absl::StrCat("data offsets ", range, " do not start at 0: the first tensor must")
              : absl::StrCat("data offsets ", range, " leave a gap after byte ", expected,
                             " of the data section"));
    }
    if (t.begin < expected) {
      return tensor_error(file_name, t.name,
                          absl::StrCat("data offsets ", range,
                                       " overlap the previous tensor, which ends at ", expected));
    }
    if (t.end > data_bytes) {
      return tensor_error(file_name, t.name,
                          absl::StrCat("data offsets ", range, " run past the end of the ",
                                       data_bytes, "-byte data section"));
    }
    expected = t.end;
  }
  if (expected != data_bytes) {
    return header_error(
        file_name, absl::StrCat(data_bytes - expected, " trailing bytes after the last tensor",
                                " (tensors cover ", expected, " of ", data_bytes, " data bytes)"));
  }
  return header;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& file) {
  absl::StatusOr<MappedFile> mapped = MappedFile::open(file);
  if (!mapped.ok()) return mapped.status();
  absl::StatusOr<SafetensorsHeader> header =
      parse_safetensors_header(mapped->data(), mapped->size(), file.string());
  if (!header.ok()) return header.status();
  SafetensorsFile result;
  result.mapped_ = *std::move(mapped);
  result.header_ = *std::move(header);
  return result;
}

std::map<std::string, std::string> default_safetensors_metadata() { return {{"format", "pt"}}; }

absl::Status write_safetensors(const std::filesystem::path& file,
                               const std::vector<SafetensorsWriteEntry>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  const std::string file_name = file.string();
  // ordered_json keeps insertion order, so the header lists tensors in file order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) {
      if (!is_valid_utf8(k) || !is_valid_utf8(v)) {
        return header_error(file_name, "__metadata__ entry is not valid UTF-8");
      }
      meta[k] = v;
    }
    header[kMetadataKey] = std::move(meta);
  }
  std::set<std::string> names;
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const SafetensorsWriteEntry& t : tensors) {
    if (t.name == kMetadataKey || !is_valid_utf8(t.name)) {
      return tensor_error(file_name, t.name, "name is reserved or not valid UTF-8");
    }
    if (!names.insert(t.name).second) return tensor_error(file_name, t.name, "duplicate name");
    const bool same = t.dtype == t.source_dtype;
    const bool narrowing =
        t.source_dtype == DType::kF32 && (t.dtype == DType::kF16 || t.dtype == DType::kBF16);
    if (!same && !narrowing) {
      return tensor_error(file_name, t.name,
                          absl::StrCat("cannot store ", dtype_name(t.source_dtype), " data as ",
                                       dtype_name(t.dtype)));
    }
    const int64_t numel = checked_numel(t.shape);
    const uint64_t element = dtype_size(t.dtype);
    if (numel < 0 ||
        static_cast<uint64_t>(numel) > std::numeric_limits<uint64_t>::max() / element - offset) {
      return tensor_error(file_name, t.name, "invalid shape or byte size overflow");
    }
    if (numel > 0 && t.source == nullptr) return tensor_error(file_name, t.name, "no data");
    const uint64_t nbytes = static_cast<uint64_t>(numel) * element;
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    sizes.push_back(nbytes);
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((kHeaderAlignment - text.size() % kHeaderAlignment) % kHeaderAlignment, ' ');

  return write_file_atomically(file, [&](AtomicFileWriter& w) -> absl::Status {
    uint8_t prefix[kLengthPrefixBytes];
    const uint64_t n = text.size();
    for (size_t i = 0; i < kLengthPrefixBytes; ++i) prefix[i] = static_cast<uint8_t>(n >> (8 * i));
    if (absl::Status s = w.write(prefix, sizeof prefix); !s.ok()) return s;
    if (absl::Status s = w.write(text.data(), text.size()); !s.ok()) return s;
    std::vector<uint8_t> scratch;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const SafetensorsWriteEntry& t = tensors[i];
      if (t.dtype == t.source_dtype) {
        if (absl::Status s = w.write(t.source, sizes[i]); !s.ok()) return s;
        continue;
      }
      const size_t element = dtype_size(t.dtype);
      const size_t numel = sizes[i] / element;
      const auto* src = static_cast<const float*>(t.source);
      scratch.resize(std::min(numel, kConversionChunkElements) * element);
      for (size_t start = 0; start < numel; start += kConversionChunkElements) {
        const size_t count = std::min(kConversionChunkElements, numel - start);
        convert_from_f32(t.dtype, src + start, scratch.data(), count);
        if (absl::Status s = w.write(scratch.data(), count * element); !s.ok()) return s;
      }
    }
    return absl::OkStatus();
  });
}

}  // namespace engine
