#!/usr/bin/env bash
# Installs the dependencies (idempotent) and builds the engine into ./build (Release).
# Usage: scripts/build.sh [extra ninja targets...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/third_party/install_deps.sh"
build="${ENGINE_BUILD_DIR:-$root/build}"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${ENGINE_CMAKE_ARGS:-} >/dev/null
fi
jobs="${ENGINE_JOBS:-$(nproc)}"
ninja -C "$build" -j "$jobs" "$@" | grep -vE '^\[[0-9]+/[0-9]+\] ' || true
test "${PIPESTATUS[0]}" -eq 0
