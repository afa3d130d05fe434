// Flags shared by several `engine` subcommands. Subcommand-specific flags are defined in the
// subcommand's own file. Flags follow Abseil's syntax: --name=value or --name value; a name may
// be written with dashes too (--seq-len), cli/flag_spelling.h.
#pragma once

#include <string>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(std::string, data);
ABSL_DECLARE_FLAG(std::string, out);
ABSL_DECLARE_FLAG(bool, json);
ABSL_DECLARE_FLAG(int, seq_len);
ABSL_DECLARE_FLAG(int, threads);
ABSL_DECLARE_FLAG(int, seed);
ABSL_DECLARE_FLAG(std::string, device);
ABSL_DECLARE_FLAG(std::string, dtype);
ABSL_DECLARE_FLAG(std::string, checkpoint_dtype);
ABSL_DECLARE_FLAG(std::string, plan);
ABSL_DECLARE_FLAG(std::string, scan_data);
