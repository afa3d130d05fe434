// File I/O primitives with the guarantees the engine's checkpoints rely on.
// Contract:
//  - MappedFile maps a whole file read-only (zero-copy); an empty file maps to (nullptr, 0).
//    The mapping lives as long as the object; it is move-only.
//  - write_file_atomically writes a file so that readers see either the old file or the complete
//    new one, never a mix: the bytes go to a temporary file in the target's own directory (so the
//    final rename never crosses file systems), which is fsynced, renamed over the target, and then
//    the directory itself is fsynced so the rename survives a power loss. On any failure the
//    temporary file is removed and the old target is left untouched.
// Every error names the path at fault and the failing system call's reason.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace engine {

class MappedFile {
 public:
  static absl::StatusOr<MappedFile> open(const std::filesystem::path& file);

  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }
  // Drops the whole pages inside [data() + offset, data() + offset + length) from the process's
  // resident memory once the caller is done with them (the kernel's page cache keeps them; a
  // later read faults them in again from the file, unchanged). Loading copies every tensor into
  // the arena: releasing each one after its copy keeps the mapping from doubling the peak.
  void release(size_t offset, size_t length) const;

 private:
  void unmap();

  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::filesystem::path path_;
};

// Sequential writer handed to the body of write_file_atomically.
class AtomicFileWriter {
 public:
  // Appends bytes; errors name the temporary file's target.
  absl::Status write(const void* data, size_t size);
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  friend absl::Status write_file_atomically(const std::filesystem::path&,
                                            const std::function<absl::Status(AtomicFileWriter&)>&);
  AtomicFileWriter(int fd, std::filesystem::path target) : fd_(fd), target_(std::move(target)) {}

  int fd_;
  std::filesystem::path target_;
  uint64_t bytes_written_ = 0;
};

// Runs `body` against a temporary file next to `target`, then commits it atomically (see the
// file contract). If `body` returns an error, that error is returned and nothing is committed.
absl::Status write_file_atomically(const std::filesystem::path& target,
                                   const std::function<absl::Status(AtomicFileWriter&)>& body);

// write_file_atomically for an in-memory string.
absl::Status write_string_atomically(const std::filesystem::path& target,
                                     const std::string& contents);

// Reads a whole (small: a config, a report, a tokenizer) file into memory. A file that cannot be
// opened is NotFound "<path>: cannot open <what>" ("<path>: cannot open" when `what` is empty); a
// failed read is DataLoss "<path>: read error".
absl::StatusOr<std::string> read_file(const std::filesystem::path& path,
                                      const std::string& what = "");

// Copies `source` to `target` atomically (the target's old contents survive any failure).
absl::Status copy_file_atomically(const std::filesystem::path& source,
                                  const std::filesystem::path& target);

// Test-only fault injection; the engine never calls it. The `nth` call of AtomicFileWriter::write
// from now on (1 = the next one) fails as if write(2) had failed with `err` (default ENOSPC: a full
// disk), then injection turns itself off; 0 turns it off at once. The countdown is process-wide.
void fail_nth_write_for_testing(int64_t nth, int err = ENOSPC);

}  // namespace engine
