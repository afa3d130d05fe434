// `engine` without arguments lists the commands; `engine NAME --help` lists each command's flags,
// and every flag a command's help names exists.
#include <cstdio>
#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace {

// Runs a shell command, returning (exit status, stdout + stderr).
std::pair<int, std::string> run(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return {-1, ""};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  return {pclose(p), out};
}

TEST(CliHelp, EveryCommandListsItsFlags) {
  auto [status, listing] = run(ENGINE_CLI_PATH);
  EXPECT_NE(status, 0);  // no command: usage error
  std::istringstream lines(listing.substr(listing.find("commands:")));
  std::string line;
  std::getline(lines, line);
  int commands = 0;
  while (std::getline(lines, line) && !line.empty()) {
    std::istringstream words(line);
    std::string name;
    words >> name;
    auto [rc, help] = run(std::string(ENGINE_CLI_PATH) + " " + name + " --help");
    EXPECT_EQ(rc, 0) << name << ": " << help;
    EXPECT_THAT(help, ::testing::HasSubstr("usage: engine " + name)) << help;
    EXPECT_THAT(help, ::testing::HasSubstr("  --")) << name << " lists no flag";
    ++commands;
  }
  EXPECT_GE(commands, 9);
}

// Every command takes --seq-len as well as --seq_len (and --no-flag for a boolean); --help keeps
// listing Abseil's underscore names.
TEST(CliHelp, DashedFlagNamesAreAccepted) {
  auto [rc, help] = run(std::string(ENGINE_CLI_PATH) + " train --help");
  EXPECT_EQ(rc, 0) << help;
  EXPECT_THAT(help, ::testing::HasSubstr("--seq_len"));
  EXPECT_THAT(help, ::testing::Not(::testing::HasSubstr("--seq-len")));
  // An unknown dashed name is still an error, named as it was typed.
  auto [bad_rc, bad] = run(std::string(ENGINE_CLI_PATH) + " eval --no-such-flag=1");
  EXPECT_NE(bad_rc, 0);
  EXPECT_THAT(bad, ::testing::HasSubstr("no-such-flag"));
  // --seq-len reaches the same check as --seq_len; so do --dry-run and --no-dry-run.
  for (const char* flags : {"--seq_len=-1", "--seq-len=-1", "--seq-len -1"}) {
    auto [a_rc, a] = run(std::string(ENGINE_CLI_PATH) + " train --model /nonexistent " + flags);
    EXPECT_NE(a_rc, 0) << flags;
    EXPECT_THAT(a, ::testing::Not(::testing::HasSubstr("Unknown command line flag"))) << a;
  }
}

}  // namespace
