// `engine`: command-line entry point. Parses flags, dispatches to a subcommand, and is the only
// place where library errors become exit codes.
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "cli/commands.h"
#include "cli/flag_spelling.h"
#include "kernels/cpu/isa.h"

namespace engine::cli {

int fail(const std::string& message) {
  std::fprintf(stderr, "engine: %s\n", message.c_str());
  return 1;
}

namespace {

constexpr Command kCommands[] = {
    {"info", "print the CPU kernels in use and a model directory's architecture, parameters and files", run_info, "model json"},
    {"export", "load a model directory and write it as a Hugging Face directory", run_export, "model out dtype"},
    {"diagnose", "find collapsed heads over a corpus or a prompt; compare two reports", run_diagnose, "model data prompt out seq_len max_seqs batch csv svg html json dead sink low_entropy compare plan drift device dtype threads"},
    {"plan", "turn a diagnosis report into a surgery plan (plan.json)", run_plan, "report out select heads layers head_indices exclude init seed comment"},
    {"tokenize", "text (.txt/.jsonl) -> token file (.tok[.zst]) or .jsonl of input_ids", run_tokenize, "model tokenizer in out add_bos"},
    {"detokenize", "token file or .jsonl of input_ids -> text", run_detokenize, "model tokenizer in out"},
    {"eval", "sliding-window perplexity of a model over a data file", run_eval, "model tokenizer data seq_len stride batch json device dtype threads"},
    {"generate", "continue a prompt with a KV cache (greedy at temperature 0), streaming", run_generate, "model tokenizer prompt prompt_ids max_new_tokens temperature top_p seed json device dtype threads"},
    {"train", "surgery-aware training (--surgery plan.json) with checkpoints and --resume", run_train, "model tokenizer data out surgery epochs steps seq_len batch grad_accum lr warmup schedule clip optimizer weight_decay eval_data holdout eval_every checkpoint_every scan_data seed resume recompute skip_nonfinite dry_run device dtype checkpoint_dtype threads dist_backend dist_first_timeout dist_timeout dist_checksum"},
    {"pretrain", "train a small byte-level BLOOM model from scratch (the embedded default)", run_pretrain, "data out n_layer n_head hidden_size seq_len batch grad_accum steps lr warmup holdout eval_every seed resume collapse collapse_weight device"},
    {"repair", "diagnose -> plan -> surgery -> train -> re-diagnose, per pass, with a report", run_repair, "model data out passes scan_data holdout max_seqs select heads layers head_indices exclude init fallback_healthy dead sink low_entropy drift seq_len batch grad_accum epochs steps lr warmup weight_decay clip eval_every checkpoint_every seed resume device"},
};

void print_commands() {
  std::fprintf(stderr, "usage: engine <command> [flags]\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(stderr, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(stderr, "\n`engine <command> --help` lists the flags.\n");
}

// `engine NAME --help`: the command's summary and every flag it reads, with help and default.
int print_command_help(const Command& c) {
  std::printf("usage: engine %s [flags]\n  %s\n\nflags:\n", c.name, c.summary);
  std::istringstream names(c.flags);
  std::string flag;
  while (names >> flag) {
    const absl::CommandLineFlag* f = absl::FindCommandLineFlag(flag);
    if (f == nullptr) {  // a stale entry in kCommands; tests/cli_help_test.cpp catches it
      std::fprintf(stderr, "engine: %s --help names an unknown flag --%s\n", c.name, flag.c_str());
      return 1;
    }
    std::printf("  --%-18s %s (default: %s)\n", flag.c_str(), std::string(f->Help()).c_str(),
                f->DefaultValue().empty() ? "\"\"" : f->DefaultValue().c_str());
  }
  return 0;
}

bool asks_for_help(int argc, char** argv) {
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) return true;
  }
  return false;
}

}  // namespace
}  // namespace engine::cli

int main(int argc, char** original_argv) {
  // --seq-len and --seq_len both work; from here on every flag name has underscores.
  std::vector<std::string> args = engine::cli::underscore_flag_names(argc, original_argv);
  std::vector<char*> argv_storage;
  for (std::string& a : args) argv_storage.push_back(a.data());
  argv_storage.push_back(nullptr);
  char** argv = argv_storage.data();
  if (argc >= 3 && engine::cli::asks_for_help(argc, argv)) {
    for (const engine::cli::Command& c : engine::cli::kCommands) {
      if (std::strcmp(argv[1], c.name) == 0) return engine::cli::print_command_help(c);
    }
  }
  absl::SetProgramUsageMessage("engine <command> [flags]: find and repair collapsed BLOOM heads");
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() < 2) {
    engine::cli::print_commands();
    return 2;
  }
  // An invalid ENGINE_CPU_ISA (kernels/cpu/isa.h) stops every command before it does any work.
  if (const absl::StatusOr<engine::cpu::CpuIsa> isa = engine::cpu::active_cpu_isa(); !isa.ok()) {
    return engine::cli::fail(std::string(isa.status().message()));
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
