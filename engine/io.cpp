#include "engine/io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace engine {

namespace {

// Permissions of committed files: what a plain `open(..., 0666)` under the usual 022 umask gives.
// mkstemp creates 0600 files, which would make checkpoints unreadable to other users.
constexpr mode_t kCommittedFileMode = 0644;

// fail_nth_write_for_testing's countdown (0 = off) and the error it injects.
std::atomic<int64_t> injected_write_countdown{0};
std::atomic<int> injected_write_errno{ENOSPC};

std::string errno_text(int err) { return std::strerror(err); }

absl::Status sys_error(const std::filesystem::path& path, const char* what, int err) {
  return absl::InternalError(absl::StrCat(path.string(), ": ", what, ": ", errno_text(err)));
}

// Closes a descriptor on scope exit unless released.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

absl::Status fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return sys_error(dir, "cannot open directory for fsync", errno);
  FdCloser closer(fd);
  if (::fsync(fd) != 0) return sys_error(dir, "fsync of directory failed", errno);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MappedFile> MappedFile::open(const std::filesystem::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error(file, "cannot open", errno);
  FdCloser closer(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return sys_error(file, "cannot stat", errno);
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(file.string(), ": not a regular file"));
  }
  MappedFile mapped;
  mapped.path_ = file;
  mapped.size_ = static_cast<size_t>(st.st_size);
  if (mapped.size_ == 0) return mapped;  // mmap rejects empty ranges; an empty file has no bytes
  void* p = ::mmap(nullptr, mapped.size_, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) return sys_error(file, "mmap failed", errno);
  mapped.data_ = static_cast<const uint8_t*>(p);
  return mapped;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      path_(std::move(other.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unmap();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    path_ = std::move(other.path_);
  }
  return *this;
}

MappedFile::~MappedFile() { unmap(); }

void MappedFile::release(size_t offset, size_t length) const {
  if (data_ == nullptr || offset >= size_) return;
  length = std::min(length, size_ - offset);
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data_) + offset;
  const uintptr_t first = (begin + page - 1) / page * page;  // partial pages stay: neighbours
  const uintptr_t last = (begin + length) / page * page;     // may still be needed
  // Advisory: a failure only means the pages stay resident, so the result is not an error.
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

void MappedFile::unmap() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

void fail_nth_write_for_testing(int64_t nth, int err) {
  injected_write_errno.store(err);
  injected_write_countdown.store(nth > 0 ? nth : 0);
}

absl::Status AtomicFileWriter::write(const void* data, size_t size) {
  if (injected_write_countdown.load(std::memory_order_relaxed) > 0 &&
      injected_write_countdown.fetch_sub(1) == 1) {
    return sys_error(target_, "write failed", injected_write_errno.load());
  }
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error(target_, "write failed", errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
    bytes_written_ += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status write_file_atomically(const std::filesystem::path& target,
                                   const std::function<absl::Status(AtomicFileWriter&)>& body) {
  std::filesystem::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  // A dot-prefixed name keeps a half-written file out of globs such as *.safetensors.
  std::string temp_name = ".";
  temp_name += target.filename().string();
  temp_name += ".tmp.XXXXXX";
  const std::string pattern = (dir / temp_name).string();
  std::vector<char> name(pattern.begin(), pattern.end());
  name.push_back('\0');
  const int fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) return sys_error(target, "cannot create temporary file", errno);
  const std::filesystem::path temp(name.data());
  FdCloser closer(fd);

  auto commit = [&]() -> absl::Status {
    AtomicFileWriter writer(fd, target);
    if (absl::Status s = body(writer); !s.ok()) return s;
    if (::fchmod(fd, kCommittedFileMode) != 0) return sys_error(target, "fchmod failed", errno);
    if (::fsync(fd) != 0) return sys_error(target, "fsync failed", errno);
    if (::close(closer.release()) != 0) return sys_error(target, "close failed", errno);
    if (::rename(temp.c_str(), target.c_str()) != 0) {
      return sys_error(target, "cannot rename temporary file over", errno);
    }
    return absl::OkStatus();
  };
  absl::Status status = commit();
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  return fsync_directory(dir);
}

absl::Status write_string_atomically(const std::filesystem::path& target,
                                     const std::string& contents) {
  return write_file_atomically(
      target, [&](AtomicFileWriter& w) { return w.write(contents.data(), contents.size()); });
}

absl::StatusOr<std::string> read_file(const std::filesystem::path& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open", what.empty() ? "" : " ", what));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path.string(), ": read error"));
  return text.str();
}

absl::Status copy_file_atomically(const std::filesystem::path& source,
                                  const std::filesystem::path& target) {
  absl::StatusOr<MappedFile> in = MappedFile::open(source);
  if (!in.ok()) return in.status();
  return write_file_atomically(
      target, [&](AtomicFileWriter& w) { return w.write(in->data(), in->size()); });
}

}  // namespace engine
