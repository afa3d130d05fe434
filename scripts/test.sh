#!/usr/bin/env bash
# The README's second command: installs dependencies, builds everything, runs every test.
#   1. the googletest suite through CTest (CPU; GPU tests skip themselves without a device), after
#      the attention register-spill check when nvcc is present (scripts/check_attention_spills.sh)
#   2. the installed package: an example program built with find_package(engine) and run
#   3. a short libFuzzer smoke run of each fuzz target (when clang is available)
#   4. the suite again under AddressSanitizer + UndefinedBehaviorSanitizer (scripts/sanitize.sh)
# ENGINE_SKIP_FUZZ=1 / ENGINE_SKIP_SANITIZE=1 leave out step 3 / step 4.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_BUILD_DIR:-$root/build}"
bash "$root/scripts/build.sh"
bash "$root/scripts/check_attention_spills.sh" | tail -1
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 600
bash "$root/scripts/test_install.sh"
if [ "${ENGINE_SKIP_FUZZ:-0}" != 1 ]; then
  bash "$root/scripts/fuzz_smoke.sh"
fi
if [ "${ENGINE_SKIP_SANITIZE:-0}" != 1 ]; then
  bash "$root/scripts/sanitize.sh"
fi
