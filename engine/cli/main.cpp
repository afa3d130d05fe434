// `engine`: command-line entry point. Parses flags, dispatches to a subcommand, and is the only
// place where library errors become exit codes.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "engine/cli/commands.h"

namespace engine::cli {

int fail(const std::string& message) {
  std::fprintf(stderr, "engine: %s\n", message.c_str());
  return 1;
}

namespace {

constexpr Command kCommands[] = {
    {"info", "print a model directory's architecture, parameters and files", run_info},
    {"export", "load a model directory and write it as a Hugging Face directory", run_export},
    {"diagnose", "find collapsed heads over a corpus or a prompt; compare two reports", run_diagnose},
    {"plan", "turn a diagnosis report into a surgery plan (plan.json)", run_plan},
    {"tokenize", "text (.txt/.jsonl) -> token file (.tok[.zst]) or .jsonl of input_ids", run_tokenize},
    {"detokenize", "token file or .jsonl of input_ids -> text", run_detokenize},
    {"eval", "sliding-window perplexity of a model over a data file", run_eval},
    {"generate", "continue a prompt with a KV cache (greedy at temperature 0), streaming", run_generate},
    {"train", "surgery-aware training (--surgery plan.json) with checkpoints and --resume", run_train},
    {"pretrain", "train a small byte-level BLOOM model from scratch (the embedded default)", run_pretrain},
    {"repair", "diagnose -> plan -> surgery -> train -> re-diagnose, per pass, with a report", run_repair},
};

void print_commands() {
  std::fprintf(stderr, "usage: engine <command> [flags]\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(stderr, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(stderr, "\n`engine <command> --help` lists the flags.\n");
}

}  // namespace
}  // namespace engine::cli

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("engine <command> [flags]: find and repair collapsed BLOOM heads");
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() < 2) {
    engine::cli::print_commands();
    return 2;
  }
  const std::string name = positional[1];
  std::vector<std::string> rest(positional.begin() + 2, positional.end());
  for (const engine::cli::Command& c : engine::cli::kCommands) {
    if (name == c.name) return c.run(rest);
  }
  std::fprintf(stderr, "engine: unknown command '%s'\n", name.c_str());
  engine::cli::print_commands();
  return 2;
}
