// Content manifests; contract in checkpoint_manifest.h, format in docs/FORMATS.md.
#include "model/checkpoint_manifest.h"

#include <algorithm>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "engine/io.h"
#include "engine/sha256.h"
#include "model/model_directory.h"
#include "nlohmann/json.hpp"

namespace engine {

namespace fs = std::filesystem;

namespace {

constexpr char kFormat[] = "engine-manifest";
constexpr int kVersion = 1;
constexpr char kAlgorithm[] = "sha256";
constexpr size_t kHexDigits = 64;

bool is_plain_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

bool is_lower_hex(const std::string& s) {
  if (s.size() != kHexDigits) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

nlohmann::json manifest_json(const Manifest& m) {
  nlohmann::json files = nlohmann::json::array();
  for (const ManifestEntry& e : m.files) {
    files.push_back({{"name", e.name}, {"size", e.size}, {"sha256", e.sha256}});
  }
  return {{"format", kFormat}, {"version", kVersion}, {"algorithm", kAlgorithm}, {"files", files}};
}

absl::Status write_manifest_file(const fs::path& dir, const Manifest& m) {
  return write_string_atomically(dir / kManifestFile, manifest_json(m).dump(2) + "\n");
}

absl::Status add_entries(const fs::path& dir, const std::vector<std::string>& names, Manifest& m) {
  for (const std::string& name : names) {
    absl::StatusOr<ManifestEntry> e = hash_manifest_entry(dir, name);
    if (!e.ok()) return e.status();
    bool replaced = false;
    for (ManifestEntry& old : m.files) {
      if (old.name == name) old = *e, replaced = true;
    }
    if (!replaced) m.files.push_back(std::move(*e));
  }
  return absl::OkStatus();
}

}  // namespace

const ManifestEntry* Manifest::find(const std::string& name) const {
  for (const ManifestEntry& e : files) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

namespace {

// SHA-256 of a whole mapped file, read in slices that leave the resident set once hashed
// (MappedFile::release): hashing a checkpoint's weights while training must not add their size to
// the process's peak memory.
Sha256Digest sha256_of_file(const MappedFile& f) {
  constexpr size_t kSlice = size_t{64} << 20;
  Sha256 h;
  for (size_t at = 0; at < f.size(); at += kSlice) {
    const size_t n = std::min(kSlice, f.size() - at);
    h.update(f.data() + at, n);
    f.release(at, n);
  }
  return h.digest();
}

}  // namespace

absl::StatusOr<ManifestEntry> hash_manifest_entry(const fs::path& dir, const std::string& name) {
  if (!is_plain_name(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir.string(), ": \"", name, "\" is not a plain file name for a manifest"));
  }
  absl::StatusOr<MappedFile> f = MappedFile::open(dir / name);
  if (!f.ok()) return f.status();
  return ManifestEntry{name, f->size(), to_hex(sha256_of_file(*f))};
}

absl::Status write_manifest(const fs::path& dir, const std::vector<std::string>& names) {
  Manifest m;
  if (absl::Status s = add_entries(dir, names, m); !s.ok()) return s;
  return write_manifest_file(dir, m);
}

absl::Status extend_manifest(const fs::path& dir, const std::vector<std::string>& names) {
  absl::StatusOr<std::optional<Manifest>> existing = read_manifest(dir);
  if (!existing.ok()) return existing.status();
  Manifest m = existing->value_or(Manifest{});
  if (absl::Status s = add_entries(dir, names, m); !s.ok()) return s;
  return write_manifest_file(dir, m);
}

absl::StatusOr<std::optional<Manifest>> read_manifest(const fs::path& dir) {
  const fs::path file = dir / kManifestFile;
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::optional<Manifest>();
  absl::StatusOr<std::string> text = read_file(file);
  if (!text.ok()) return text.status();
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
  auto field_error = [&](const std::string& field, const std::string& what) {
    return absl::DataLossError(absl::StrCat(file.string(), ": field \"", field, "\": ", what));
  };
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat(file.string(), ": not a JSON object"));
  }
  if (!j.contains("format") || j["format"] != kFormat) {
    return field_error("format", absl::StrCat("expected \"", kFormat, "\""));
  }
  if (!j.contains("version") || j["version"] != kVersion) {
    return field_error("version", absl::StrCat("expected ", kVersion));
  }
  if (!j.contains("algorithm") || j["algorithm"] != kAlgorithm) {
    return field_error("algorithm", absl::StrCat("expected \"", kAlgorithm, "\""));
  }
  if (!j.contains("files") || !j["files"].is_array()) {
    return field_error("files", "expected an array");
  }
  Manifest m;
  for (size_t i = 0; i < j["files"].size(); ++i) {
    const nlohmann::json& e = j["files"][i];
    const std::string at = absl::StrCat("files[", i, "]");
    if (!e.is_object()) return field_error(at, "expected an object");
    if (!e.contains("name") || !e["name"].is_string() ||
        !is_plain_name(e["name"].get<std::string>())) {
      return field_error(at + ".name", "expected a plain file name");
    }
    if (!e.contains("size") || !e["size"].is_number_unsigned()) {
      return field_error(at + ".size", "expected a non-negative integer");
    }
    if (!e.contains("sha256") || !e["sha256"].is_string() ||
        !is_lower_hex(e["sha256"].get<std::string>())) {
      return field_error(at + ".sha256", "expected 64 lower-case hex digits");
    }
    ManifestEntry entry{e["name"].get<std::string>(), e["size"].get<uint64_t>(),
                        e["sha256"].get<std::string>()};
    if (m.find(entry.name) != nullptr) {
      return field_error(at + ".name", absl::StrCat("\"", entry.name, "\" is listed twice"));
    }
    m.files.push_back(std::move(entry));
  }
  return std::optional<Manifest>(std::move(m));
}

absl::Status verify_manifest_files(const fs::path& dir, const Manifest& manifest,
                                   const std::vector<std::string>& names) {
  std::vector<const ManifestEntry*> check;
  if (names.empty()) {
    for (const ManifestEntry& e : manifest.files) check.push_back(&e);
  } else {
    for (const std::string& name : names) {
      const ManifestEntry* e = manifest.find(name);
      if (e == nullptr) {
        return absl::DataLossError(absl::StrCat((dir / kManifestFile).string(), ": does not list ",
                                                name, ", which is part of the directory"));
      }
      check.push_back(e);
    }
  }
  for (const ManifestEntry* e : check) {
    const fs::path file = dir / e->name;
    std::error_code ec;
    if (!fs::exists(file, ec)) {
      return absl::DataLossError(
          absl::StrCat(file.string(), ": listed in ", kManifestFile, " but missing"));
    }
    absl::StatusOr<MappedFile> f = MappedFile::open(file);
    if (!f.ok()) return f.status();
    if (f->size() != e->size) {
      return absl::DataLossError(absl::StrCat(file.string(), ": size ", f->size(),
                                              " bytes differs from the manifest's ", e->size));
    }
    const std::string got = to_hex(sha256_of_file(*f));
    if (got != e->sha256) {
      return absl::DataLossError(absl::StrCat(file.string(),
                                              ": content hash mismatch (manifest says ", e->sha256,
                                              ", file has ", got, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status verify_directory(const fs::path& dir, bool required) {
  absl::StatusOr<std::optional<Manifest>> m = read_manifest(dir);
  if (!m.ok()) return m.status();
  if (!m->has_value()) {
    if (!required) return absl::OkStatus();
    return absl::DataLossError(absl::StrCat(dir.string(), ": no ", kManifestFile,
                                            " (incomplete, or written before manifests existed)"));
  }
  return verify_manifest_files(dir, **m);
}

absl::Status verify_checkpoint_files(const fs::path& dir) {
  absl::StatusOr<std::optional<Manifest>> m = read_manifest(dir);
  if (!m.ok()) return m.status();
  if (!m->has_value()) {
    return absl::DataLossError(absl::StrCat(dir.string(), ": no ", kManifestFile,
                                            " (incomplete, or written before manifests existed)"));
  }
  absl::StatusOr<std::vector<std::string>> read_by_loader = model_directory_read_files(dir);
  if (!read_by_loader.ok()) return read_by_loader.status();
  std::vector<std::string> rest;
  for (const ManifestEntry& e : (*m)->files) {
    if (std::find(read_by_loader->begin(), read_by_loader->end(), e.name) ==
        read_by_loader->end()) {
      rest.push_back(e.name);
    }
  }
  if (rest.empty()) return absl::OkStatus();  // an empty list would mean "every file"
  return verify_manifest_files(dir, **m, rest);
}

std::string arena_sha256(const ParameterArena& arena) {
  Sha256 h;
  for (const ParameterInfo& p : arena.parameters()) {
    h.update(arena.base() + p.offset * dtype_size(arena.dtype()),
             static_cast<size_t>(p.numel) * dtype_size(arena.dtype()));
  }
  return to_hex(h.digest());
}

}  // namespace engine
