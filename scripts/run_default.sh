#!/usr/bin/env bash
# The README's first command: builds the engine and runs its main job on the embedded default.
# Until the repair pipeline lands, the main job is `engine info` on the small BLOOM model
# directory that ships with the repository (tests/fixtures/models/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/build.sh" engine_cli
"${ENGINE_BUILD_DIR:-$root/build}/engine" info --model "$root/tests/fixtures/models/bloom-h6-l3"
