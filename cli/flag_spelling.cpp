// See cli/flag_spelling.h.
#include "cli/flag_spelling.h"

#include <algorithm>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"

namespace engine::cli {
namespace {

// The flag `name` (underscores already) refers to; a boolean's "no" form ("noresume", or
// "no_resume" from --no-resume) is rewritten in place to Abseil's spelling, "noresume".
const absl::CommandLineFlag* find_flag(std::string& name) {
  if (const absl::CommandLineFlag* f = absl::FindCommandLineFlag(name)) return f;
  for (const std::string prefix : {"no_", "no"}) {
    if (!name.starts_with(prefix)) continue;
    const std::string base = name.substr(prefix.size());
    const absl::CommandLineFlag* f = absl::FindCommandLineFlag(base);
    if (f != nullptr && f->IsOfType<bool>()) {
      name = "no" + base;
      return f;
    }
  }
  return nullptr;
}

}  // namespace

std::vector<std::string> underscore_flag_names(int argc, char** argv) {
  std::vector<std::string> out(argv, argv + argc);
  for (size_t i = 1; i < out.size(); ++i) {
    std::string& arg = out[i];
    if (arg == "--") break;
    if (!arg.starts_with("--")) continue;
    const size_t eq = arg.find('=');
    std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    std::replace(name.begin(), name.end(), '-', '_');
    const absl::CommandLineFlag* flag = find_flag(name);
    if (flag == nullptr) continue;  // Abseil reports the unknown name as the user spelled it
    arg = "--" + name + (eq == std::string::npos ? "" : arg.substr(eq));
    // "--name value": the next argument is the value, whatever it looks like.
    if (eq == std::string::npos && !flag->IsOfType<bool>()) ++i;
  }
  return out;
}

}  // namespace engine::cli
