// Data-parallel communication between training processes ("ranks"): launcher detection from the
// environment, the Communicator interface with its single-process, MPI and NCCL implementations,
// and the deterministic chunk sharding. docs/DISTRIBUTED.md describes the behaviour.
//
// Contract:
// - Every collective is entered by all ranks in the same order. Each one completes within the
//   communicator's current timeout or returns DeadlineExceeded whose message names the rank(s)
//   that did not take part (found by a roll call among the ranks that timed out); the
//   communicator is then unusable and the caller must end the process (abort()). The library
//   never exits and never prints; abort() is for the CLI layer.
// - Results of all_reduce_average / agree are identical on every rank (the reduction is computed
//   once and distributed), so decisions taken from them cannot diverge.
// - The single-process communicator (world size 1) makes every collective the identity, so code
//   written against Communicator runs unchanged without MPI.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace engine {

// How this process was started: which launcher, and its place among the ranks.
struct LaunchInfo {
  std::string launcher = "single";  // "single", "mpi", "slurm" or "torchrun"
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;  // torchrun-style (and Slurm without MPI): the TCP bootstrap address
  int master_port = 0;
};

// Reads the launcher's variables through `get` (getenv in production, a map in tests), in this
// order: Open MPI (OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK), MPICH/PMI (PMI_RANK/PMI_SIZE,
// MPI_LOCALRANKID), Slurm (SLURM_PROCID, SLURM_STEP_NUM_TASKS or SLURM_NTASKS, SLURM_LOCALID),
// torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); none = single process.
// An unparsable or inconsistent value (rank outside [0, world)) is an error naming the variable.
using EnvLookup = std::function<const char*(const char*)>;
absl::StatusOr<LaunchInfo> detect_launch(const EnvLookup& get);
absl::StatusOr<LaunchInfo> detect_launch_from_environment();

enum class AgreeOp { kMin, kMax };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int local_rank() const = 0;
  virtual std::string name() const = 0;  // "single", "mpi", "nccl"

  // In place: data[i] = mean over ranks of data[i]. `what` names the collective in errors.
  virtual absl::Status all_reduce_average(float* data, int64_t n, const std::string& what) = 0;
  // In place: data[i] = sum over ranks (metrics: loss sums, token counts).
  virtual absl::Status all_reduce_sum(double* data, int64_t n, const std::string& what) = 0;
  // In place: words[i] = min or max over ranks. The decision channel: a logical AND is kMin over
  // 0/1 words, equality of a value v is max(v) == ~max(~v).
  virtual absl::Status agree(uint64_t* words, int64_t n, AgreeOp op, const std::string& what) = 0;
  // Copies `bytes` bytes from `root` to every rank.
  virtual absl::Status broadcast(void* data, int64_t bytes, int root, const std::string& what) = 0;
  // Whether all_reduce_average_on_device works: the transport reads and writes GPU memory
  // itself (NCCL). Otherwise a caller holding device memory stages it through the host.
  virtual bool reduces_device_memory() const { return false; }
  // all_reduce_average on `n` floats in the memory of this rank's GPU (the device of its local
  // rank), after every kernel queued on that device so far. Unimplemented unless
  // reduces_device_memory().
  virtual absl::Status all_reduce_average_on_device(float* device_data, int64_t n,
                                                    const std::string& what);
  // Ends every rank of the job now (MPI_Abort / ncclCommAbort then exit). CLI layer only.
  [[noreturn]] virtual void abort(int exit_code) = 0;

  // Seconds a collective may take before it fails (see the contract above).
  void set_timeout(double seconds) { timeout_s_ = seconds; }
  double timeout() const { return timeout_s_; }

 protected:
  double timeout_s_ = 300.0;
};

std::unique_ptr<Communicator> make_single_process_communicator();

// Whether this build has each transport.
bool have_mpi();
bool have_nccl();

// The communicator for `launch`: single for world size 1; otherwise "mpi" or "nccl" as `backend`
// asks ("auto" = mpi when built with it and started by an MPI launcher or Slurm, else nccl).
// `timeout_s` is the start-up timeout (initialisation and the first collectives).
absl::StatusOr<std::unique_ptr<Communicator>> make_communicator(const LaunchInfo& launch,
                                                                const std::string& backend,
                                                                double timeout_s);

// Agreement helpers over Communicator::agree.
absl::StatusOr<bool> agree_all(Communicator& comm, bool local, const std::string& what);
// OK when every rank passed the same value; otherwise FailedPrecondition naming `what`.
absl::Status check_same_value(Communicator& comm, uint64_t value, const std::string& what);

// Data sharding. One optimizer step consumes `grad_accum` global micro-batches of
// `batch * world` consecutive chunks of the seeded epoch order; rank r takes the r-th block of
// `batch` chunks of each. N ranks with micro-batch b therefore see exactly the chunks one process
// with micro-batch N*b sees, in the same grouping. Returns the global chunk index of the first
// chunk of rank `rank`'s micro-batch `accum_index` (0-based) of optimizer step `step` (1-based).
uint64_t shard_first_chunk(int64_t step, int64_t accum_index, int64_t batch, int64_t grad_accum,
                           int rank, int world);

// FNV-1a's mixing step over 8-byte words (then the tail bytes): a fast checksum of the weights,
// compared across ranks at checkpoints, and of option strings.
uint64_t checksum64(const void* data, int64_t bytes);

// TCP bootstrap for launches without MPI: rank 0 listens on master_addr:master_port and sends
// `bytes` bytes to each of the other world-1 ranks, which connect (retrying until the timeout).
absl::Status tcp_broadcast_from_rank0(const LaunchInfo& launch, void* data, int64_t bytes,
                                      double timeout_s);

}  // namespace engine
