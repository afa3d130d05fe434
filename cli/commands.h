// The `engine` subcommands. Each returns a process exit code: 0 success, 1 runtime failure
// (message already printed to stderr as one line), 2 usage error.
#pragma once

#include <string>
#include <vector>

namespace engine::cli {

// `args` are the positional arguments after the subcommand name (flags already parsed).
using CommandFn = int (*)(const std::vector<std::string>& args);

struct Command {
  const char* name;
  const char* summary;
  CommandFn run;
  const char* flags;  // space-separated names of the flags it reads, for `engine NAME --help`
};

int run_info(const std::vector<std::string>& args);
int run_export(const std::vector<std::string>& args);
int run_diagnose(const std::vector<std::string>& args);
int run_plan(const std::vector<std::string>& args);
int run_tokenize(const std::vector<std::string>& args);
int run_detokenize(const std::vector<std::string>& args);
int run_eval(const std::vector<std::string>& args);
int run_generate(const std::vector<std::string>& args);
int run_train(const std::vector<std::string>& args);
int run_pretrain(const std::vector<std::string>& args);
int run_repair(const std::vector<std::string>& args);

// Prints "engine: <message>" on one line to stderr and returns 1.
int fail(const std::string& message);

}  // namespace engine::cli
