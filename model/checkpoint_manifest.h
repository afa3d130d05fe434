// Content manifests of model and checkpoint directories (docs/FORMATS.md, "Manifest").
// Contract:
//  - A manifest is DIR/manifest.json listing files directly inside DIR, each with its size and
//    SHA-256. It is written after the files it lists, atomically (engine/io.h), so a directory
//    whose manifest exists has all its listed files complete.
//  - verify_manifest_files reads every byte of each file it checks once, streaming through the
//    mapped file, and refuses the first file whose size or content differs with one line naming
//    the file: "<dir>/<name>: content hash mismatch (manifest says <hex>, file has <hex>)".
//  - A directory without a manifest (a Hugging Face download, or one written before manifests
//    existed) has nothing to verify: read_manifest returns std::nullopt, not an error.
//  - Names in a manifest are plain file names (no directory part); anything else is refused, so a
//    hostile manifest cannot make the engine read outside DIR.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/arena.h"

namespace engine {

inline constexpr char kManifestFile[] = "manifest.json";

struct ManifestEntry {
  std::string name;  // a file directly inside the directory
  uint64_t size = 0;
  std::string sha256;  // lower-case hex
};

struct Manifest {
  std::vector<ManifestEntry> files;  // in the order written
  const ManifestEntry* find(const std::string& name) const;
};

// Hashes DIR/name.
absl::StatusOr<ManifestEntry> hash_manifest_entry(const std::filesystem::path& dir,
                                                  const std::string& name);

// Writes DIR/manifest.json listing `names` (hashed now), replacing any previous manifest.
absl::Status write_manifest(const std::filesystem::path& dir, const std::vector<std::string>& names);

// Adds `names` (hashed now) to DIR's existing manifest, replacing entries of the same name; the
// entries already listed are kept as they are (not re-hashed). Without a manifest, writes one.
absl::Status extend_manifest(const std::filesystem::path& dir,
                             const std::vector<std::string>& names);

// DIR's manifest, or std::nullopt when DIR has none. A malformed manifest is an error naming the
// field.
absl::StatusOr<std::optional<Manifest>> read_manifest(const std::filesystem::path& dir);

// Checks the files `names` against the manifest (each must be listed), or every listed file when
// `names` is empty.
absl::Status verify_manifest_files(const std::filesystem::path& dir, const Manifest& manifest,
                                   const std::vector<std::string>& names = {});

// read_manifest + verify_manifest_files over every listed file. With `required`, a missing
// manifest is an error too.
absl::Status verify_directory(const std::filesystem::path& dir, bool required);

// For a training checkpoint: its manifest must exist, and every listed file that
// load_model_directory does not read (optimizer state, trainer state, plan) is verified here; the
// loader verifies the rest when it reads them, so each byte is read once.
absl::Status verify_checkpoint_files(const std::filesystem::path& dir);

// SHA-256 over the parameters of an f32 arena in declaration order (each parameter's elements,
// without the alignment padding between them): identifies a model's weights independently of
// how they were stored (dtype conversion aside) or sharded.
std::string arena_sha256(const ParameterArena& arena);

}  // namespace engine
