// Flag names may be written with dashes or underscores (--seq-len or --seq_len). Abseil knows
// only the underscore names, so the command line is rewritten before it parses it.
#pragma once

#include <string>
#include <vector>

namespace engine::cli {

// argv with every flag name's dashes turned into underscores: "--seq-len=8" -> "--seq_len=8".
// Only the name, before any '=', changes. An argument is rewritten only when it starts with "--"
// and the rewritten name (or, for a boolean, the name after a "no" prefix) is a registered flag;
// the argument after a non-boolean flag given without '=' is that flag's value and is left as it
// is, as is everything after a bare "--".
std::vector<std::string> underscore_flag_names(int argc, char** argv);

}  // namespace engine::cli
