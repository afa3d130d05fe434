// DeviceArray<T>: an owned array of T in a backend's memory (engine/backend.h `allocate`).
// Contract: `resize` discards the contents and allocates `n` zeroed elements on the given backend
// (an error when the device is full, never an exception); the array frees its memory with the
// backend's deallocator, so it may outlive the Backend object, but copies need that object alive. On the CPU backend the memory is ordinary host memory, so data() may be
// read directly; on a device it may only be passed to that backend's ops and copies. Move-only.
// Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/backend.h"

namespace engine {

template <typename T>
class DeviceArray {
 public:
  using value_type = T;

  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept { swap(o); }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      release();
      swap(o);
    }
    return *this;
  }
  ~DeviceArray() { release(); }

  absl::Status resize(Backend& backend, int64_t n) {
    release();
    if (n < 0) return absl::InvalidArgumentError(absl::StrCat("DeviceArray: size ", n));
    absl::StatusOr<void*> p = backend.allocate(static_cast<size_t>(n) * sizeof(T));
    if (!p.ok()) return p.status();
    backend_ = &backend;
    free_ = backend.deallocator();
    data_ = static_cast<T*>(*p);
    size_ = n;
    return absl::OkStatus();
  }
  // resize(backend, host.size()) and the host values copied in.
  absl::Status upload(Backend& backend, std::span<const T> host) {
    if (absl::Status s = resize(backend, static_cast<int64_t>(host.size())); !s.ok()) return s;
    return backend.copy_to_device(data_, host.data(), bytes());
  }
  // The whole array into `host` (resized).
  absl::Status download(std::vector<T>& host) const {
    host.resize(static_cast<size_t>(size_));
    if (size_ == 0) return absl::OkStatus();
    return backend_->copy_to_host(host.data(), data_, bytes());
  }
  absl::Status zero() { return size_ == 0 ? absl::OkStatus() : backend_->fill_zero(data_, bytes()); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t bytes() const { return static_cast<size_t>(size_) * sizeof(T); }
  Backend* backend() const { return backend_; }

 private:
  void release() {
    if (free_ != nullptr) free_(data_);
    backend_ = nullptr;
    free_ = nullptr;
    data_ = nullptr;
    size_ = 0;
  }
  void swap(DeviceArray& o) noexcept {
    std::swap(backend_, o.backend_);
    std::swap(free_, o.free_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
  }

  Backend* backend_ = nullptr;
  Backend::Deallocator free_ = nullptr;
  T* data_ = nullptr;
  int64_t size_ = 0;
};

}  // namespace engine
