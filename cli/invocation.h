// The command line this process was started with, for reports that must record "the exact
// command used". Reads /proc/self/cmdline (Linux); elsewhere, or when that fails, returns "".
// Arguments holding shell metacharacters or spaces are single-quoted so the line can be pasted
// back into a POSIX shell.
#pragma once

#include <string>

namespace engine::cli {

std::string invocation_command_line();

}  // namespace engine::cli
