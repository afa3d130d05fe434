// `engine train` end to end: a run killed with SIGKILL mid-training and resumed with --resume ends
// with weights and optimizer state byte-identical to an uninterrupted run; bad inputs are one
// "engine: ..." line and exit 1 before any work.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "surgery/plan.h"
#include "tests/fixture_reference.h"

extern char** environ;

namespace engine {
namespace {

namespace fs = std::filesystem;

const fs::path kModel = fs::path(ENGINE_SOURCE_DIR) / "tests/fixtures/models/bloom-h4-l2";

using testing_fixtures::read_bytes;

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    // One directory per test process: ctest runs these tests in parallel.
    dir_ = fs::temp_directory_path() / ("engine_train_cli_test." + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    testing_fixtures::write_random_id_documents(dir_ / "data.jsonl", 80, 9);
    SurgeryPlan plan;
    plan.targets = {{0, 1}, {1, 3}};
    plan.seed = 5;
    std::ofstream(dir_ / "plan.json") << plan_to_json(plan).dump(2);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Arguments of a deterministic run writing to OUT (one thread: bit-identity across runs needs
  // the same thread count).
  std::vector<std::string> args(const std::string& out) const {
    return {ENGINE_CLI_PATH,
            "train",
            "--model",
            kModel.string(),
            "--data",
            (dir_ / "data.jsonl").string(),
            "--surgery",
            (dir_ / "plan.json").string(),
            "--out",
            (dir_ / out).string(),
            "--seq_len=16",
            "--batch=2",
            "--grad_accum=2",
            "--steps=24",
            "--lr=2e-3",
            "--eval_every=10",
            "--checkpoint_every=2",
            "--holdout=0.1",
            "--threads=1"};
  }
  static pid_t spawn(const std::vector<std::string>& argv, const fs::path& log) {
    std::vector<char*> raw;
    for (const std::string& a : argv) raw.push_back(const_cast<char*>(a.c_str()));
    raw.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    // --threads sets OpenMP's thread count only; BLAS gets one thread too, so a loaded machine
    // does not slow the runs down with spinning BLAS workers.
    std::vector<std::string> env_strings = {"OPENBLAS_NUM_THREADS=1"};
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::string(*e).rfind("OPENBLAS_NUM_THREADS=", 0) != 0) env_strings.push_back(*e);
    }
    std::vector<char*> env;
    for (std::string& e : env_strings) env.push_back(e.data());
    env.push_back(nullptr);
    pid_t pid = -1;
    EXPECT_EQ(posix_spawn(&pid, raw[0], &actions, nullptr, raw.data(), env.data()), 0);
    posix_spawn_file_actions_destroy(&actions);
    return pid;
  }
  static int wait_exit(pid_t pid) {
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  int run(const std::vector<std::string>& argv, const std::string& log) const {
    return wait_exit(spawn(argv, dir_ / log));
  }

  fs::path dir_;
};

TEST_F(TrainCli, SigkillThenResumeIsBitIdenticalToAnUninterruptedRun) {
  ASSERT_EQ(run(args("whole"), "whole.log"), 0) << read_bytes(dir_ / "whole.log");
  const std::string log = read_bytes(dir_ / "whole.log");
  EXPECT_NE(log.find("step 24/24"), std::string::npos) << log;
  EXPECT_NE(log.find("held-out perplexity"), std::string::npos) << log;

  // Kill as soon as a mid-run checkpoint is complete: SIGKILL gives the process no chance to
  // finish what it is writing.
  const pid_t pid = spawn(args("killed"), dir_ / "killed.log");
  const fs::path marker = dir_ / "killed" / "step_6" / "trainer_state.json";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(marker) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  kill(pid, SIGKILL);
  wait_exit(pid);
  const bool interrupted = !fs::exists(dir_ / "killed" / "final");
  RecordProperty("interrupted_before_the_end", interrupted ? "yes" : "no");

  std::vector<std::string> resume = args("killed");
  resume.push_back("--resume");
  ASSERT_EQ(run(resume, "resume.log"), 0) << read_bytes(dir_ / "resume.log");
  for (const char* file : {"final/model.safetensors", "final/optimizer.bin"}) {
    const std::string a = read_bytes(dir_ / "whole" / file), b = read_bytes(dir_ / "killed" / file);
    EXPECT_FALSE(a.empty()) << file;
    EXPECT_TRUE(a == b) << file << " differs after SIGKILL + --resume";
  }
}

TEST_F(TrainCli, BadInputsAreOneLineErrors) {
  auto expect_error = [&](std::vector<std::string> argv, const std::string& needle) {
    ASSERT_EQ(run(argv, "err.log"), 1);
    const std::string err = read_bytes(dir_ / "err.log");
    EXPECT_EQ(err.rfind("engine: ", 0), 0u) << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    EXPECT_NE(err.find(needle), std::string::npos) << err;
  };
  std::ofstream(dir_ / "a_file") << "x";
  expect_error(args("a_file"), "not a directory");

  SurgeryPlan deep;
  deep.targets = {{9, 0}};
  std::ofstream(dir_ / "deep.json") << plan_to_json(deep).dump();
  std::vector<std::string> a = args("deep_out");
  a[7] = (dir_ / "deep.json").string();
  expect_error(a, "layer 9");
  EXPECT_FALSE(fs::exists(dir_ / "deep_out"));

  a = args("resume_nothing");
  a.push_back("--resume");
  expect_error(a, "does not exist");

  // --dry_run checks the plan against the model before printing anything.
  expect_error({ENGINE_CLI_PATH, "train", "--model", kModel.string(), "--surgery",
                (dir_ / "deep.json").string(), "--dry_run"},
               "layer 9");
}

// --dry_run prints the memory plan from config.json and the plan, reads no data, writes nothing.
TEST_F(TrainCli, DryRunPrintsTheMemoryPlanAndWritesNothing) {
  const std::vector<std::string> argv = {ENGINE_CLI_PATH,      "train",
                                         "--model",            kModel.string(),
                                         "--surgery",          (dir_ / "plan.json").string(),
                                         "--out",              (dir_ / "never").string(),
                                         "--dry_run",          "--device=cuda",
                                         "--dtype=bf16",       "--recompute"};
  ASSERT_EQ(run(argv, "dry.log"), 0) << read_bytes(dir_ / "dry.log");
  const std::string out = read_bytes(dir_ / "dry.log");
  for (const char* line : {"2 target heads", "device cuda", "recompute on", "weights",
                           "AdamW moments", "fp32 master weights", "activations (blocks)",
                           "backward transients", "total"}) {
    EXPECT_NE(out.find(line), std::string::npos) << line << " in\n" << out;
  }
  EXPECT_FALSE(fs::exists(dir_ / "never"));
}

}  // namespace
}  // namespace engine
