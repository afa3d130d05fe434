// Checkpoint directories of a training run; contract in model/training_checkpoint.h.
#include "model/training_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/io.h"
#include "model/checkpoint_manifest.h"
#include "model/model_directory.h"

namespace engine::run_checkpoint {

namespace fs = std::filesystem;

namespace {

// Identifies the optimizer-state file and its layout version.
constexpr char kOptimizerMagic[8] = {'E', 'N', 'G', 'O', 'P', 'T', '0', '1'};
constexpr char kMastersMagic[8] = {'E', 'N', 'G', 'M', 'S', 'T', '0', '1'};

absl::Status errno_error(const std::string& what, const fs::path& path) {
  return absl::InternalError(absl::StrCat(path.string(), ": ", what, ": ", std::strerror(errno)));
}

absl::Status fsync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return errno_error("open directory", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return errno_error("fsync directory", dir);
  return absl::OkStatus();
}

absl::Status write_optimizer_state(const fs::path& file, Trainer& trainer) {
  return write_file_atomically(file, [&](AtomicFileWriter& w) -> absl::Status {
    const int64_t header[2] = {trainer.trainable_count(), trainer.step_count()};
    const int64_t moments = static_cast<int64_t>(trainer.first_moment().size());
    if (absl::Status s = w.write(kOptimizerMagic, sizeof(kOptimizerMagic)); !s.ok()) return s;
    if (absl::Status s = w.write(header, sizeof(header)); !s.ok()) return s;
    if (absl::Status s = w.write(&moments, sizeof(moments)); !s.ok()) return s;
    if (absl::Status s = w.write(trainer.first_moment().data(), moments * sizeof(float)); !s.ok()) {
      return s;
    }
    return w.write(trainer.second_moment().data(), moments * sizeof(float));
  });
}

}  // namespace

absl::StatusOr<std::vector<float>> read_masters(const fs::path& file, int64_t count) {
  absl::StatusOr<MappedFile> f = MappedFile::open(file);
  if (!f.ok()) return f.status();
  const size_t want = sizeof(kMastersMagic) + static_cast<size_t>(count) * sizeof(float);
  if (f->size() != want || std::memcmp(f->data(), kMastersMagic, sizeof(kMastersMagic)) != 0) {
    return absl::DataLossError(absl::StrCat(file.string(), ": not the masters of ", count,
                                            " trainable elements (", f->size(),
                                            " bytes, expected ", want, ")"));
  }
  std::vector<float> masters(static_cast<size_t>(count));
  std::memcpy(masters.data(), f->data() + sizeof(kMastersMagic), masters.size() * sizeof(float));
  return masters;
}

absl::Status read_optimizer_state(const fs::path& file, Trainer& trainer, int64_t step) {
  absl::StatusOr<MappedFile> f = MappedFile::open(file);
  if (!f.ok()) return f.status();
  const int64_t moments = static_cast<int64_t>(trainer.first_moment().size());
  const size_t want = sizeof(kOptimizerMagic) + 3 * sizeof(int64_t) + 2 * moments * sizeof(float);
  if (f->size() != want || std::memcmp(f->data(), kOptimizerMagic, sizeof(kOptimizerMagic)) != 0) {
    return absl::DataLossError(absl::StrCat(file.string(), ": not an optimizer state of ",
                                            trainer.trainable_count(), " trainable elements (",
                                            f->size(), " bytes, expected ", want, ")"));
  }
  int64_t header[3];
  std::memcpy(header, f->data() + sizeof(kOptimizerMagic), sizeof(header));
  if (header[0] != trainer.trainable_count() || header[1] != step || header[2] != moments) {
    return absl::DataLossError(
        absl::StrCat(file.string(), ": holds ", header[0], " trainable elements at step ",
                     header[1], ", expected ", trainer.trainable_count(), " at step ", step));
  }
  const uint8_t* body = f->data() + sizeof(kOptimizerMagic) + sizeof(header);
  std::memcpy(trainer.first_moment().data(), body, moments * sizeof(float));
  std::memcpy(trainer.second_moment().data(), body + moments * sizeof(float),
              moments * sizeof(float));
  trainer.set_step_count(step);
  return absl::OkStatus();
}

absl::Status save_checkpoint(const fs::path& out, const std::string& name, const BloomModel& model,
                             Trainer& trainer, const nlohmann::json& state,
                             const nlohmann::json* plan, DType dtype) {
  const fs::path tmp = out / (".tmp-" + name);
  const fs::path target = out / name;
  const fs::path old = out / (".old-" + name);
  auto fail = [&](const absl::Status& s) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    return absl::Status(s.code(), absl::StrCat("cannot save checkpoint ", target.string(), ": ",
                                               std::string(s.message())));
  };
  std::error_code ec;
  fs::remove_all(tmp, ec);
  if (!fs::create_directories(tmp, ec) && ec) {
    return fail(absl::InternalError(absl::StrCat(tmp.string(), ": cannot create: ", ec.message())));
  }
  if (absl::Status s = save_model_directory(model, tmp, dtype); !s.ok()) return fail(s);
  std::vector<std::string> trainer_files = {kOptimizerFile, kStateFile};
  if (dtype != DType::kF32) {
    std::vector<float> masters;
    if (absl::Status s = trainer.download_masters(masters); !s.ok()) return fail(s);
    trainer_files.push_back(kMastersFile);
    if (absl::Status s = write_file_atomically(
            tmp / kMastersFile,
            [&](AtomicFileWriter& w) -> absl::Status {
              if (absl::Status s = w.write(kMastersMagic, sizeof(kMastersMagic)); !s.ok()) {
                return s;
              }
              return w.write(masters.data(), masters.size() * sizeof(float));
            });
        !s.ok()) {
      return fail(s);
    }
  }
  if (absl::Status s = write_optimizer_state(tmp / kOptimizerFile, trainer); !s.ok()) {
    return fail(s);
  }
  if (plan != nullptr) {
    trainer_files.push_back("plan.json");
    if (absl::Status s = write_string_atomically(tmp / "plan.json", plan->dump(2) + "\n");
        !s.ok()) {
      return fail(s);
    }
  }
  if (absl::Status s = write_string_atomically(tmp / kStateFile, state.dump(2) + "\n"); !s.ok()) {
    return fail(s);
  }
  if (absl::Status s = extend_manifest(tmp, trainer_files); !s.ok()) return fail(s);
  // A directory cannot be renamed over a non-empty one: move the old one aside first.
  fs::remove_all(old, ec);
  if (fs::exists(target)) {
    fs::rename(target, old, ec);
    if (ec) {
      return fail(absl::InternalError(absl::StrCat(target.string(), ": rename: ", ec.message())));
    }
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    std::error_code ignored;
    fs::rename(old, target, ignored);  // the previous checkpoint back in place
    return fail(absl::InternalError(absl::StrCat(tmp.string(), ": rename: ", ec.message())));
  }
  if (absl::Status s = fsync_directory(out); !s.ok()) return s;
  fs::remove_all(old, ec);
  return absl::OkStatus();
}

int64_t last_checkpoint(const fs::path& out) {
  int64_t best = -1;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(out, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("step_", 0) != 0) continue;
    const std::string digits = name.substr(5);
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    if (!fs::exists(e.path() / kStateFile)) continue;
    best = std::max<int64_t>(best, std::stoll(digits));
  }
  return best;
}

}  // namespace engine::run_checkpoint
