// See cli/invocation.h.
#include "cli/invocation.h"

#include <fstream>
#include <iterator>
#include <string>

namespace engine::cli {
namespace {

std::string shell_quoted(const std::string& arg) {
  constexpr const char* kSafe =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%";
  if (!arg.empty() && arg.find_first_not_of(kSafe) == std::string::npos) return arg;
  std::string out = "'";
  for (char c : arg) {
    if (c == '\'') {
      out += "'\\''";  // close the quote, an escaped quote, reopen
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

std::string invocation_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  if (!in) return "";
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string line, arg;
  for (char c : raw) {
    if (c == '\0') {
      if (!line.empty()) line += ' ';
      line += shell_quoted(arg);
      arg.clear();
    } else {
      arg += c;
    }
  }
  return line;
}

}  // namespace engine::cli
