// The MPI communicator (contract in distributed.h). Every collective is non-blocking
// (MPI_Iallreduce / MPI_Ibcast) and polled with MPI_Testall against the timeout, so a rank that
// died or hangs is detected instead of blocking forever. On a timeout the ranks that gave up hold
// a roll call on a second communicator: each sends its collective sequence number to every other
// rank and listens for kRollCallGrace; the ranks not heard from are the ones named in the error.
// Without MPI at configure time this file only provides the stub factory.
#include <memory>

#include "absl/strings/str_cat.h"
#include "engine/distributed_backends.h"

#if ENGINE_HAVE_MPI

// The C API only: mpi.h would otherwise pull in the removed C++ bindings, which need a library
// the engine does not link.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <thread>
#include <vector>

#include "absl/strings/str_join.h"

namespace engine {

namespace {

using Clock = std::chrono::steady_clock;

// Elements per MPI_Iallreduce of a large buffer: several buckets are in flight at once, so the
// transport pipelines them, and each count fits MPI's int.
constexpr int64_t kBucketElements = int64_t{1} << 22;
// How long ranks that timed out wait for each other's roll-call message: ranks waiting in the
// same collective time out within about this long of each other.
constexpr double kRollCallGraceSeconds = 5.0;
// Tag of roll-call messages (on the roll-call communicator, which carries nothing else).
constexpr int kRollCallTag = 7;
// Polling: yield for the first millisecond (short collectives), then sleep between tests so an
// oversubscribed node keeps its cores for the ranks still computing.
constexpr auto kYieldPhase = std::chrono::milliseconds(1);
constexpr auto kPollSleep = std::chrono::microseconds(100);

std::string mpi_error(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return std::string(text, static_cast<size_t>(len));
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(bool owns_init, double timeout_s) : owns_init_(owns_init) {
    timeout_s_ = timeout_s;
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_dup(MPI_COMM_WORLD, &roll_);
    // Errors come back as codes (turned into Status) instead of aborting the job.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(roll_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &world_);
    MPI_Comm node;
    MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_free(&node);
  }
  ~MpiCommunicator() override {
    // After a failed collective MPI_Finalize could block on the missing rank; the CLI aborts.
    if (broken_ || !owns_init_) return;
    MPI_Comm_free(&roll_);
    MPI_Comm_free(&comm_);
    MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int local_rank() const override { return local_rank_; }
  std::string name() const override { return "mpi"; }

  absl::Status all_reduce_average(float* data, int64_t n, const std::string& what) override {
    if (absl::Status s = reduce(data, n, MPI_FLOAT, MPI_SUM, what); !s.ok()) return s;
    const float inv = 1.0f / static_cast<float>(world_);
    for (int64_t i = 0; i < n; ++i) data[i] *= inv;
    return absl::OkStatus();
  }
  absl::Status all_reduce_sum(double* data, int64_t n, const std::string& what) override {
    return reduce(data, n, MPI_DOUBLE, MPI_SUM, what);
  }
  absl::Status agree(uint64_t* words, int64_t n, AgreeOp op, const std::string& what) override {
    return reduce(words, n, MPI_UINT64_T, op == AgreeOp::kMin ? MPI_MIN : MPI_MAX, what);
  }
  absl::Status broadcast(void* data, int64_t bytes, int root, const std::string& what) override {
    if (absl::Status s = usable(what); !s.ok()) return s;
    std::vector<MPI_Request> requests;
    char* p = static_cast<char*>(data);
    for (int64_t off = 0; off < bytes; off += kBucketElements) {
      const int count = static_cast<int>(std::min(kBucketElements, bytes - off));
      requests.emplace_back();
      if (const int rc = MPI_Ibcast(p + off, count, MPI_BYTE, root, comm_, &requests.back());
          rc != MPI_SUCCESS) {
        return failed(what, rc);
      }
    }
    return wait(requests, what);
  }
  [[noreturn]] void abort(int exit_code) override {
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

 private:
  absl::Status usable(const std::string& what) const {
    if (!broken_) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", rank_, ": ", what, ": the communicator failed earlier"));
  }
  absl::Status failed(const std::string& what, int rc) {
    broken_ = true;
    return absl::InternalError(
        absl::StrCat("rank ", rank_, ": ", what, " (collective #", sequence_, "): ", mpi_error(rc)));
  }

  // In-place MPI_Iallreduce of `n` elements in buckets, then the polled wait.
  template <typename T>
  absl::Status reduce(T* data, int64_t n, MPI_Datatype type, MPI_Op op, const std::string& what) {
    if (absl::Status s = usable(what); !s.ok()) return s;
    // Every rank passes the same n, so an empty reduction is skipped by all of them.
    if (n == 0) return absl::OkStatus();
    std::vector<MPI_Request> requests;
    for (int64_t off = 0; off < n; off += kBucketElements) {
      const int count = static_cast<int>(std::min(kBucketElements, n - off));
      requests.emplace_back();
      if (const int rc =
              MPI_Iallreduce(MPI_IN_PLACE, data + off, count, type, op, comm_, &requests.back());
          rc != MPI_SUCCESS) {
        return failed(what, rc);
      }
    }
    return wait(requests, what);
  }

  absl::Status wait(std::vector<MPI_Request>& requests, const std::string& what) {
    ++sequence_;
    const Clock::time_point start = Clock::now();
    const Clock::time_point deadline =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
    while (true) {
      int done = 0;
      const int rc = MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done,
                                 MPI_STATUSES_IGNORE);
      if (rc != MPI_SUCCESS) return failed(what, rc);
      if (done) return absl::OkStatus();
      const Clock::time_point now = Clock::now();
      if (now >= deadline) break;
      if (now - start < kYieldPhase) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(kPollSleep);
      }
    }
    broken_ = true;
    const std::vector<int> silent = roll_call();
    std::string who;
    if (silent.empty()) {
      who = "every rank answered the roll call, so the collective itself is stuck";
    } else {
      std::vector<std::string> names;
      for (int r : silent) names.push_back(absl::StrCat("rank ", r));
      who = absl::StrCat(absl::StrJoin(names, ", "), silent.size() == 1 ? " is" : " are",
                         " not responding (dead, hung or still busy)");
    }
    return absl::DeadlineExceededError(absl::StrCat("rank ", rank_, " of ", world_, ": ", what,
                                                    " (collective #", sequence_,
                                                    ") did not complete within ", timeout_s_,
                                                    " s: ", who));
  }

  // Ranks that did not send a roll-call message within the grace period.
  std::vector<int> roll_call() {
    std::vector<uint64_t> inbox(static_cast<size_t>(world_), 0);
    uint64_t mine = static_cast<uint64_t>(sequence_);
    std::vector<MPI_Request> sends, receives(static_cast<size_t>(world_), MPI_REQUEST_NULL);
    for (int r = 0; r < world_; ++r) {
      if (r == rank_) continue;
      sends.emplace_back();
      MPI_Isend(&mine, 1, MPI_UINT64_T, r, kRollCallTag, roll_, &sends.back());
      MPI_Irecv(&inbox[static_cast<size_t>(r)], 1, MPI_UINT64_T, r, kRollCallTag, roll_,
                &receives[static_cast<size_t>(r)]);
    }
    std::vector<char> heard(static_cast<size_t>(world_), 0);
    heard[static_cast<size_t>(rank_)] = 1;
    const Clock::time_point deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                           std::min(kRollCallGraceSeconds, timeout_s_)));
    while (Clock::now() < deadline) {
      bool all = true;
      for (int r = 0; r < world_; ++r) {
        if (heard[static_cast<size_t>(r)] != 0) continue;
        int done = 0;
        MPI_Test(&receives[static_cast<size_t>(r)], &done, MPI_STATUS_IGNORE);
        heard[static_cast<size_t>(r)] = done != 0 ? 1 : 0;
        all = all && done != 0;
      }
      if (all) break;
      std::this_thread::sleep_for(kPollSleep);
    }
    std::vector<int> silent;
    for (int r = 0; r < world_; ++r) {
      if (heard[static_cast<size_t>(r)] == 0) silent.push_back(r);
    }
    return silent;
  }

  bool owns_init_ = false;
  bool broken_ = false;
  MPI_Comm comm_ = MPI_COMM_NULL, roll_ = MPI_COMM_NULL;
  int rank_ = 0, world_ = 1, local_rank_ = 0;
  int64_t sequence_ = 0;
};

}  // namespace

bool have_mpi() { return true; }

absl::StatusOr<std::unique_ptr<Communicator>> make_mpi_communicator(double timeout_s) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // Only the main thread calls MPI; OpenMP worker threads never do.
    int provided = 0;
    if (const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
        rc != MPI_SUCCESS) {
      return absl::UnavailableError(absl::StrCat("MPI_Init_thread: ", mpi_error(rc)));
    }
  }
  return std::unique_ptr<Communicator>(
      std::make_unique<MpiCommunicator>(initialized == 0, timeout_s));
}

}  // namespace engine

#else  // !ENGINE_HAVE_MPI

namespace engine {

bool have_mpi() { return false; }

absl::StatusOr<std::unique_ptr<Communicator>> make_mpi_communicator(double) {
  return absl::UnimplementedError("this build has no MPI (install libopenmpi-dev and reconfigure)");
}

}  // namespace engine

#endif
