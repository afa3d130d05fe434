// Multi-process `engine train`: the communicator from the launcher's environment and the
// --dist_* flags, the fault-injection hook of the tests, and the one place where a failure in a
// multi-rank run ends every rank (docs/DISTRIBUTED.md).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/distributed.h"
#include "model/trainer.h"

namespace engine::cli {

// Detects the launcher (engine/distributed.h) and builds the communicator with
// --dist_backend and the start-up timeout --dist_first_timeout. One process = single.
absl::StatusOr<std::unique_ptr<Communicator>> communicator_from_environment();

// Points `o` at `comm` and applies --dist_timeout, --dist_checksum and the test hook
// ENGINE_TEST_FAULT=kill:RANK:STEP or hang:RANK:STEP (that rank SIGKILLs itself, or stops
// taking part, at the start of that step), and makes `o.log` print on rank 0 only.
void apply_distributed_options(Communicator& comm, TrainRunOptions& o);

// Reports `message` as "engine: rank R/N: message" and, with more than one rank, ends every rank
// of the job (a rank left waiting would only time out later). Returns 1 for one process.
int fail_on_rank(Communicator& comm, const std::string& message);

}  // namespace engine::cli
