// Factories of the multi-process communicators, implemented in distributed_mpi.cpp and
// distributed_nccl.cpp. Each compiles to a stub returning Unimplemented when its library was not
// found at configure time, so engine/distributed.cpp can call them unconditionally.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/distributed.h"

namespace engine {

// MPI_Init_thread (funneled) and a duplicate of MPI_COMM_WORLD; the ranks come from MPI.
absl::StatusOr<std::unique_ptr<Communicator>> make_mpi_communicator(double timeout_s);

// One GPU per local rank. The NCCL unique id travels through `bootstrap` (an MPI communicator,
// which the NCCL communicator then owns and uses for roll calls) or, when it is null, over TCP
// from launch.master_addr:master_port.
absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(
    const LaunchInfo& launch, std::unique_ptr<Communicator> bootstrap, double timeout_s);

}  // namespace engine
