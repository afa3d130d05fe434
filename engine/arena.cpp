#include "engine/arena.h"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/large_pages.h"

namespace engine {

namespace {
constexpr size_t kAlignBytes = 64;
}  // namespace

void ParameterArena::FreeDeleter::operator()(std::byte* p) const { std::free(p); }

absl::Status ParameterArena::declare(std::string name, std::vector<int64_t> shape) {
  if (allocated()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot declare parameter ", name, ": arena already allocated"));
  }
  if (index_.count(name) != 0) {
    return absl::AlreadyExistsError(absl::StrCat("duplicate parameter name: ", name));
  }
  const int64_t numel = checked_numel(shape);
  if (numel < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid shape ", shape_string(shape), " for parameter ", name));
  }
  const int64_t start =
      (size_elements_ + kAlignElements - 1) / kAlignElements * kAlignElements;
  const int64_t limit =
      std::numeric_limits<int64_t>::max() / static_cast<int64_t>(dtype_size(dtype_)) - numel;
  if (start > limit) {
    return absl::ResourceExhaustedError(absl::StrCat("arena size overflow at parameter ", name));
  }
  index_.emplace(name, params_.size());
  params_.push_back(ParameterInfo{std::move(name), std::move(shape), start, numel});
  size_elements_ = start + numel;
  return absl::OkStatus();
}

absl::Status ParameterArena::allocate() {
  if (allocated()) return absl::FailedPreconditionError("arena already allocated");
  size_t bytes = size_bytes();
  bytes = (bytes + kAlignBytes - 1) / kAlignBytes * kAlignBytes;
  if (bytes == 0) bytes = kAlignBytes;
  auto* p = static_cast<std::byte*>(allocate_large(bytes, kAlignBytes));
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate parameter arena of ", bytes, " bytes"));
  }
  std::memset(p, 0, bytes);
  storage_.reset(p);
  return absl::OkStatus();
}

bool ParameterArena::contains(std::string_view name) const {
  return index_.count(std::string(name)) != 0;
}

int64_t ParameterArena::parameter_elements() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.numel;
  return n;
}

absl::StatusOr<TensorView> ParameterArena::view(std::string_view name) const {
  auto it = index_.find(std::string(name));
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("no parameter named ", std::string(name)));
  }
  if (!allocated()) {
    return absl::FailedPreconditionError(
        absl::StrCat("parameter ", std::string(name), " viewed before the arena was allocated"));
  }
  return view(params_[it->second]);
}

TensorView ParameterArena::view(const ParameterInfo& p) const {
  TensorView v;
  v.name = p.name;
  v.dtype = dtype_;
  v.shape = p.shape;
  v.strides = contiguous_strides(p.shape);
  v.data = const_cast<std::byte*>(storage_.get()) +
           static_cast<size_t>(p.offset) * dtype_size(dtype_);
  v.arena_offset = p.offset;
  return v;
}

}  // namespace engine
