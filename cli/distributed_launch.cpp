// Multi-process launch for the CLI; contract in distributed_launch.h.
#include "cli/distributed_launch.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"

ABSL_FLAG(std::string, dist_backend, "auto",
          "train: multi-process transport: auto (mpi under mpirun/srun, else nccl), mpi or nccl");
ABSL_FLAG(double, dist_first_timeout, 300.0,
          "train: seconds a collective may wait at start-up, in step 1 and after rank 0's "
          "checkpoint writes before the run aborts naming the missing rank");
ABSL_FLAG(double, dist_timeout, 60.0,
          "train: seconds any other collective may wait (after the first step)");
ABSL_FLAG(bool, dist_checksum, false,
          "train: compare a checksum of the weights across ranks at every checkpoint");

namespace engine::cli {

namespace {

// How long a "hang" fault keeps the rank away from the collectives: far beyond any test
// timeout, the rank is ended by the others' abort long before.
constexpr auto kHangFor = std::chrono::hours(1);

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> communicator_from_environment() {
  absl::StatusOr<LaunchInfo> launch = detect_launch_from_environment();
  if (!launch.ok()) return launch.status();
  return make_communicator(*launch, absl::GetFlag(FLAGS_dist_backend),
                           absl::GetFlag(FLAGS_dist_first_timeout));
}

void apply_distributed_options(Communicator& comm, TrainRunOptions& o) {
  o.comm = &comm;
  o.dist_step_timeout_s = absl::GetFlag(FLAGS_dist_timeout);
  o.dist_checksum = absl::GetFlag(FLAGS_dist_checksum);
  if (comm.rank() != 0) o.log = nullptr;
  const char* fault = std::getenv("ENGINE_TEST_FAULT");
  if (fault == nullptr) return;
  const std::vector<std::string> parts = absl::StrSplit(fault, ':');
  int rank = -1;
  int64_t step = 0;
  if (parts.size() != 3 || (parts[0] != "kill" && parts[0] != "hang") ||
      !absl::SimpleAtoi(parts[1], &rank) || !absl::SimpleAtoi(parts[2], &step)) {
    std::fprintf(stderr, "engine: ENGINE_TEST_FAULT='%s': expected kill:RANK:STEP or "
                 "hang:RANK:STEP; ignored\n", fault);
    return;
  }
  if (rank != comm.rank()) return;
  const bool kill = parts[0] == "kill";
  o.on_step_start = [kill, step](int64_t now) {
    if (now != step) return;
    if (kill) ::kill(::getpid(), SIGKILL);
    std::this_thread::sleep_for(kHangFor);
  };
}

int fail_on_rank(Communicator& comm, const std::string& message) {
  if (comm.world_size() == 1) return fail(message);
  std::fprintf(stderr, "engine: rank %d/%d: %s\n", comm.rank(), comm.world_size(),
               message.c_str());
  std::fflush(stderr);
  comm.abort(1);
  return 1;  // not reached (abort ends the process); GCC does not trust [[noreturn]] on a virtual
}

}  // namespace engine::cli
