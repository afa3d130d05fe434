// Launcher detection, the single-process communicator, sharding, agreement helpers and the TCP
// bootstrap; contract in distributed.h.
#include "engine/distributed.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/distributed_backends.h"

namespace engine {

namespace {

// Optional integer variable: absent -> nullopt; present but not an integer -> error.
absl::StatusOr<std::optional<int>> int_var(const EnvLookup& get, const char* name) {
  const char* v = get(name);
  if (v == nullptr) return std::optional<int>();
  int value = 0;
  if (!absl::SimpleAtoi(v, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("launcher environment: ", name, "='", v, "' is not an integer"));
  }
  return std::optional<int>(value);
}

// One launcher's variables: `rank_var` present selects it; `size_var` is then required.
absl::StatusOr<std::optional<LaunchInfo>> read_launcher(const EnvLookup& get, const char* launcher,
                                                        const char* rank_var,
                                                        std::vector<const char*> size_vars,
                                                        const char* local_var) {
  absl::StatusOr<std::optional<int>> rank = int_var(get, rank_var);
  if (!rank.ok()) return rank.status();
  if (!rank->has_value()) return std::optional<LaunchInfo>();
  LaunchInfo info;
  info.launcher = launcher;
  info.rank = **rank;
  std::optional<int> size;
  const char* size_name = size_vars.back();
  for (const char* var : size_vars) {
    absl::StatusOr<std::optional<int>> s = int_var(get, var);
    if (!s.ok()) return s.status();
    if (s->has_value()) {
      size = *s, size_name = var;
      break;
    }
  }
  if (!size.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("launcher environment: ", rank_var,
                                                   " is set but ", size_name, " is not"));
  }
  info.world_size = *size;
  absl::StatusOr<std::optional<int>> local = int_var(get, local_var);
  if (!local.ok()) return local.status();
  info.local_rank = local->value_or(0);
  if (info.world_size < 1 || info.rank < 0 || info.rank >= info.world_size ||
      info.local_rank < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "launcher environment: ", rank_var, "=", info.rank, ", ", size_name, "=", info.world_size,
        ", ", local_var, "=", info.local_rank, ": need 0 <= rank < world size and local rank >= 0"));
  }
  if (const char* addr = get("MASTER_ADDR"); addr != nullptr) info.master_addr = addr;
  absl::StatusOr<std::optional<int>> port = int_var(get, "MASTER_PORT");
  if (!port.ok()) return port.status();
  info.master_port = port->value_or(0);
  return std::optional<LaunchInfo>(info);
}

class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string name() const override { return "single"; }
  absl::Status all_reduce_average(float*, int64_t, const std::string&) override {
    return absl::OkStatus();
  }
  absl::Status all_reduce_sum(double*, int64_t, const std::string&) override {
    return absl::OkStatus();
  }
  absl::Status agree(uint64_t*, int64_t, AgreeOp, const std::string&) override {
    return absl::OkStatus();
  }
  absl::Status broadcast(void*, int64_t, int, const std::string&) override {
    return absl::OkStatus();
  }
  bool reduces_device_memory() const override { return true; }
  absl::Status all_reduce_average_on_device(float*, int64_t, const std::string&) override {
    return absl::OkStatus();
  }
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }
};

// Prefixes the TCP bootstrap payload, so a stray connection to the port is recognised.
constexpr uint64_t kBootstrapMagic = 0x454e47494e454944ull;  // "ENGINEID"
// Pause between connection attempts while rank 0 is not listening yet.
constexpr auto kConnectRetry = std::chrono::milliseconds(100);

using Clock = std::chrono::steady_clock;

absl::Status socket_error(const std::string& what, const LaunchInfo& l) {
  return absl::UnavailableError(absl::StrCat("TCP bootstrap ", l.master_addr, ":", l.master_port,
                                             ": ", what, ": ", std::strerror(errno)));
}

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

// Reads or writes exactly `bytes`, polling against `deadline`.
absl::Status transfer(int fd, void* data, int64_t bytes, bool send, Clock::time_point deadline,
                      const LaunchInfo& l) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    pollfd pfd{fd, static_cast<short>(send ? POLLOUT : POLLIN), 0};
    const int ready = ::poll(&pfd, 1, remaining_ms(deadline));
    if (ready == 0) return absl::DeadlineExceededError("TCP bootstrap: peer did not answer in time");
    if (ready < 0) return socket_error("poll", l);
    const ssize_t n = send ? ::send(fd, p, static_cast<size_t>(bytes), MSG_NOSIGNAL)
                           : ::recv(fd, p, static_cast<size_t>(bytes), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return socket_error(send ? "send" : "connection closed early", l);
    p += n, bytes -= n;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LaunchInfo> detect_launch(const EnvLookup& get) {
  struct Launcher {
    const char* name;
    const char* rank;
    std::vector<const char*> sizes;
    const char* local;
  };
  const Launcher launchers[] = {
      {"mpi", "OMPI_COMM_WORLD_RANK", {"OMPI_COMM_WORLD_SIZE"}, "OMPI_COMM_WORLD_LOCAL_RANK"},
      {"mpi", "PMI_RANK", {"PMI_SIZE"}, "MPI_LOCALRANKID"},
      // SLURM_NTASKS is the allocation's task count, also seen by a batch script that was not
      // started by srun; SLURM_STEP_NUM_TASKS is the current step's, so it wins when present.
      {"slurm", "SLURM_PROCID", {"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"}, "SLURM_LOCALID"},
      {"torchrun", "RANK", {"WORLD_SIZE"}, "LOCAL_RANK"},
  };
  for (const Launcher& l : launchers) {
    absl::StatusOr<std::optional<LaunchInfo>> info =
        read_launcher(get, l.name, l.rank, l.sizes, l.local);
    if (!info.ok()) return info.status();
    if (!info->has_value()) continue;
    if (std::string(l.name) == "torchrun" && (*info)->world_size > 1 &&
        ((*info)->master_addr.empty() || (*info)->master_port <= 0)) {
      return absl::InvalidArgumentError(
          "launcher environment: RANK/WORLD_SIZE are set but MASTER_ADDR/MASTER_PORT are not");
    }
    return **info;
  }
  return LaunchInfo{};
}

absl::StatusOr<LaunchInfo> detect_launch_from_environment() {
  return detect_launch([](const char* name) -> const char* { return std::getenv(name); });
}

absl::Status Communicator::all_reduce_average_on_device(float*, int64_t, const std::string& what) {
  return absl::UnimplementedError(absl::StrCat(
      what, ": the ", name(), " transport cannot reduce GPU memory (stage it through the host)"));
}

std::unique_ptr<Communicator> make_single_process_communicator() {
  return std::make_unique<SingleProcessCommunicator>();
}

absl::StatusOr<std::unique_ptr<Communicator>> make_communicator(const LaunchInfo& launch,
                                                                const std::string& backend,
                                                                double timeout_s) {
  if (backend != "auto" && backend != "mpi" && backend != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("distributed backend '", backend, "': expected auto, mpi or nccl"));
  }
  if (launch.world_size == 1) return make_single_process_communicator();
  const bool mpi_launch = launch.launcher == "mpi" || launch.launcher == "slurm";
  std::string chosen = backend;
  if (chosen == "auto") chosen = (mpi_launch && have_mpi()) ? "mpi" : "nccl";
  if (chosen == "mpi") {
    if (!have_mpi()) {
      return absl::UnimplementedError(absl::StrCat(
          launch.world_size, " ranks (", launch.launcher,
          " launch) but this build has no MPI (install libopenmpi-dev and reconfigure)"));
    }
    if (!mpi_launch) {
      return absl::InvalidArgumentError(
          "the mpi backend needs an MPI launcher (mpirun or srun); torchrun-style variables "
          "select the nccl backend");
    }
    absl::StatusOr<std::unique_ptr<Communicator>> comm = make_mpi_communicator(timeout_s);
    if (!comm.ok()) return comm.status();
    if ((*comm)->world_size() != launch.world_size || (*comm)->rank() != launch.rank) {
      return absl::FailedPreconditionError(absl::StrCat(
          "MPI reports rank ", (*comm)->rank(), " of ", (*comm)->world_size(), " but the ",
          launch.launcher, " environment says rank ", launch.rank, " of ", launch.world_size));
    }
    return comm;
  }
  if (!have_nccl()) {
    return absl::UnimplementedError(absl::StrCat(
        launch.world_size, " ranks (", launch.launcher, " launch) need the nccl backend",
        have_mpi() ? " or an MPI launcher" : "", ", and this build has no NCCL"));
  }
  std::unique_ptr<Communicator> bootstrap;
  if (mpi_launch && have_mpi()) {
    absl::StatusOr<std::unique_ptr<Communicator>> mpi = make_mpi_communicator(timeout_s);
    if (!mpi.ok()) return mpi.status();
    bootstrap = std::move(*mpi);
  } else if (launch.master_addr.empty() || launch.master_port <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nccl backend without MPI: set MASTER_ADDR and MASTER_PORT (rank 0's address and a free "
        "port) for the ", launch.launcher, " launch"));
  }
  return make_nccl_communicator(launch, std::move(bootstrap), timeout_s);
}

absl::StatusOr<bool> agree_all(Communicator& comm, bool local, const std::string& what) {
  uint64_t word = local ? 1 : 0;
  if (absl::Status s = comm.agree(&word, 1, AgreeOp::kMin, what); !s.ok()) return s;
  return word == 1;
}

absl::Status check_same_value(Communicator& comm, uint64_t value, const std::string& what) {
  uint64_t words[2] = {value, ~value};
  if (absl::Status s = comm.agree(words, 2, AgreeOp::kMax, what); !s.ok()) return s;
  const uint64_t max = words[0], min = ~words[1];
  if (max != min) {
    return absl::FailedPreconditionError(absl::StrCat(what, " differs across the ", comm.world_size(),
                                                      " ranks (values from ", min, " to ", max,
                                                      ")"));
  }
  return absl::OkStatus();
}

uint64_t shard_first_chunk(int64_t step, int64_t accum_index, int64_t batch, int64_t grad_accum,
                           int rank, int world) {
  const int64_t global_micro = batch * world;
  const int64_t step_start = (step - 1) * grad_accum * global_micro;
  return static_cast<uint64_t>(step_start + accum_index * global_micro + rank * batch);
}

uint64_t checksum64(const void* data, int64_t bytes) {
  constexpr uint64_t kOffset = 14695981039346656037ull;
  constexpr uint64_t kPrime = 1099511628211ull;
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t h = kOffset;
  int64_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t word;
    std::memcpy(&word, p + i, sizeof(word));
    h = (h ^ word) * kPrime;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * kPrime;
  return h;
}

absl::Status tcp_broadcast_from_rank0(const LaunchInfo& l, void* data, int64_t bytes,
                                      double timeout_s) {
  const Clock::time_point deadline =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  const uint64_t header[2] = {kBootstrapMagic, static_cast<uint64_t>(bytes)};
  if (l.rank == 0) {
    const int server = ::socket(AF_INET, SOCK_STREAM, 0);
    if (server < 0) return socket_error("socket", l);
    const int one = 1;
    ::setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<uint16_t>(l.master_port));
    if (::bind(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(server, l.world_size) != 0) {
      const absl::Status s = socket_error("bind/listen", l);
      ::close(server);
      return s;
    }
    absl::Status status;
    for (int served = 1; served < l.world_size && status.ok(); ++served) {
      pollfd pfd{server, POLLIN, 0};
      const int ready = ::poll(&pfd, 1, remaining_ms(deadline));
      if (ready <= 0) {
        status = absl::DeadlineExceededError(absl::StrCat(
            "TCP bootstrap: only ", served - 1, " of ", l.world_size - 1,
            " ranks connected to rank 0 at port ", l.master_port, " within ", timeout_s, " s"));
        break;
      }
      const int peer = ::accept(server, nullptr, nullptr);
      if (peer < 0) {
        status = socket_error("accept", l);
        break;
      }
      status = transfer(peer, const_cast<uint64_t*>(header), sizeof(header), true, deadline, l);
      if (status.ok()) status = transfer(peer, data, bytes, true, deadline, l);
      ::close(peer);
    }
    ::close(server);
    return status;
  }
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = absl::StrCat(l.master_port);
  if (const int rc = ::getaddrinfo(l.master_addr.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("TCP bootstrap: MASTER_ADDR ", l.master_addr,
                                                   ": ", ::gai_strerror(rc)));
  }
  int fd = -1;
  while (true) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) == 0) break;
    if (fd >= 0) ::close(fd);
    fd = -1;
    if (Clock::now() + kConnectRetry > deadline) break;
    std::this_thread::sleep_for(kConnectRetry);
  }
  ::freeaddrinfo(found);
  if (fd < 0) {
    return absl::DeadlineExceededError(absl::StrCat("TCP bootstrap: rank ", l.rank,
                                                    " could not connect to rank 0 at ",
                                                    l.master_addr, ":", l.master_port, " within ",
                                                    timeout_s, " s"));
  }
  uint64_t got[2] = {0, 0};
  absl::Status s = transfer(fd, got, sizeof(got), false, deadline, l);
  if (s.ok() && (got[0] != header[0] || got[1] != header[1])) {
    s = absl::DataLossError(absl::StrCat("TCP bootstrap: ", l.master_addr, ":", l.master_port,
                                         " is not an engine rank 0 (bad header)"));
  }
  if (s.ok()) s = transfer(fd, data, bytes, false, deadline, l);
  ::close(fd);
  return s;
}

}  // namespace engine
