#!/usr/bin/env bash
# The README's second command: installs dependencies, builds everything, runs every test.
#   1. the googletest suite through CTest (CPU; GPU tests skip themselves without a device)
#   2. the installed package: an example program built with find_package(engine) and run
#   3. a short libFuzzer smoke run of each fuzz target (when clang is available)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_BUILD_DIR:-$root/build}"
bash "$root/scripts/build.sh"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 600
bash "$root/scripts/test_install.sh"
if [ "${ENGINE_SKIP_FUZZ:-0}" != 1 ]; then
  bash "$root/scripts/fuzz_smoke.sh"
fi
