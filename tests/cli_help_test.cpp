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

}  // namespace
