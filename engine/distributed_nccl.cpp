// The NCCL communicator (contract in distributed.h): one GPU per local rank. The trainer's
// compact gradient on a device is reduced in place in GPU memory (all_reduce_average_on_device);
// host buffers (metrics, agreements, a CPU trainer's gradient) are staged through one device
// buffer (host -> device, NCCL, device -> host on a private stream). Completion is polled
// (cudaStreamQuery + ncclCommGetAsyncError) against the timeout; on a timeout the communicator is
// aborted with ncclCommAbort, and when the job was bootstrapped through MPI, an MPI agreement
// with a short timeout names the silent rank(s) (the MPI communicator's roll call). Without
// NCCL (or CUDA) at configure time this file only provides the stub factory.
#include <memory>

#include "absl/strings/str_cat.h"
#include "engine/distributed_backends.h"

#if ENGINE_HAVE_NCCL

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

namespace engine {

namespace {

using Clock = std::chrono::steady_clock;

// How long the MPI agreement that names silent ranks may take after an NCCL timeout.
constexpr double kRollCallSeconds = 5.0;
// Pause between completion polls.
constexpr auto kPollSleep = std::chrono::microseconds(50);

Clock::time_point deadline_after(double seconds) {
  return Clock::now() +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

absl::Status cuda_status(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

absl::Status nccl_status(ncclResult_t r, const std::string& what) {
  if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const LaunchInfo& launch, std::unique_ptr<Communicator> bootstrap,
                   double timeout_s)
      : launch_(launch), bootstrap_(std::move(bootstrap)) {
    timeout_s_ = timeout_s;
  }
  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (broken_) {
        ncclCommAbort(comm_);
      } else {
        ncclCommDestroy(comm_);
      }
    }
    if (device_ != nullptr) cudaFree(device_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status init() {
    int devices = 0;
    if (absl::Status s = cuda_status(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
        !s.ok()) {
      return s;
    }
    if (launch_.local_rank >= devices) {
      return absl::FailedPreconditionError(
          absl::StrCat("nccl: local rank ", launch_.local_rank, " needs GPU ", launch_.local_rank,
                       " but this node has ", devices, " (one GPU per local rank)"));
    }
    if (absl::Status s = cuda_status(cudaSetDevice(launch_.local_rank), "cudaSetDevice");
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            cuda_status(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
        !s.ok()) {
      return s;
    }
    ncclUniqueId id{};
    if (launch_.rank == 0) {
      if (absl::Status s = nccl_status(ncclGetUniqueId(&id), "ncclGetUniqueId"); !s.ok()) return s;
    }
    absl::Status shared =
        bootstrap_ != nullptr
            ? bootstrap_->broadcast(&id, sizeof(id), 0, "NCCL unique id broadcast")
            : tcp_broadcast_from_rank0(launch_, &id, sizeof(id), timeout_s_);
    if (!shared.ok()) return shared;
    // Non-blocking initialisation, so a rank that never joins is a timeout, not a hang.
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r =
        ncclCommInitRankConfig(&comm_, launch_.world_size, id, launch_.rank, &config);
    if (absl::Status s = nccl_status(r, "ncclCommInitRankConfig"); !s.ok()) return s;
    return poll("NCCL communicator initialisation", [] { return cudaSuccess; });
  }

  int rank() const override { return launch_.rank; }
  int world_size() const override { return launch_.world_size; }
  int local_rank() const override { return launch_.local_rank; }
  std::string name() const override { return "nccl"; }

  absl::Status all_reduce_average(float* data, int64_t n, const std::string& what) override {
    return reduce(data, n, ncclFloat, ncclAvg, what);
  }
  absl::Status all_reduce_sum(double* data, int64_t n, const std::string& what) override {
    return reduce(data, n, ncclDouble, ncclSum, what);
  }
  absl::Status agree(uint64_t* words, int64_t n, AgreeOp op, const std::string& what) override {
    return reduce(words, n, ncclUint64, op == AgreeOp::kMin ? ncclMin : ncclMax, what);
  }
  absl::Status broadcast(void* data, int64_t bytes, int root, const std::string& what) override {
    return collective(data, bytes, what, [&](void* dev) {
      return ncclBroadcast(dev, dev, static_cast<size_t>(bytes), ncclChar, root, comm_, stream_);
    });
  }
  bool reduces_device_memory() const override { return true; }
  absl::Status all_reduce_average_on_device(float* data, int64_t n,
                                            const std::string& what) override {
    if (absl::Status s = usable(what); !s.ok()) return s;
    if (n == 0) return absl::OkStatus();
    // The data was written by kernels on the engine's stream, which NCCL's private stream does
    // not wait for: wait here (the caller reads a scalar from the result next anyway).
    if (absl::Status s = cuda_status(cudaDeviceSynchronize(), what); !s.ok()) return s;
    if (absl::Status s = nccl_status(ncclAllReduce(data, data, static_cast<size_t>(n), ncclFloat,
                                                   ncclAvg, comm_, stream_),
                                     what);
        !s.ok()) {
      return s;
    }
    return poll(what, [&] { return cudaStreamQuery(stream_); });
  }
  [[noreturn]] void abort(int exit_code) override {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    if (bootstrap_ != nullptr) bootstrap_->abort(exit_code);
    std::_Exit(exit_code);
  }

 private:
  template <typename T>
  absl::Status reduce(T* data, int64_t n, ncclDataType_t type, ncclRedOp_t op,
                      const std::string& what) {
    return collective(data, n * static_cast<int64_t>(sizeof(T)), what, [&](void* dev) {
      return ncclAllReduce(dev, dev, static_cast<size_t>(n), type, op, comm_, stream_);
    });
  }

  absl::Status usable(const std::string& what) const {
    if (!broken_) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", launch_.rank, ": ", what, ": the communicator failed earlier"));
  }

  // Stages `bytes` of host memory through the device buffer around `enqueue`, then polls.
  template <typename Enqueue>
  absl::Status collective(void* host, int64_t bytes, const std::string& what, Enqueue enqueue) {
    if (absl::Status s = usable(what); !s.ok()) return s;
    if (bytes == 0) return absl::OkStatus();
    if (bytes > device_bytes_) {
      if (device_ != nullptr) cudaFree(device_);
      device_ = nullptr;
      if (absl::Status s = cuda_status(cudaMalloc(&device_, static_cast<size_t>(bytes)),
                                       absl::StrCat(what, ": cudaMalloc"));
          !s.ok()) {
        device_bytes_ = 0;
        return s;
      }
      device_bytes_ = bytes;
    }
    const size_t size = static_cast<size_t>(bytes);
    if (absl::Status s = cuda_status(
            cudaMemcpyAsync(device_, host, size, cudaMemcpyHostToDevice, stream_), what);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = nccl_status(enqueue(device_), what); !s.ok()) return s;
    if (absl::Status s = cuda_status(
            cudaMemcpyAsync(host, device_, size, cudaMemcpyDeviceToHost, stream_), what);
        !s.ok()) {
      return s;
    }
    return poll(what, [&] { return cudaStreamQuery(stream_); });
  }

  // Waits until NCCL reports no pending work and `query()` (the stream's state) is no longer
  // cudaErrorNotReady, or fails at the deadline.
  template <typename Query>
  absl::Status poll(const std::string& what, Query query) {
    ++sequence_;
    const Clock::time_point deadline = deadline_after(timeout_s_);
    while (true) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        broken_ = true;
        return nccl_status(async, absl::StrCat("rank ", launch_.rank, ": ", what));
      }
      if (async == ncclSuccess) {
        const cudaError_t state = query();
        if (state != cudaErrorNotReady) {
          return cuda_status(state, absl::StrCat("rank ", launch_.rank, ": ", what));
        }
      }
      if (Clock::now() >= deadline) break;
      std::this_thread::sleep_for(kPollSleep);
    }
    broken_ = true;
    ncclCommAbort(comm_);
    comm_ = nullptr;
    std::string who = "NCCL cannot tell which rank is missing (no MPI bootstrap to ask)";
    if (bootstrap_ != nullptr) {
      bootstrap_->set_timeout(std::min(kRollCallSeconds, timeout_s_));
      uint64_t word = static_cast<uint64_t>(sequence_);
      absl::Status s = bootstrap_->agree(&word, 1, AgreeOp::kMax, "roll call after NCCL timeout");
      who = s.ok() ? std::string("every rank is alive, so NCCL itself is stuck")
                   : std::string(s.message());
    }
    return absl::DeadlineExceededError(absl::StrCat("rank ", launch_.rank, " of ",
                                                    launch_.world_size, ": ", what,
                                                    " (collective #", sequence_,
                                                    ") did not complete within ", timeout_s_,
                                                    " s; communicator aborted; ", who));
  }

  LaunchInfo launch_;
  std::unique_ptr<Communicator> bootstrap_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* device_ = nullptr;
  int64_t device_bytes_ = 0;
  bool broken_ = false;
  int64_t sequence_ = 0;
};

}  // namespace

bool have_nccl() { return true; }

absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(
    const LaunchInfo& launch, std::unique_ptr<Communicator> bootstrap, double timeout_s) {
  auto comm = std::make_unique<NcclCommunicator>(launch, std::move(bootstrap), timeout_s);
  if (absl::Status s = comm->init(); !s.ok()) return s;
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace engine

#else  // !ENGINE_HAVE_NCCL

namespace engine {

bool have_nccl() { return false; }

absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(
    const LaunchInfo&, std::unique_ptr<Communicator>, double) {
  return absl::UnimplementedError(
      "this build has no NCCL (needs the CUDA toolkit with nccl.h and libnccl)");
}

}  // namespace engine

#endif
