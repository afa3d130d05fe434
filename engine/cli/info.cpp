// `engine info --model DIR [--json]` (placeholder until the model directory loader lands).
#include "engine/cli/commands.h"

namespace engine::cli {
int run_info(const std::vector<std::string>&) { return fail("info: model loading is not built yet"); }
}  // namespace engine::cli
