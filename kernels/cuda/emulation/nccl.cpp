// NCCL between the ranks' processes on one machine, for the emulation build (include/nccl.h).
// The unique id names a POSIX shared-memory group: one control segment (a process-shared barrier
// of atomic counters) and one data segment per rank, grown as collectives need. A collective is:
// every rank copies its input into its segment, barrier, every rank reduces all segments in rank
// order into its output, barrier (so no segment is rewritten while a peer still reads it). A rank
// that does not arrive within ENGINE_NCCL_EMULATION_TIMEOUT_S seconds (default 120) makes the
// collective fail with ncclRemoteError, so a lost rank is an error, not a hang.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/emulation/include/nccl.h"

namespace {

constexpr int kMaxRanks = 64;
constexpr auto kSpinPause = std::chrono::microseconds(20);

struct Control {
  std::atomic<uint64_t> arrived;     // arrivals at the current barrier
  std::atomic<uint64_t> generation;  // completed barriers
  std::atomic<int> attached;         // ranks that have mapped the group
  std::atomic<uint64_t> bytes[kMaxRanks];  // each rank's data segment size
};
static_assert(std::atomic<uint64_t>::is_always_lock_free, "process-shared atomics");

double timeout_seconds() {
  if (const char* env = std::getenv("ENGINE_NCCL_EMULATION_TIMEOUT_S")) return std::atof(env);
  return 120.0;
}

size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
  }
  return 0;
}

template <typename T>
void reduce_into(T* out, const std::vector<const void*>& inputs, size_t count, ncclRedOp_t op) {
  for (size_t i = 0; i < count; ++i) {
    T acc = static_cast<const T*>(inputs[0])[i];
    for (size_t r = 1; r < inputs.size(); ++r) {
      const T v = static_cast<const T*>(inputs[r])[i];
      switch (op) {
        case ncclSum: case ncclAvg: acc = acc + v; break;
        case ncclProd: acc = acc * v; break;
        case ncclMax: acc = v > acc ? v : acc; break;
        case ncclMin: acc = v < acc ? v : acc; break;
      }
    }
    if (op == ncclAvg) acc = static_cast<T>(acc / static_cast<T>(inputs.size()));
    out[i] = acc;
  }
}

}  // namespace

struct ncclComm {
  std::string name;
  int rank = 0, nranks = 0;
  Control* control = nullptr;
  ncclResult_t async = ncclSuccess;
  std::vector<void*> maps;      // each rank's data segment, as mapped here
  std::vector<size_t> mapped;   // and the size of that mapping

  std::string segment(int r) const { return name + "-" + std::to_string(r); }

  // Waits for every rank; false on a timeout.
  bool barrier() {
    const uint64_t gen = control->generation.load();
    if (control->arrived.fetch_add(1) + 1 == static_cast<uint64_t>(nranks)) {
      control->arrived.store(0);
      control->generation.fetch_add(1);
      return true;
    }
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration<double>(timeout_seconds());
    while (control->generation.load() == gen) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(kSpinPause);
    }
    return true;
  }

  // Makes this rank's segment at least `bytes` long.
  bool reserve(size_t bytes) {
    if (bytes <= mapped[rank] && maps[rank] != nullptr) return true;
    const int fd = shm_open(segment(rank).c_str(), O_RDWR | O_CREAT, 0600);
    if (fd < 0) return false;
    const bool ok = ftruncate(fd, static_cast<off_t>(bytes)) == 0;
    void* p = ok ? mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    close(fd);
    if (p == MAP_FAILED) return false;
    if (maps[rank] != nullptr) munmap(maps[rank], mapped[rank]);
    maps[rank] = p;
    mapped[rank] = bytes;
    control->bytes[rank].store(bytes);
    return true;
  }

  // Maps every peer's segment at its current size.
  bool map_peers() {
    for (int r = 0; r < nranks; ++r) {
      if (r == rank) continue;
      const size_t bytes = control->bytes[r].load();
      if (maps[r] != nullptr && mapped[r] == bytes) continue;
      if (maps[r] != nullptr) munmap(maps[r], mapped[r]);
      maps[r] = nullptr;
      const int fd = shm_open(segment(r).c_str(), O_RDWR, 0600);
      if (fd < 0) return false;
      void* p = mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
      close(fd);
      if (p == MAP_FAILED) return false;
      maps[r] = p;
      mapped[r] = bytes;
    }
    return true;
  }

  ncclResult_t fail(ncclResult_t r) {
    async = r;
    return r;
  }

  void release(bool unlink_all) {
    for (int r = 0; r < nranks; ++r) {
      if (maps[r] != nullptr) munmap(maps[r], mapped[r]);
    }
    shm_unlink(segment(rank).c_str());
    if (control != nullptr) {
      const bool last = control->attached.fetch_sub(1) == 1;
      munmap(control, sizeof(Control));
      if (last || unlink_all) shm_unlink(name.c_str());
    }
  }
};

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return ncclInvalidArgument;
  std::random_device rd;
  const uint64_t token = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(getpid());
  std::memset(id->internal, 0, sizeof id->internal);
  std::snprintf(id->internal, sizeof id->internal, "/engine-nccl-emulation-%016llx",
                static_cast<unsigned long long>(token));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t*) {
  if (comm == nullptr || nranks < 1 || nranks > kMaxRanks || rank < 0 || rank >= nranks) {
    return ncclInvalidArgument;
  }
  auto* c = new ncclComm;
  c->name.assign(id.internal, strnlen(id.internal, sizeof id.internal));
  if (c->name.rfind("/engine-nccl-emulation-", 0) != 0) {
    delete c;
    return ncclInvalidArgument;
  }
  c->rank = rank, c->nranks = nranks;
  c->maps.assign(nranks, nullptr);
  c->mapped.assign(nranks, 0);
  const int fd = shm_open(c->name.c_str(), O_RDWR | O_CREAT, 0600);
  if (fd < 0) {
    delete c;
    return ncclSystemError;
  }
  // A new segment reads as zeros: every counter starts at 0 whichever rank creates it.
  const bool ok = ftruncate(fd, sizeof(Control)) == 0;
  void* p = ok ? mmap(nullptr, sizeof(Control), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  close(fd);
  if (p == MAP_FAILED) {
    delete c;
    return ncclSystemError;
  }
  c->control = static_cast<Control*>(p);
  c->control->attached.fetch_add(1);
  if (!c->reserve(sizeof(uint64_t)) || !c->barrier()) {
    c->release(true);
    delete c;
    return ncclRemoteError;
  }
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  comm->release(false);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  comm->release(true);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* state) {
  if (comm == nullptr || state == nullptr) return ncclInvalidArgument;
  *state = comm->async;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error (emulated NCCL: shared memory)";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or a rank did not arrive in time";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result code";
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  if (comm == nullptr || type_size(type) == 0) return ncclInvalidArgument;
  if (comm->async != ncclSuccess) return comm->async;
  const size_t bytes = count * type_size(type);
  if (!comm->reserve(bytes > 0 ? bytes : 1)) return comm->fail(ncclSystemError);
  if (bytes > 0) std::memcpy(comm->maps[comm->rank], send, bytes);
  if (!comm->barrier()) return comm->fail(ncclRemoteError);
  if (!comm->map_peers()) return comm->fail(ncclSystemError);
  const std::vector<const void*> inputs(comm->maps.begin(), comm->maps.end());
  switch (type) {
    case ncclFloat32: reduce_into(static_cast<float*>(recv), inputs, count, op); break;
    case ncclFloat64: reduce_into(static_cast<double*>(recv), inputs, count, op); break;
    case ncclInt32: reduce_into(static_cast<int32_t*>(recv), inputs, count, op); break;
    case ncclUint32: reduce_into(static_cast<uint32_t*>(recv), inputs, count, op); break;
    case ncclInt64: reduce_into(static_cast<int64_t*>(recv), inputs, count, op); break;
    case ncclUint64: reduce_into(static_cast<uint64_t*>(recv), inputs, count, op); break;
    case ncclInt8: reduce_into(static_cast<int8_t*>(recv), inputs, count, op); break;
    case ncclUint8: reduce_into(static_cast<uint8_t*>(recv), inputs, count, op); break;
    case ncclFloat16: return comm->fail(ncclInvalidArgument);  // not used by the engine
  }
  if (!comm->barrier()) return comm->fail(ncclRemoteError);
  return ncclSuccess;
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t) {
  if (comm == nullptr || type_size(type) == 0 || root < 0 || root >= comm->nranks) {
    return ncclInvalidArgument;
  }
  if (comm->async != ncclSuccess) return comm->async;
  const size_t bytes = count * type_size(type);
  if (!comm->reserve(bytes > 0 ? bytes : 1)) return comm->fail(ncclSystemError);
  if (comm->rank == root && bytes > 0) std::memcpy(comm->maps[comm->rank], send, bytes);
  if (!comm->barrier()) return comm->fail(ncclRemoteError);
  if (!comm->map_peers()) return comm->fail(ncclSystemError);
  if (bytes > 0) std::memmove(recv, comm->maps[root], bytes);
  if (!comm->barrier()) return comm->fail(ncclRemoteError);
  return ncclSuccess;
}
