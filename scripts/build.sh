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
# Progress lines are dropped; grep finding nothing else to print is not an error, but a failed
# ninja must fail this script (with pipefail the `|| true` of the old form hid it).
set +e
ninja -C "$build" -j "$jobs" "$@" | grep -vE '^\[[0-9]+/[0-9]+\] '
status=("${PIPESTATUS[@]}")
set -e
if [ "${status[0]}" -ne 0 ]; then
  echo "build: ninja failed (exit ${status[0]})" >&2
  exit "${status[0]}"
fi
